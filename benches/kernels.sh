#!/usr/bin/env bash
# sparsec's block-sparse int8 linear against ONNX Runtime's dense int8 on every MiniLM linear shape,
# one command: builds crates/kernels' kernel_bench (release), then benches/kernel_table.py times ORT
# around each group of Rust measurements, then the fp32 kernel against ORT fp32 MatMul. About 3-4
# minutes at the default 0.15 s per configuration.
#
#   benches/kernels.sh [SECONDS_PER_CONFIG] [JSON_OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-0.15}
cargo build --release -q -p sparsec-kernels --example kernel_bench
python3 benches/kernel_table.py "${CARGO_TARGET_DIR:-target}/release/examples/kernel_bench" --secs "$SECS" ${2:+--json "$2"}
