#!/usr/bin/env bash
# Paired A/B of QAT training steps between two sparsec binaries on one compiled folder: the same 12
# length-grouped batches of 16 SQuAD windows for each, ROUNDS interleaved rounds, 2 threads, the dense
# teacher beside it. Prints, per run, whether every step ran QAT and the last one block-sparse, the sum and
# median of steps 1-11 (step 0 builds the session) and the last loss.
#
#   benches/qat_sparse/ab.sh OLD_SPARSEC NEW_SPARSEC COMPILED OUT [ROUNDS=2] [TRAIN FLAGS...]
#
# Extra arguments go to both `train` commands (e.g. `--sparse-train off`).
#
# Session 21's COMPILED: the headline deployment rebuilt in fp32 and compiled for QAT from step 0:
#   python3 benches/headline/unpack_deploy.py ../shared/models/minilm-l6-squad/model.onnx \
#       benches/results/headline-obs80-block4x1-long/deploy out/extend/start
#   sparsec compile out/extend/start/model.onnx --recipe benches/headline/extend-recipe.yaml \
#       --recipe-args '{"num_epochs": 0.4, "qat_fraction": 0.0}' -o out/extend/probe/cq
set -euo pipefail
OLD=$1; NEW=$2; C=$3; OUT=$4; ROUNDS=${5:-2}
shift $(( $# < 5 ? $# : 5 ))
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TRAIN=$ROOT/../shared/data/squad-v1.1-train.json.gz
TEACHER=$ROOT/../shared/models/minilm-l6-squad/model.onnx
mkdir -p "$OUT"
for round in $(seq "$ROUNDS"); do
  for which in old new; do
    bin=$OLD; [ "$which" = new ] && bin=$NEW
    d=$OUT/$which-$round
    rm -rf "$d"
    "$bin" train --model "$C" --train-file "$TRAIN" --output-dir "$d" --max-train-samples 87599 \
      --per-device-train-batch-size 16 --group-by-length --threads 2 --max-steps 12 --distill-teacher "$TEACHER" \
      --json "$@" > /dev/null 2>&1
    python3 - "$d" "$which" "$round" <<'PY'
import json, statistics, sys
d, which, rnd = sys.argv[1:]
r = [json.loads(l) for l in open(f"{d}/train_log.jsonl")]
s = [x["step_seconds"] for x in r[1:]]
print(json.dumps({"binary": which, "round": int(rnd), "qat": all(x["qat"] for x in r),
                  "block_sparse": r[-1].get("block_sparse", False), "steps_1_11_s": round(sum(s), 2),
                  "median_s": round(statistics.median(s), 2), "last_loss": r[-1]["loss"]}))
PY
  done
done
