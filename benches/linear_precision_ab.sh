#!/usr/bin/env bash
# Interleaved A/B of `train --linear-precision f32` against `bf16` (issue 29): MiniLM-L6 with 80% of each
# encoder linear's [4, 1] blocks zeroed (benches/train_throughput.py's prune_4x1, sparse-transfer recipe) and
# dense (dense-finetune recipe), 16 length-grouped real SQuAD windows per step, 14 steps of which the first 2
# are not timed, distillation off, 2 threads, ROUNDS rounds (default 3). Prints s/step (mean of the timed
# steps), samples/s, peak RSS and how many timed steps ran on the block-sparse operators, per run.
#
#   benches/linear_precision_ab.sh SPARSEC [ROUNDS] [WORKDIR]
#
# Needs numpy and onnx (for the pruning) in the python3 on PATH.
set -euo pipefail
B=$(realpath "$1"); ROUNDS=${2:-3}; W=${3:-$(mktemp -d)}
ROOT=$(cd "$(dirname "$0")/.." && pwd); SHARED=$ROOT/../shared
cd "$ROOT"
mkdir -p "$W/pruned"
if [ ! -f "$W/pruned/model.onnx" ]; then
  for f in "$SHARED"/models/minilm-l6-squad/*; do [ "$(basename "$f")" != model.onnx ] && cp "$f" "$W/pruned/"; done
  python3 -c "import sys; sys.path.insert(0, 'benches'); import train_throughput as t; \
t.prune_4x1('$SHARED/models/minilm-l6-squad/model.onnx', '$W/pruned/model.onnx', 0.8)"
fi
[ -d "$W/c80" ] || "$B" compile "$W/pruned/model.onnx" --recipe recipes/sparse-transfer-distill.yaml -o "$W/c80" > /dev/null
[ -d "$W/c0" ] || "$B" compile "$SHARED/models/minilm-l6-squad/model.onnx" --recipe recipes/dense-finetune.yaml -o "$W/c0" > /dev/null
for round in $(seq "$ROUNDS"); do
  for cfg in c80 c0; do
    for p in f32 bf16; do
      rm -rf "$W/out"
      /usr/bin/time -v "$B" train --model "$W/$cfg" --train-file "$SHARED/data/squad-v1.1-train.json.gz" \
        --output-dir "$W/out" --max-train-samples 600 --max-steps 14 --per-device-train-batch-size 16 \
        --distill-teacher disable --threads 2 --json --group-by-length --linear-precision "$p" \
        > /dev/null 2> "$W/time.txt"
      rss=$(grep 'Maximum resident' "$W/time.txt" | awk '{print $NF}')
      python3 -c "
import json; l = [json.loads(x) for x in open('$W/out/train_log.jsonl')][2:]
s = sum(r['step_seconds'] for r in l) / len(l)
print('round $round $cfg $p', f'{s:.3f} s/step', f'{16 / s:.2f} samples/s', 'rss_kib $rss',
      'block_sparse', sum(1 for r in l if r.get('block_sparse')), len(l))"
    done
  done
done
