#!/usr/bin/env bash
# Runs every libFuzzer target for N executions (or until a time limit) and prints a Markdown
# table: executions, seconds, executions/s, coverage (edges, features), corpus size, findings.
#   tests/fuzz/run_all.sh BUILD_DIR [RUNS=1000000] [MAX_SECONDS=0 (none)] [TARGET ...]
# Logs go to BUILD_DIR/fuzz/logs/TARGET.log; a crashing input is left as crash-* in the current
# folder. Exit status 1 when any target found something.
set -uo pipefail
build="$1"; runs="${2:-1000000}"; secs="${3:-0}"; shift $(( $# < 3 ? $# : 3 ))
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(image safetensors config tokenizer_json tokenizer_model data_llava data_alpaca data_jsonl
                                      data_coco data_scienceqa recipe http)
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$build/fuzz/logs"
status=0
echo "| target | executions | seconds | exec/s | coverage (edges / features) | corpus | findings |"
echo "|---|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
  log="$build/fuzz/logs/$t.log"
  start=$(date +%s)
  "$here/run.sh" "$build" "$t" -runs="$runs" -max_total_time="$secs" > "$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  speed=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p'); ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
  corp=$(echo "$last" | sed -n 's/.*corp: \([0-9]*\)\/.*/\1/p')
  found=0
  if [ $rc -ne 0 ]; then found="1 (see $log)"; status=1; fi
  echo "| $t | ${execs:-?} | $took | ${speed:-?} | ${cov:-?} / ${ft:-?} | ${corp:-?} | $found |"
done
exit $status
