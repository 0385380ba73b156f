#!/usr/bin/env bash
# End-to-end speed of sparsec's sparse execution on MiniLM-L6 (seq 384 and 128, batch 1 and 16,
# 2 threads): one-shot [4, 1]-block int8 exports at 80% and 90% (speed does not depend on how well
# a model is trained), each run by `sparsec bench` with sparsec's kernels, alternated in one process
# with (a) the dense fp32 model on ONNX Runtime, (b) ONNX Runtime's quantize_dynamic of the dense
# model, (c) the same export on ONNX Runtime's own kernels (`--kernels off`).
#
#   benches/sparse_e2e.sh [SECONDS]   (default 5 s per model and configuration)
#
# Writes its exports to out/sparse-e2e/ (OUT=DIR to change; out/ is git-ignored) and prints JSON
# lines; benches/results/e2e-*.json hold the committed summaries of such runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
DENSE=../shared/models/minilm-l6-squad
DATA=../shared/data/squad-v1.1-train.json.gz
SPARSEC=${SPARSEC:-target/release/sparsec}
OUT=${OUT:-out/sparse-e2e}
. benches/bench_pair.sh
mkdir -p "$OUT"
for sp in 80 90; do
  if [ ! -f "$OUT/block4x1-$sp/model.onnx" ]; then
    "$SPARSEC" compile "$DENSE/model.onnx" --recipe "recipes/gmp$sp-block4x1-qat-distill.yaml" -o "$OUT/compiled-$sp" >/dev/null
    "$SPARSEC" export --model "$OUT/compiled-$sp" -o "$OUT/block4x1-$sp" --one-shot 64 --calibration-file "$DATA" --quantize-embeddings >/dev/null
  fi
done
make_qdyn "$DENSE" "$OUT/qdyn"
for seq in 384 128; do
  for b in 16 1; do
    for sp in 80 90; do
      M="$OUT/block4x1-$sp"
      bench_pair "$M" "$DENSE" auto "$b" "$seq" "$SECS"
      bench_pair "$M" "$OUT/qdyn" auto "$b" "$seq" "$SECS"
      bench_pair "$M" "$M" auto "$b" "$seq" "$SECS"
    done
  done
done
