#!/usr/bin/env bash
# Fused attention kernel (crates/kernels) against ONNX Runtime on the same attention, one command:
# first the kernel's outputs against ORT's standard-op graph on the same inputs, then speed at
# MiniLM's shape (12 heads x 32, seq 128/384, batch 1/16, 1 and 2 threads, every precision and
# ISA this CPU runs) with ORT's standard-op graph and its fused MultiHeadAttention timed before and
# after each kernel run. About 2 minutes at the default 1 s per configuration.
#
#   benches/attention.sh [SECONDS_PER_CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-1}
cargo build --release -q -p sparsec-kernels --example attention_bench
python3 benches/attention_ort.py "${CARGO_TARGET_DIR:-target}/release/examples/attention_bench" --secs "$SECS"
