#!/usr/bin/env bash
# One-shot pruning floors on MiniLM-L6 SQuAD: for each recipe in benches/oneshot/, compile, run
# `sparsec train --one-shot N` (pruning by the recipe's algorithm + int8 calibration on N windows)
# under /usr/bin/time -v, and score the result with `sparsec eval` on the first LIMIT dev
# questions. The dense model is scored on the same subset first.
#
#   benches/oneshot_floors.sh SPARSEC OUTDIR [LIMIT=1000] [N=128] [RECIPE...]
set -euo pipefail
BIN=$(realpath "$1"); OUT=$2; LIMIT=${3:-1000}; N=${4:-128}; shift 4 || shift $#
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$ROOT/../shared/models/minilm-l6-squad/model.onnx
TRAIN=$ROOT/../shared/data/squad-v1.1-train.json.gz
DEV=$ROOT/../shared/data/squad-v1.1-dev-split.json.gz
mkdir -p "$OUT"
RECIPES=("$@")
[ ${#RECIPES[@]} -eq 0 ] && RECIPES=("$ROOT"/benches/oneshot/*.yaml)
if [ ! -f "$OUT/dense.eval.json" ]; then
  /usr/bin/time -v "$BIN" eval --model "$MODEL" --data "$DEV" --limit "$LIMIT" --threads 2 --json \
    > "$OUT/dense.eval.json" 2> "$OUT/dense.eval.time"
fi
for r in "${RECIPES[@]}"; do
  name=$(basename "$r" .yaml)
  echo "== $name $(date -u +%T)"
  "$BIN" compile "$MODEL" --recipe "$r" -o "$OUT/$name.c" > /dev/null 2> "$OUT/$name.compile.log"
  /usr/bin/time -v "$BIN" train --model "$OUT/$name.c" --train-file "$TRAIN" --output-dir "$OUT/$name" \
    --one-shot "$N" --max-train-samples 400 --per-device-train-batch-size 8 --threads 2 --json \
    > "$OUT/$name.summary.json" 2> "$OUT/$name.time"
  /usr/bin/time -v "$BIN" eval --model "$OUT/$name" --data "$DEV" --limit "$LIMIT" --threads 2 --json \
    > "$OUT/$name.eval.json" 2> "$OUT/$name.eval.time"
  rm -rf "$OUT/$name.c" "$OUT/$name"/model.onnx
done
