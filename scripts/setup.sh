#!/usr/bin/env bash
# Installs every Debian package vadapt's build, tests and demo need. Idempotent: packages that
# are already installed are skipped, and nothing is fetched when all are present.
set -euo pipefail

PACKAGES=(
  build-essential cmake ccache pkg-config
  libtorch-dev libopenblas0-pthread libgloo-dev
  libsentencepiece-dev nlohmann-json3-dev libcli11-dev libgtest-dev
  libstb-dev libjpeg62-turbo-dev libwebp-dev libpcre2-dev libyaml-cpp-dev libssl-dev libcpp-httplib-dev
  fonts-dejavu-core jq
  libtesseract-dev tesseract-ocr-eng
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "[setup] all ${#PACKAGES[@]} Debian packages present" >&2
  exit 0
fi

echo "[setup] installing: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
echo "[setup] done" >&2
