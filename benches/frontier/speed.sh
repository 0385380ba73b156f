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
. benches/bench_pair.sh
for b in 16 1; do
  for m in "$@"; do
    bench_pair "$m" "$DENSE" auto "$b" 384 "$SECS" "{\"model_onnx_bytes\": $(stat -c %s "$m/model.onnx")}"
  done
done
