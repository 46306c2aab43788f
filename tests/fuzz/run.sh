#!/usr/bin/env bash
# Runs a libFuzzer target on its corpus for a bounded time (or number of runs) and fails on any
# finding (the crashing input is left in the working folder as crash-<sha1>; make it a
# regression seed in tests/fuzz/seeds/<target>).
#   tests/fuzz/run.sh BUILD_DIR TARGET [libFuzzer options, e.g. -max_total_time=20 or -runs=1000000]
# Targets: image safetensors config tokenizer_json tokenizer_model data_llava data_alpaca data_jsonl
# data_coco data_scienceqa recipe http. The corpus grows in BUILD_DIR/fuzz/corpus-TARGET; it
# starts from the committed seeds (tests/fuzz/seeds/TARGET, made by make_seeds.py and
# make_image_seeds.cpp), the repository's recipes, and the matching real files of ../shared
# ($VADAPT_SHARED_DIR) when present.
set -euo pipefail
build="$1"; target="$2"; shift 2
here="$(cd "$(dirname "$0")" && pwd)"
bin="$build/fuzz/fuzz_$target"
[ -x "$bin" ] || { echo "run.sh: $bin is not built (the main build makes it where clang++ is installed)" >&2; exit 2; }
corpus="$build/fuzz/corpus-$target"
mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
  [ -d "$here/seeds/$target" ] && cp "$here/seeds/$target"/* "$corpus/"
  if [ "$target" = image ]; then
    printf 'GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;' > "$corpus/min.gif"
  fi
  [ "$target" = recipe ] && for r in "$here"/../../recipes/*.yaml; do cp "$r" "$corpus/"; done
  shared="${VADAPT_SHARED_DIR:-$here/../../../shared}"
  if [ -d "$shared" ]; then
    add() { for f in "$@"; do [ -f "$f" ] && cp "$f" "$corpus/shared-$(echo "${f#$shared/}" | tr / _)"; done; return 0; }
    case "$target" in
      config) add "$shared"/models/*/config.json "$shared"/reference/configs/*.json ;;
      tokenizer_model) add "$shared"/models/stories260K/tokenizer.model ;;
      data_jsonl) add "$shared"/data/llava-bench-coco/qa90_questions.jsonl ;;
      data_coco) add "$shared"/data/coco-captions-val2017/annotations/captions_val2017.json ;;
      data_scienceqa) add "$shared"/data/scienceqa/problems.json ;;
      data_llava) add "$shared"/data/scienceqa/llava_test_CQM-A.json ;;
    esac
  fi
fi
# Binary formats need room; JSON / YAML / request bodies find their bugs in small inputs and run
# several times faster so (a later -max_len wins).
# JSONL is line by line (each line its own document, parsed and refused alone): 1 KB holds a
# dozen lines and ran 8.5x as many inputs a second as 4 KB (3,472 vs 409 exec/s).
case "$target" in image|safetensors|tokenizer_*) max_len=16384 ;; data_jsonl) max_len=1024 ;; *) max_len=4096 ;; esac
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:quarantine_size_mb=32"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$here/ubsan.supp"
exec "$bin" -max_len=$max_len -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "$@" "$corpus"
