#!/usr/bin/env bash
# Frontier speed: each MODEL (a deployment folder) by `sparsec bench` with sparsec's kernels
# (`--kernels auto`), alternated in one process with the dense fp32 MiniLM-L6 on ONNX Runtime, at
# seq 384, batch 16 and 1, 2 threads. Prints one JSON line per model and batch.
#
#   SPARSEC=target/release/sparsec benches/frontier/speed.sh SECONDS MODEL...
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=$1; shift
DENSE=../shared/models/minilm-l6-squad
SPARSEC=${SPARSEC:-target/release/sparsec}
for b in 16 1; do
  for m in "$@"; do
    "$SPARSEC" bench --model "$m" --compare "$DENSE" --kernels auto --batch-size "$b" --seq-len 384 --threads 2 \
      --seconds "$SECS" --warmup 1 --json | python3 -c '
import json, os, sys
r = json.load(sys.stdin); a, b = r["results"]
size = os.path.getsize(os.path.join(sys.argv[1], "model.onnx"))
print(json.dumps({"model": sys.argv[1], "model_onnx_bytes": size, "lowered": a["lowered"], "vs": b["model"], "batch": a["batch_size"],
  "seq": a["seq_len"], "items_per_s": round(a["items_per_second"], 2), "vs_items_per_s": round(b["items_per_second"], 2),
  "ratio": round(r["speed_ratio"], 3)}))' "$m"
  done
done
