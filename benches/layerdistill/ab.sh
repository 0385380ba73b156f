#!/usr/bin/env bash
# Hidden-state distillation A/B at a small budget (issue 13 item 6): the headline recipe
# (80% [4, 1] GMP + int8 QAT + logit distillation, one pass) with and without
# PerLayerDistillationModifier on the six encoder layer outputs, same questions, same order,
# trained one after the other (2 threads; one training process takes ~12 GB, so two side by side
# do not fit in 24 GB), then scored on the first EVAL_Q dev questions on sparsec's kernels.
# Resumable: run it again and a stopped run continues from its newest checkpoint.
#
#   benches/layerdistill/ab.sh SPARSEC OUT [QUESTIONS=4000] [EVAL_Q=1000] [GAIN=1.0]
#
# OUT holds every raw output (checkpoints, logs, deployments): put it under out/ (git-ignored);
# `python3 benches/summarize.py run OUT/<arm>` gives a run's small summary
# (benches/results/layerdistill-ab-4k.json holds those of the 2026-12-01 runs).
#
# ARMS="logits layers obs" also trains the third arm: the same schedule with gradual OBS pruning
# (recipes/obs80-block4x1-qat-distill-one-epoch.yaml, oBERT's method) instead of GMP.
set -euo pipefail
BIN=$(realpath "$1"); OUT=$2; Q=${3:-4000}; EVAL_Q=${4:-1000}; GAIN=${5:-1.0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=$ROOT/../shared/models/minilm-l6-squad/model.onnx
TRAIN=$ROOT/../shared/data/squad-v1.1-train.json.gz
DEV=$ROOT/../shared/data/squad-v1.1-dev-split.json.gz
ARGS=$(python3 -c "import json,sys; a=json.load(open('$ROOT/benches/headline/recipe_args.json')); print(json.dumps(a))")
LARGS=$(python3 -c "import json,sys; a=json.loads('$ARGS'); a['layer_gain']=$GAIN; print(json.dumps(a))")
mkdir -p "$OUT"
run() {  # name recipe args
  local d=$OUT/$1
  [ -f "$d/compiled/plan.json" ] || "$BIN" compile "$MODEL" --recipe "$2" --recipe-args "$3" -o "$d/compiled" > /dev/null
  if [ ! -f "$d/train/model.onnx" ]; then
    local resume=()
    compgen -G "$d/train/checkpoints/step-*" > /dev/null && resume=(--resume)
    /usr/bin/time -v -o "$d/time.txt" "$BIN" train --model "$d/compiled" --train-file "$TRAIN" --output-dir "$d/train" \
      --max-train-samples "$Q" --per-device-train-batch-size 16 --group-by-length --save-steps 50 --threads 2 --json \
      "${resume[@]}" > "$d/train_summary.json" 2> "$d/train.log"
  fi
  [ -f "$d/eval.json" ] && return 0
  "$BIN" export --model "$d/train" -o "$d/deploy" --quantize-embeddings --format sparse --json > "$d/export.json"
  "$BIN" eval --model "$d/deploy" --data "$DEV" --threads 2 --limit "$EVAL_Q" --json > "$d/eval.json"
}
ARMS=${ARMS:-logits layers}
for n in $ARMS; do
  case $n in
    logits) run logits "$ROOT/recipes/gmp80-block4x1-qat-distill-one-epoch.yaml" "$ARGS" ;;
    layers) run layers "$ROOT/benches/layerdistill/gmp80-block4x1-qat-layerdistill-one-epoch.yaml" "$LARGS" ;;
    obs) run obs "$ROOT/recipes/obs80-block4x1-qat-distill-one-epoch.yaml" "$ARGS" ;;
    *) echo "unknown arm $n" >&2; exit 2 ;;
  esac
done
for n in $ARMS; do
  python3 - "$OUT/$n" <<'PY'
import json, sys, statistics
d = sys.argv[1]
e = json.load(open(f"{d}/eval.json"))["v1"]
log = [json.loads(l) for l in open(f"{d}/train/train_log.jsonl")]
last = log[-100:]
print(json.dumps({"run": d.split("/")[-1], "exact_match": e.get("exact_match"), "f1": e.get("f1"), "steps": len(log),
  "mean_step_s": round(statistics.mean(x["step_seconds"] for x in log), 3),
  "last100_span_loss": round(statistics.mean(x["loss_span"] for x in last), 4),
  "last100_layer_loss": round(statistics.mean(x.get("loss_layer", float("nan")) for x in last), 4)}))
PY
done
