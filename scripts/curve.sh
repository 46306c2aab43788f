#!/usr/bin/env bash
# Held-out accuracy per question type over training: scores every checkpoint-<step> folder of a
# stage (train with `--set stages.N.train.save_every=K --set stages.N.train.keep_last=0`) and
# the final adapter by exact match on a data file, and prints a Markdown table (stdout), one row
# per step. Scores are kept beside each checkpoint (eval-<data name>/summary.json), so a re-run
# only scores new ones. Needs a built tree and jq.
#   scripts/curve.sh STAGE_DIR DATA_JSON [LIMIT]      (LIMIT: at most this many questions; default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:?usage: scripts/curve.sh STAGE_DIR DATA_JSON [LIMIT]}"
DATA="${2:?usage: scripts/curve.sh STAGE_DIR DATA_JSON [LIMIT]}"
LIMIT="${3:-600}"
command -v jq > /dev/null || { echo "curve: needs jq (scripts/setup.sh installs it)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "curve: no data file $DATA" >&2; exit 1; }
tag="eval-$(basename "$DATA" .json)-$LIMIT"
types="color shape position word count"
echo "| step | all | $(echo $types | sed 's/ / | /g') |"
echo "|---|---|$(echo $types | sed 's/[a-z]*/---/g; s/ /|/g')|"
for ckpt in $(ls -d "$STAGE"/checkpoint-* 2> /dev/null | sort -t- -k2 -n); do
  step="${ckpt##*-}"
  if [ ! -f "$ckpt/$tag/summary.json" ]; then
    echo "[curve] scoring $ckpt" >&2
    build/vadapt -q eval --task exact_match --adapter "$ckpt" --data "$DATA" --limit "$LIMIT" --batch-size 32 --out "$ckpt/$tag" > /dev/null
  fi
  row=$(jq -r --arg t "$types" '[.metrics.all] + [($t | split(" "))[] as $k | .metrics[$k]]
        | map(if . == null then "-" else (.accuracy * 1000 | round / 1000 | tostring) end) | join(" | ")' "$ckpt/$tag/summary.json")
  echo "| $step | $row |"
done
