#!/usr/bin/env bash
# The main job from a fresh machine: install and build what is missing, render the synthetic
# shapes-and-words dataset, score the untrained model on its held-out test split, train the
# LLaVA recipe (stage 1 projector alignment on captions, stage 2 instruction tuning) on the real
# frozen models in ../shared/models (ViT-Tiny vision tower + stories260K LLM), score it again,
# print the before/after table, and answer one question about one test image.
# Tables and progress on stderr; the final answer on stdout.
#   scripts/demo.sh [OUT_DIR]          (default: runs/llava-synth-tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
export VADAPT_SHARED_DIR="${VADAPT_SHARED_DIR:-$(cd .. && pwd)/shared}"
OUT="${1:-runs/llava-synth-tiny}"
RECIPE=recipes/llava-synth-tiny.yaml
scripts/setup.sh
scripts/build.sh
if [ ! -d "$VADAPT_SHARED_DIR/models/stories260K" ] || [ ! -d "$VADAPT_SHARED_DIR/models/vit-tiny-patch16-224" ]; then
  echo "demo: the frozen models are missing under $VADAPT_SHARED_DIR/models (set VADAPT_SHARED_DIR)" >&2
  exit 1
fi
SECONDS=0
mkdir -p "$OUT"
export VADAPT_SYNTH_DIR="$OUT/data"
echo "== 1. render the synthetic task ==" >&2
build/vadapt synth --out "$VADAPT_SYNTH_DIR" --seed 0 --n 6000 --val-fraction 0.05 --test-fraction 0.05 > "$OUT/synth.json"
echo "== 2. score the untrained model on the held-out test split ==" >&2
build/vadapt eval --task exact_match --recipe "$RECIPE" --stage stage2 --data "$VADAPT_SYNTH_DIR/test.json" \
  --batch-size 32 --out "$OUT/eval-before" > /dev/null
echo "== 3. train (2 data-parallel workers): stage 1 (projector, captions), stage 2 (projector + LLM, questions) ==" >&2
build/vadapt train --recipe "$RECIPE" --out "$OUT" --nproc 2 > "$OUT/train.json"
echo "== 4. score the trained adapter on the same test split ==" >&2
build/vadapt eval --task exact_match --adapter "$OUT/stage2" --data "$VADAPT_SYNTH_DIR/test.json" --batch-size 32 \
  --out "$OUT/eval-after" --baseline "$OUT/eval-before/summary.json" > /dev/null
trainable=$(sed -n 's/.*"trainable_parameters": \([0-9]*\).*/\1/p' "$OUT/train.json" | tr '\n' ' ')
echo "trainable parameters per stage: ${trainable}| wall time: ${SECONDS} s" >&2
IMG=$(sed -n 's/.*"example_image":"\([^"]*\)".*/\1/p' "$OUT/synth.json")
Q=$(sed -n 's/.*"example_question":"\([^"]*\)".*/\1/p' "$OUT/synth.json")
A=$(sed -n 's/.*"example_answer":"\([^"]*\)".*/\1/p' "$OUT/synth.json")
echo "== 5. vadapt generate --adapter $OUT/stage2 --image $IMG --prompt \"$Q\"   (true answer: $A) ==" >&2
build/vadapt generate --adapter "$OUT/stage2" --image "$IMG" --prompt "$Q" --max-new-tokens 8
