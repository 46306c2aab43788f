#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs the Debian packages, builds, runs CTest.
# Tests that need ../shared (real models, data, golden values) skip with a message without it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh "$@"
cd "${VADAPT_BUILD_DIR:-build}"
ctest --output-on-failure -j"$(nproc)" --timeout 600
