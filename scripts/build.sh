#!/usr/bin/env bash
# Configures and builds vadapt into build/ (ccache-backed). Extra arguments go to CMake, e.g.
#   scripts/build.sh -DCMAKE_PREFIX_PATH=/opt/libtorch-cuda      (a CUDA libtorch)
set -euo pipefail
cd "$(dirname "$0")/.."
# The precompiled torch header is only reusable from ccache with these sloppiness settings.
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
# Paths are hashed relative to the checkout, so fresh clones (CI) reuse earlier compilations.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
BUILD_DIR="${VADAPT_BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@" >&2
cmake --build "$BUILD_DIR" -j"$(nproc)" >&2
