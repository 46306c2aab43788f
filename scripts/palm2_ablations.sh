#!/usr/bin/env bash
# PaLM2-VAdapter's ablations at our scale (arXiv 2402.10896 Tables 3 and 4), on COCO captions
# or the synthetic task, with the real frozen models in ../shared (ViT-Tiny + stories260K; the
# tiny LM is a trainable stories260K copy): every variant trains its stage 2 for the same number
# of steps with the same data, optimiser and schedule (recipes/palm2-vadapter-{coco,synth}-tiny.yaml),
# then is scored (`vadapt eval --task captions` on COCO, `--task exact_match` on the synthetic
# test split). Variants:
#   progressive      stage 1 (tiny LM as captioning decoder through the attentional pooler), then stage 2
#   lm_init          stage 2 only, the tiny LM from its LM weights
#   random_init      stage 2 only, the tiny LM randomly initialised
#   pooler_tlm       stage 2 only, a 1-layer attentional pooler in front of the tiny LM (Table 4)
#   perceiver1 / perceiver6   the perceiver-resampler baseline (no tiny LM), 1 and 6 layers
# Prints a Markdown table (stdout): trainable parameters, seconds, peak memory, held-out val
# loss before -> after, the val loss at steps 32 / 64, the steps to reach the 6-layer
# baseline's final val loss, and the scores (COCO: BLEU-1, CIDEr-D; synthetic: exact match per
# question type). Needs a built tree (scripts/build.sh) and jq; the synthetic task needs
# `vadapt synth --out runs/synth-data --seed 0 --n 1000` first.
#   scripts/palm2_ablations.sh coco|synth [OUT_DIR] [STAGE2_EPOCHS]
#   (defaults: runs/palm2-ablations-TASK, 4 epochs on COCO, 2 on the synthetic task)
set -euo pipefail
cd "$(dirname "$0")/.."
export VADAPT_SHARED_DIR="${VADAPT_SHARED_DIR:-$(cd .. && pwd)/shared}"
TASK="${1:?usage: scripts/palm2_ablations.sh coco|synth [OUT_DIR] [STAGE2_EPOCHS]}"
case "$TASK" in coco) DEF_EPOCHS=4 ;; synth) DEF_EPOCHS=2 ;; *) echo "palm2_ablations: task must be coco or synth" >&2; exit 1 ;; esac
OUT="${2:-runs/palm2-ablations-$TASK}"
EPOCHS="${3:-$DEF_EPOCHS}"
RECIPE=recipes/palm2-vadapter-$TASK-tiny.yaml
SYNTH="${VADAPT_SYNTH_DIR:-runs/synth-data}"
COCO="$VADAPT_SHARED_DIR/data/coco-captions-val2017"
command -v jq > /dev/null || { echo "palm2_ablations: needs jq (scripts/setup.sh installs it)" >&2; exit 1; }
[ -x build/vadapt ] || { echo "palm2_ablations: build first (scripts/build.sh)" >&2; exit 1; }
mkdir -p "$OUT"
# One stage-2-only run: the recipe's stage2 without init_from.
as_adapter=(--stage stage2 --set stages.1.init_from=null --set "stages.1.train.epochs=$EPOCHS")
run() {  # name, args...
  local name=$1; shift
  if [ -f "$OUT/$name/train.json" ]; then echo "[ablations] $name: done before, kept" >&2; return; fi
  echo "[ablations] == $name ==" >&2
  mkdir -p "$OUT/$name"
  build/vadapt train --recipe "$RECIPE" --out "$OUT/$name" "$@" > "$OUT/$name/train.json.tmp"
  mv "$OUT/$name/train.json.tmp" "$OUT/$name/train.json"
}
run progressive --set "stages.1.train.epochs=$EPOCHS"
run lm_init "${as_adapter[@]}"
run random_init "${as_adapter[@]}" --set stages.1.tiny_lm.init=random
run pooler_tlm "${as_adapter[@]}" --set stages.1.connector=pooler
run perceiver1 "${as_adapter[@]}" --set stages.1.tiny_lm=null --set resampler.layers=1
run perceiver6 "${as_adapter[@]}" --set stages.1.tiny_lm=null --set resampler.layers=6
final_dir() { echo "$OUT/$1/stage2"; }
for name in progressive lm_init random_init pooler_tlm perceiver1 perceiver6; do
  d=$(final_dir "$name")
  [ -f "$OUT/$name/eval/summary.json" ] && continue
  if [ "$TASK" = coco ]; then
    build/vadapt eval --task captions --adapter "$d" --data "$COCO/annotations/captions_val2017.json" --image-root "$COCO/val2017" \
      --out "$OUT/$name/eval" > /dev/null
  else
    build/vadapt eval --task exact_match --adapter "$d" --data "$SYNTH/test.json" --batch-size 32 --out "$OUT/$name/eval" > /dev/null
  fi
done
# Val loss at a step from metrics.csv (column 9), and the first step at or below a threshold.
val_at() { awk -F, -v s="$2" 'NR > 1 && $1 == s && $9 != "" { print $9 }' "$1/metrics.csv"; }
steps_to() { awk -F, -v t="$2" 'NR > 1 && $9 != "" && $9 <= t { print $1; exit }' "$1/metrics.csv"; }
threshold=$(jq '.[-1].val_loss_after' "$OUT/perceiver6/train.json")
if [ "$TASK" = coco ]; then scores="BLEU-1 | CIDEr-D"; else scores="exact match: all | colour | shape | count | position | word"; fi
echo "| variant | trainable (stage 2) | seconds | peak RSS MB | val loss before -> after | val @32 / @64 | steps to $(printf %.3f "$threshold") | $scores |"
echo "|---|---|---|---|---|---|---|$(echo "$scores" | sed 's/[^|]*/---/g')|"
for name in progressive lm_init random_init pooler_tlm perceiver1 perceiver6; do
  j="$OUT/$name/train.json"; d=$(final_dir "$name"); e="$OUT/$name/eval/summary.json"
  secs=$(jq '[.[].seconds] | add | floor' "$j")
  [ "$name" = progressive ] && secs="$(jq '.[0].seconds | floor' "$j") + $(jq '.[1].seconds | floor' "$j")"
  to=$(steps_to "$d" "$threshold"); to=${to:-"> $(jq '.[-1].steps' "$j")"}
  if [ "$TASK" = coco ]; then
    sc=$(jq -r '"\(.metrics["BLEU-1"] * 1000 | round / 1000) | \(.metrics["CIDEr-D"] * 10000 | round / 10000)"' "$e")
  else
    sc=$(jq -r '[.metrics.all, .metrics.color, .metrics.shape, .metrics.count, .metrics.position, .metrics.word]
                | map(.accuracy * 1000 | round / 1000 | tostring) | join(" | ")' "$e")
  fi
  printf '| %s | %s | %s | %s | %.3f -> %.3f | %s / %s | %s | %s |\n' "$name" "$(jq '.[-1].trainable_parameters' "$j")" "$secs" \
    "$(jq '[.[].peak_rss_mb] | max | floor' "$j")" "$(jq '.[-1].val_loss_before' "$j")" "$(jq '.[-1].val_loss_after' "$j")" \
    "$(val_at "$d" 32)" "$(val_at "$d" 64)" "$to" "$sc"
done
