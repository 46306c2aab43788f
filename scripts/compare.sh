#!/usr/bin/env bash
# Every method's recipe on the same synthetic task and data, each trained as its recipe says
# (recipes/*-synth-tiny.yaml) on the real frozen models in ../shared (ViT-Tiny + stories260K),
# then scored by exact match on the same held-out test split. Prints a Markdown table (stdout):
# trainable parameters of the last stage, training seconds (all stages), peak RSS, and the
# accuracy per question type; then a second table of the share of answers that *start* with the
# right answer (followed by a non-letter): a base LLM that never learned EOS (stories260K) keeps
# talking after a right answer, which exact match counts as wrong. Progress on stderr. Runs that finished before are kept (delete
# their folder to redo one).
#   scripts/compare.sh [OUT_DIR] [IMAGES] [-- extra `vadapt train` arguments for every method]
#   (defaults: runs/compare, 1000 images; e.g. `scripts/compare.sh runs/cmp 1000 -- --set stages.0.train.epochs=1`)
# Methods (name = recipe): llava, llama_adapter_v1, llama_adapter_v2 (released form),
# llama_adapter_v2_paper, lavin, palm2_vadapter. Select some with METHODS="llava lavin".
# Needs a built tree (scripts/build.sh) and jq (scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
export VADAPT_SHARED_DIR="${VADAPT_SHARED_DIR:-$(cd .. && pwd)/shared}"
OUT="${1:-runs/compare}"
IMAGES="${2:-1000}"
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
EXTRA=("$@")
command -v jq > /dev/null || { echo "compare: needs jq (scripts/setup.sh installs it)" >&2; exit 1; }
[ -x build/vadapt ] || { echo "compare: build first (scripts/build.sh)" >&2; exit 1; }
[ -d "$VADAPT_SHARED_DIR/models/stories260K" ] || { echo "compare: no models under $VADAPT_SHARED_DIR/models (set VADAPT_SHARED_DIR)" >&2; exit 1; }
declare -A RECIPE=(
  [llava]=recipes/llava-synth-tiny.yaml
  [llama_adapter_v1]=recipes/llama-adapter-v1-synth-tiny.yaml
  [llama_adapter_v2]=recipes/llama-adapter-v2-synth-tiny.yaml
  [llama_adapter_v2_paper]=recipes/llama-adapter-v2-paper-synth-tiny.yaml
  [lavin]=recipes/lavin-synth-tiny.yaml
  [palm2_vadapter]=recipes/palm2-vadapter-synth-tiny.yaml
)
METHODS="${METHODS:-llava llama_adapter_v1 llama_adapter_v2 llama_adapter_v2_paper lavin palm2_vadapter}"
mkdir -p "$OUT"
export VADAPT_SYNTH_DIR="$OUT/data"
if [ ! -f "$VADAPT_SYNTH_DIR/synth.json" ]; then
  echo "[compare] rendering $IMAGES images into $VADAPT_SYNTH_DIR" >&2
  build/vadapt synth --out "$VADAPT_SYNTH_DIR" --seed 0 --n "$IMAGES" > /dev/null
fi
for name in $METHODS; do
  recipe="${RECIPE[$name]:-}"
  [ -n "$recipe" ] || { echo "compare: unknown method '$name' (expected one of ${!RECIPE[*]})" >&2; exit 1; }
  dir="$OUT/$name"
  if [ ! -f "$dir/train.json" ]; then
    echo "[compare] == $name: training ($recipe) ==" >&2
    mkdir -p "$dir"
    build/vadapt train --recipe "$recipe" --out "$dir" ${EXTRA[@]+"${EXTRA[@]}"} > "$dir/train.json.tmp"
    mv "$dir/train.json.tmp" "$dir/train.json"
  fi
  if [ ! -f "$dir/eval/summary.json" ]; then
    echo "[compare] == $name: scoring the held-out test split ==" >&2
    last=$(jq -r '.[-1].adapter' "$dir/train.json")
    build/vadapt eval --task exact_match --adapter "$last" --data "$VADAPT_SYNTH_DIR/test.json" --batch-size 32 \
      --out "$dir/eval" > /dev/null
  fi
done
echo "Synthetic task, $(jq '.images' "$VADAPT_SYNTH_DIR/synth.json") images ($(jq '.questions.train' "$VADAPT_SYNTH_DIR/synth.json") train / $(jq '.questions.test' "$VADAPT_SYNTH_DIR/synth.json") test questions); exact match on the test split (chance: colour 0.17, shape 0.20, count 0.25, position 0.25, word 0.08)."
echo
echo "| method | stages | trainable (last stage) | seconds | peak RSS MB | all | colour | shape | count | position | word |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for name in $METHODS; do
  j="$OUT/$name/train.json"; e="$OUT/$name/eval/summary.json"
  acc=$(jq -r '[.metrics.all, .metrics.color, .metrics.shape, .metrics.count, .metrics.position, .metrics.word]
               | map(if . == null then "-" else (.accuracy * 1000 | round / 1000 | tostring) end) | join(" | ")' "$e")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$(jq -r '[.[].stage] | join(" + ")' "$j")" "$(jq '.[-1].trainable_parameters' "$j")" \
    "$(jq '[.[].seconds] | add | floor' "$j")" "$(jq '[.[].peak_rss_mb] | max | floor' "$j")" "$acc"
done
echo
echo "Answer first (the prediction starts with the reference, then a non-letter or the end):"
echo
echo "| method | all | colour | shape | count | position | word |"
echo "|---|---|---|---|---|---|---|"
for name in $METHODS; do
  p="$OUT/$name/eval/predictions.jsonl"
  row=$(jq -s -r 'def first_ok: .prediction as $p | .reference as $r | ($p | startswith($r))
                    and (($p[($r | length):(($r | length) + 1)]) | test("^[A-Za-z]") | not);
                  def share(f): (map(select(f)) | length) as $n
                    | if $n == 0 then "-" else ((map(select(f) | select(first_ok)) | length) / $n * 1000 | round / 1000 | tostring) end;
                  [share(true), share(.type == "color"), share(.type == "shape"), share(.type == "count"),
                   share(.type == "position"), share(.type == "word")] | join(" | ")' "$p")
  echo "| $name | $row |"
done
