#!/usr/bin/env bash
# The main job from a fresh machine: install, build, train the LLaVA recipe (stage 1 projector
# alignment, stage 2 LoRA instruction tuning) on the real frozen models in ../shared/models
# (ViT-Tiny vision tower + stories260K LLM, COCO captions), then use the trained adapter to
# answer about a held-out image. Results table on stderr, the answer on stdout.
#   scripts/demo.sh [OUT_DIR]          (default: runs/llava-coco-tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
export VADAPT_SHARED_DIR="${VADAPT_SHARED_DIR:-$(cd .. && pwd)/shared}"
OUT="${1:-runs/llava-coco-tiny}"
scripts/setup.sh
scripts/build.sh
if [ ! -d "$VADAPT_SHARED_DIR/models" ]; then
  echo "demo: $VADAPT_SHARED_DIR/models is missing (set VADAPT_SHARED_DIR)" >&2
  exit 1
fi
mkdir -p "$OUT"
build/vadapt train --recipe recipes/llava-coco-tiny.yaml --out "$OUT" > "$OUT/results.json"
IMG="$VADAPT_SHARED_DIR/data/coco-captions-val2017/val2017/000000000139.jpg"
echo "== vadapt generate --adapter $OUT/stage2 --image $(basename "$IMG") ==" >&2
build/vadapt generate --adapter "$OUT/stage2" --image "$IMG" --prompt "Describe the image." --max-new-tokens 48
