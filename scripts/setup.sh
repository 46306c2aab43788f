#!/usr/bin/env bash
# Installs every Debian package vadapt's build, tests and demo need. Idempotent: packages that
# are already installed are skipped, and nothing is fetched when all are present.
set -euo pipefail

PACKAGES=(
  build-essential cmake ccache pkg-config
  libtorch-dev libopenblas0-pthread libblas-dev libgloo-dev
  libsentencepiece-dev nlohmann-json3-dev libcli11-dev libgtest-dev
  libstb-dev libjpeg62-turbo-dev libwebp-dev libpcre2-dev libyaml-cpp-dev libssl-dev libcpp-httplib-dev
  fonts-dejavu-core jq
  clang libclang-rt-14-dev
  nodejs chromium
  libtesseract-dev tesseract-ocr-eng
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# npm comes with some builds of nodejs (NodeSource's) and is its own package in Debian's.
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "[setup] all ${#PACKAGES[@]} Debian packages present" >&2
else
  echo "[setup] installing: ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  echo "[setup] done" >&2
fi

# The clients we did not write, for the serving tests (the openai package, playwright-core to drive
# Chromium): pinned by tests/node/package-lock.json, installed once; the tests skip without them.
NODE_DIR="$(dirname "$0")/../tests/node"
if [ ! -f "$NODE_DIR/node_modules/.package-lock.json" ] || ! cmp -s "$NODE_DIR/package-lock.json" "$NODE_DIR/node_modules/.vadapt-lock"; then
  echo "[setup] npm ci in tests/node (openai, playwright-core)" >&2
  if (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2); then
    cp "$NODE_DIR/package-lock.json" "$NODE_DIR/node_modules/.vadapt-lock"
  else
    echo "[setup] warning: npm ci failed (no registry?); the openai-client and chat-page tests will skip" >&2
  fi
fi
