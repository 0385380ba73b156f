#!/usr/bin/env bash
# The exported sparse int8 MiniLM against the dense fp32 model and ONNX Runtime's own
# quantize_dynamic (int8, default settings) of the dense model: file sizes, then `sparsec bench`
# speed of each int8 model alternated with the dense fp32 model in one process (batch 1 and 16,
# seq 384, 2 threads). Python (onnxruntime.quantization, needs the onnx package) makes the peer only.
#
# More deployment folders (other export variants of the same model) may follow SECONDS.
#
#   benches/export_int8.sh DEPLOYMENT_DIR [SECONDS [DEPLOYMENT_DIR...]]
set -euo pipefail
cd "$(dirname "$0")/.."
DEP=${1:?deployment folder from sparsec export}
SECS=${2:-10}
shift; shift || true
DEPS=("$DEP" "$@")
DENSE=../shared/models/minilm-l6-squad
SPARSEC=${SPARSEC:-target/release/sparsec}
PEER=$(mktemp -d)
trap 'rm -rf "$PEER"' EXIT
python3 - "$DENSE/model.onnx" "$PEER/model.onnx" <<'PY'
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8)
PY
cp "$DENSE/tokenizer.json" "$PEER/"
gz() { gzip -6 -c "$1" | wc -c; }
echo "sizes (bytes, gzip -6):"
for m in "$DENSE/model.onnx" "${DEPS[@]/%//model.onnx}" "$PEER/model.onnx"; do
  echo "  $(stat -c %s "$m") $(gz "$m") $m"
done
for b in 1 16; do
  for m in "${DEPS[@]}" "$PEER"; do
    echo "batch $b: $m vs dense fp32"
    "$SPARSEC" bench --model "$m" --compare "$DENSE" --batch-size "$b" --seq-len 384 --threads 2 \
      --seconds "$SECS" --warmup 2 --json > "$PEER/r.json"
    python3 - "$PEER/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for x in r["results"]:
    print("    %s: %.2f items/s, p50 %.1f ms" % (x["model"], x["items_per_second"], x["p50_ms"]))
print("    ratio %.2fx" % r["speed_ratio"])
PY
  done
done
