#!/usr/bin/env bash
# One-shot pruning floors on MiniLM-L6 SQuAD: for each RUN, compile the dense model with the
# algorithm's template in benches/oneshot/ and the run's --recipe-args, run `sparsec train
# --one-shot N` (pruning by the template's algorithm + int8 calibration on N windows) under
# /usr/bin/time -v, and score the result with `sparsec eval` on the first LIMIT dev questions. The
# dense model is scored on the same subset first. Then `benches/summarize.py floors OUTDIR` gives
# the small JSON summary (benches/results/oneshot-floors.json).
#
#   benches/oneshot_floors.sh SPARSEC [OUTDIR=out/oneshot-floors] [LIMIT=1000] [N=128] [RUN...]
#
# RUN is ALGORITHM PERCENT - MASK -int8, e.g. obs80-4x1-int8 or sparsegpt50-unstructured-int8:
#   ALGORITHM  magnitude | obs | sparsegpt   (template benches/oneshot/ALGORITHM-int8.yaml)
#   PERCENT    final_sparsity in percent
#   MASK       4x1 (mask_type [4, 1]) | unstructured ("unstructured"; SparseGPT's "0:0")
# or int8-only (benches/oneshot/int8-only.yaml: no pruning). A path such as
# benches/oneshot/obs80-4x1-int8.yaml (the per-run recipes these templates replaced) is read as its
# RUN name. Default: every algorithm at 50, 70, 80 and 90%, both masks (24 runs).
#
# Raw outputs (eval and summary JSONs, /usr/bin/time logs; the pruned models are deleted) go to
# OUTDIR, by default out/oneshot-floors/ (git-ignored).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "$1"); OUT=${2:-$ROOT/out/oneshot-floors}; LIMIT=${3:-1000}; N=${4:-128}; shift 4 || shift $#
MODEL=$ROOT/../shared/models/minilm-l6-squad/model.onnx
TRAIN=$ROOT/../shared/data/squad-v1.1-train.json.gz
DEV=$ROOT/../shared/data/squad-v1.1-dev-split.json.gz
RUNS=("$@")
if [ ${#RUNS[@]} -eq 0 ]; then
  for a in magnitude sparsegpt obs; do
    for s in 50 70 80 90; do RUNS+=("$a$s-unstructured-int8" "$a$s-4x1-int8"); done
  done
fi
# recipe and --recipe-args of a RUN name, as two lines
recipe_of() {
  local name=$1
  if [ "$name" = int8-only ]; then
    printf '%s\n%s\n' "$ROOT/benches/oneshot/int8-only.yaml" '{}'
    return
  fi
  if [[ ! $name =~ ^(magnitude|obs|sparsegpt)([0-9]+)-(4x1|unstructured)-int8$ ]]; then
    echo "unknown run '$name' (expected e.g. obs80-4x1-int8 or int8-only)" >&2
    return 2
  fi
  local algo=${BASH_REMATCH[1]} pct=${BASH_REMATCH[2]} mask=${BASH_REMATCH[3]} mt
  if [ "$mask" = 4x1 ]; then mt='[4, 1]'; elif [ "$algo" = sparsegpt ]; then mt='"0:0"'; else mt='"unstructured"'; fi
  printf '%s\n%s\n' "$ROOT/benches/oneshot/$algo-int8.yaml" \
    "{\"final_sparsity\": $(awk -v p="$pct" 'BEGIN { print p / 100 }'), \"mask_type\": $mt}"
}
for r in "${RUNS[@]}"; do recipe_of "$(basename "$r" .yaml)" > /dev/null; done  # fail before any work
mkdir -p "$OUT"
if [ ! -f "$OUT/dense.eval.json" ]; then
  /usr/bin/time -v "$BIN" eval --model "$MODEL" --data "$DEV" --limit "$LIMIT" --threads 2 --json \
    > "$OUT/dense.eval.json" 2> "$OUT/dense.eval.time"
fi
for r in "${RUNS[@]}"; do
  name=$(basename "$r" .yaml)
  { read -r recipe; read -r args; } < <(recipe_of "$name")
  echo "== $name $(date -u +%T) $(basename "$recipe") $args"
  echo "$args" > "$OUT/$name.args.json"
  "$BIN" compile "$MODEL" --recipe "$recipe" --recipe-args "$args" -o "$OUT/$name.c" > /dev/null 2> "$OUT/$name.compile.log"
  /usr/bin/time -v "$BIN" train --model "$OUT/$name.c" --train-file "$TRAIN" --output-dir "$OUT/$name" \
    --one-shot "$N" --max-train-samples 400 --per-device-train-batch-size 8 --threads 2 --json \
    > "$OUT/$name.summary.json" 2> "$OUT/$name.time"
  /usr/bin/time -v "$BIN" eval --model "$OUT/$name" --data "$DEV" --limit "$LIMIT" --threads 2 --json \
    > "$OUT/$name.eval.json" 2> "$OUT/$name.eval.time"
  rm -rf "$OUT/$name.c" "$OUT/$name"/model.onnx
done
