# Shared by the end-to-end speed scripts (source it; needs SPARSEC set).
#
# make_qdyn DENSE_DIR OUT_DIR: ONNX Runtime's quantize_dynamic of DENSE_DIR/model.onnx (int8
#   weights) with its tokenizer, unless OUT_DIR/model.onnx exists.
# bench_pair MODEL COMPARE KERNELS BATCH SEQ SECS [EXTRA_JSON]: `sparsec bench` of MODEL (with
#   --kernels KERNELS) alternated in one process with COMPARE (plain ONNX Runtime), 2 threads;
#   prints one JSON line, EXTRA_JSON's fields first.
make_qdyn() {
  if [ ! -f "$2/model.onnx" ]; then
    mkdir -p "$2"
    python3 - "$1/model.onnx" "$2/model.onnx" <<'PY'
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8)
PY
    cp "$1/tokenizer.json" "$2/"
  fi
}
bench_pair() {
  "$SPARSEC" bench --model "$1" --compare "$2" --kernels "$3" --batch-size "$4" --seq-len "$5" --threads 2 \
    --seconds "$6" --warmup 1 --json | python3 -c '
import json, sys
r = json.load(sys.stdin); a, b = r["results"]
out = json.loads(sys.argv[1])
out.update({"model": a["model"], "kernels": a["kernels"], "lowered": a["lowered"], "vs": b["model"], "vs_kernels": b["kernels"],
  "batch": a["batch_size"], "seq": a["seq_len"], "items_per_s": round(a["items_per_second"], 2), "vs_items_per_s": round(b["items_per_second"], 2),
  "p50_ms": round(a["p50_ms"], 2), "ratio": round(r["speed_ratio"], 3)})
print(json.dumps(out))' "${7:-"{}"}"
}
