#!/usr/bin/env bash
# Runs a libFuzzer target on its corpus for a bounded time (or number of runs) and fails on any
# finding. Seeds: tests/fuzz/seeds/<target> (tiny images of every format, made by
# make_image_seeds.cpp) and a minimal GIF. The corpus grows in build/fuzz/corpus-<target>.
#   tests/fuzz/run.sh BUILD_DIR image [libFuzzer options, e.g. -max_total_time=20 or -runs=1000000]
set -euo pipefail
build="$1"; target="$2"; shift 2
bin="$build/fuzz/fuzz_$target"
corpus="$build/fuzz/corpus-$target"
mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
  cp "$(dirname "$0")/seeds/$target"/* "$corpus/"
  if [ "$target" = image ]; then
    printf 'GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;' > "$corpus/min.gif"
  fi
fi
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$(cd "$(dirname "$0")" && pwd)/ubsan.supp"
exec "$bin" -max_len=16384 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "$@" "$corpus"
