#!/usr/bin/env bash
# int8 attention's accuracy and speed cost, post-training (issue 27 item 3): MiniLM-L6 SQuAD, dense,
# int8 linears + int8 embeddings (recipes/quantization-only.yaml) calibrated one-shot on N training windows
# (a), and the same with `quantize_attention_matmuls: true` (b, int8 attention on QuantizedAttention).
# Both exported --format sparse; EM/F1 on the first LIMIT dev questions on sparsec's kernels, plus b's QDQ
# export on ONNX Runtime alone and lowered by sparsec in memory; then `sparsec bench` a against b, batch 1
# and 16, seq 384, 2 threads, ROUNDS interleaved rounds. Everything goes to OUT.
#
#   benches/attention_ptq/run.sh SPARSEC OUT [N=128] [LIMIT=1000] [ROUNDS=3]
set -euo pipefail
B=$(realpath "$1"); OUT=$2; N=${3:-128}; LIMIT=${4:-1000}; ROUNDS=${5:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
M=$ROOT/../shared/models/minilm-l6-squad/model.onnx
T=$ROOT/../shared/data/squad-v1.1-train.json.gz
D=$ROOT/../shared/data/squad-v1.1-dev-split.json.gz
mkdir -p "$OUT" && cd "$OUT"
cp "$ROOT/recipes/quantization-only.yaml" a.yaml
sed 's/^    exclude_module_types: \[LayerNorm\]$/&\n    quantize_attention_matmuls: true/' a.yaml > b.yaml
grep -q quantize_attention_matmuls b.yaml
for v in a b; do
  rm -rf "$v-c" "$v-t" "$v-d"
  "$B" compile "$M" --recipe "$v.yaml" -o "$v-c" > /dev/null
  "$B" train --model "$v-c" --train-file "$T" --output-dir "$v-t" --one-shot "$N" --threads 2 > "$v-train.json"
  "$B" export --model "$v-t" -o "$v-d" --format sparse --json > "$v-export.json"
  "$B" eval --model "$v-d" --data "$D" --limit "$LIMIT" --threads 2 --json > "$v-eval.json"
done
rm -rf b-q && "$B" export --model b-t -o b-q --json > b-q-export.json
for k in off auto; do "$B" eval --model b-q --data "$D" --limit "$LIMIT" --threads 2 --kernels $k --json > "b-q-$k.json"; done
for r in $(seq "$ROUNDS"); do for bs in 1 16; do
  "$B" bench --model a-d --compare b-d --batch-size $bs --seq-len 384 --threads 2 --seconds 6 --json > "bench-r$r-b$bs.json"
done; done
python3 - <<'PY'
import json, glob
f1 = lambda f: json.load(open(f))["v1"]
out = {"a_int8_linears": f1("a-eval.json"), "b_int8_attention_sparse_export": f1("b-eval.json"),
       "b_qdq_on_ort": f1("b-q-off.json"), "b_qdq_lowered_by_sparsec": f1("b-q-auto.json"), "bench": []}
for f in sorted(glob.glob("bench-r*.json")):
    j = json.load(open(f)); a, b = j["results"]
    out["bench"].append({"file": f, "batch": a["batch_size"], "a_items_per_s": a["items_per_second"],
                         "b_items_per_s": b["items_per_second"], "b_over_a": b["items_per_second"] / a["items_per_second"]})
json.dump(out, open("summary.json", "w"), indent=1)
print(json.dumps(out, indent=1))
PY
