#!/usr/bin/env bash
# Issue 12's end-to-end targets on one deployment: `sparsec bench` of MODEL (a deployment folder,
# sparsec's kernels) alternated in one process with the dense fp32 MiniLM-L6 on ONNX Runtime and
# with ONNX Runtime's quantize_dynamic of it, at seq 384, batch 16 and 1, 2 threads, ROUNDS times.
# Prints one JSON line per (round, batch, baseline). ORT's quantize_dynamic model is made once in
# QDYN (default out/sparse-e2e/qdyn, git-ignored; the same as benches/sparse_e2e.sh's).
#
#   SPARSEC=target/release/sparsec benches/headline/speed.sh MODEL [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1
ROUNDS=${2:-3}
SECS=${3:-8}
DENSE=../shared/models/minilm-l6-squad
SPARSEC=${SPARSEC:-target/release/sparsec}
QDYN=${QDYN:-out/sparse-e2e/qdyn}
. benches/bench_pair.sh
make_qdyn "$DENSE" "$QDYN"
for r in $(seq 1 "$ROUNDS"); do
  for b in 16 1; do
    for c in "$DENSE" "$QDYN"; do
      bench_pair "$MODEL" "$c" auto "$b" 384 "$SECS" "{\"round\": $r}"
    done
  done
done
