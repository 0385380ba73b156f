#!/usr/bin/env bash
# Issue 12's end-to-end targets on one deployment: `sparsec bench` of MODEL (a deployment folder,
# sparsec's kernels) alternated in one process with the dense fp32 MiniLM-L6 on ONNX Runtime and
# with ONNX Runtime's quantize_dynamic of it, at seq 384, batch 16 and 1, 2 threads, ROUNDS times.
# Prints one JSON line per (round, batch, baseline).
#
#   SPARSEC=target/release/sparsec benches/headline/speed.sh MODEL [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1
ROUNDS=${2:-3}
SECS=${3:-8}
DENSE=../shared/models/minilm-l6-squad
SPARSEC=${SPARSEC:-target/release/sparsec}
QDYN=${QDYN:-benches/results/sparse-e2e/qdyn}
if [ ! -f "$QDYN/model.onnx" ]; then
  mkdir -p "$QDYN"
  python3 - "$DENSE/model.onnx" "$QDYN/model.onnx" <<'PY'
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8)
PY
  cp "$DENSE/tokenizer.json" "$QDYN/"
fi
for r in $(seq 1 "$ROUNDS"); do
  for b in 16 1; do
    for c in "$DENSE" "$QDYN"; do
      "$SPARSEC" bench --model "$MODEL" --compare "$c" --batch-size "$b" --seq-len 384 --threads 2 \
        --seconds "$SECS" --warmup 1 --json | python3 -c '
import json, sys
r = json.load(sys.stdin); a, b = r["results"]
print(json.dumps({"round": int(sys.argv[1]), "model": a["model"], "lowered": a["lowered"], "vs": b["model"],
  "batch": a["batch_size"], "seq": a["seq_len"], "items_per_s": round(a["items_per_second"], 2),
  "vs_items_per_s": round(b["items_per_second"], 2), "ratio": round(r["speed_ratio"], 3)}))' "$r"
    done
  done
done
