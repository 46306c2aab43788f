#!/usr/bin/env bash
# The main job from a fresh machine: install, build, then run the frozen models on the real
# checkpoints in ../shared/models (stories260K LLM, ViT-Tiny vision tower).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${VADAPT_SHARED_DIR:-$(cd .. && pwd)/shared}"
scripts/setup.sh
scripts/build.sh
if [ ! -d "$SHARED/models" ]; then
  echo "demo: $SHARED/models is missing (set VADAPT_SHARED_DIR)" >&2
  exit 1
fi
echo "== vadapt generate (stories260K, greedy) ==" >&2
build/vadapt generate --model "$SHARED/models/stories260K" --prompt "Once upon a time" --max-new-tokens 64
echo "== vadapt encode (ViT-Tiny, COCO image) ==" >&2
build/vadapt encode --model "$SHARED/models/vit-tiny-patch16-224" \
  --image "$SHARED/data/coco-captions-val2017/val2017/000000000139.jpg"
