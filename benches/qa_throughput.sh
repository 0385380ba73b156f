#!/usr/bin/env bash
# QA throughput: sparsec (ONNX Runtime, tract) vs PyTorch on the MiniLM SQuAD model, one command.
# Builds the release binary, then runs benches/qa_throughput.py (Python is used for the baseline only).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec nice -n 10 python3 benches/qa_throughput.py "$@"
