#!/usr/bin/env bash
# End-to-end speed of sparsec's sparse execution on MiniLM-L6 (seq 384 and 128, batch 1 and 16,
# 2 threads): one-shot [4, 1]-block int8 exports at 80% and 90% (speed does not depend on how well
# a model is trained), each run by `sparsec bench` with sparsec's kernels, alternated in one process
# with (a) the dense fp32 model on ONNX Runtime, (b) ONNX Runtime's quantize_dynamic of the dense
# model, (c) the same export on ONNX Runtime's own kernels (`--kernels off`).
#
#   benches/sparse_e2e.sh [SECONDS]   (default 5 s per model and configuration)
#
# Writes its exports to benches/results/sparse-e2e/ (not committed: large) and prints JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
DENSE=../shared/models/minilm-l6-squad
DATA=../shared/data/squad-v1.1-train.json.gz
SPARSEC=${SPARSEC:-target/release/sparsec}
OUT=${OUT:-benches/results/sparse-e2e}
mkdir -p "$OUT"
for sp in 80 90; do
  if [ ! -f "$OUT/block4x1-$sp/model.onnx" ]; then
    "$SPARSEC" compile "$DENSE/model.onnx" --recipe "recipes/gmp$sp-block4x1-qat-distill.yaml" -o "$OUT/compiled-$sp" >/dev/null
    "$SPARSEC" export --model "$OUT/compiled-$sp" -o "$OUT/block4x1-$sp" --one-shot 64 --calibration-file "$DATA" --quantize-embeddings >/dev/null
  fi
done
if [ ! -f "$OUT/qdyn/model.onnx" ]; then
  mkdir -p "$OUT/qdyn"
  python3 - "$DENSE/model.onnx" "$OUT/qdyn/model.onnx" <<'PY'
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8)
PY
  cp "$DENSE/tokenizer.json" "$OUT/qdyn/"
fi
bench() { # model compare kernels batch seq
  "$SPARSEC" bench --model "$1" --compare "$2" --kernels "$3" --batch-size "$4" --seq-len "$5" --threads 2 \
    --seconds "$SECS" --warmup 1 --json | python3 -c '
import json, sys
r = json.load(sys.stdin); a, b = r["results"]
print(json.dumps({"model": a["model"], "kernels": a["kernels"], "lowered": a["lowered"], "vs": b["model"], "vs_kernels": b["kernels"],
  "batch": a["batch_size"], "seq": a["seq_len"], "items_per_s": round(a["items_per_second"], 2), "vs_items_per_s": round(b["items_per_second"], 2),
  "p50_ms": round(a["p50_ms"], 2), "ratio": round(r["speed_ratio"], 3)}))'
}
for seq in 384 128; do
  for b in 16 1; do
    for sp in 80 90; do
      M="$OUT/block4x1-$sp"
      bench "$M" "$DENSE" auto "$b" "$seq"
      bench "$M" "$OUT/qdyn" auto "$b" "$seq"
      bench "$M" "$M" auto "$b" "$seq"
    done
  done
done
