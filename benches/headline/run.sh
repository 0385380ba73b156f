#!/usr/bin/env bash
# Issue 13's headline run: 80% [4, 1]-block GMP + int8 QAT + distillation of MiniLM-L6 SQuAD in one
# pass over the first QUESTIONS training questions (length-grouped batches of 16), on a budget of
# 3 hours of this 2-core machine in total (45,000 questions = 2,838 steps, ≈ 3.5 s each with the
# teacher on a quiet machine, ≈ 5 s during QAT). Resumable: run the same command again (in a later
# session) and training continues from the newest checkpoint (every 100 steps). Each invocation's
# wall time is appended to RUN/budget.tsv, and the total is printed.
#
#   benches/headline/run.sh SPARSEC RUN [QUESTIONS=45000] [DEADLINE_SECONDS]
#
# RUN holds every raw output (checkpoints, train_log.jsonl, exports): put it under out/ (git-ignored).
#
# EVAL_LIMIT=N scores only the first N dev questions (for a dry run of the script);
# RECIPE=PATH trains another one-pass recipe (e.g. recipes/obs80-block4x1-qat-distill-one-epoch.yaml);
# RECIPE_ARGS=JSON replaces benches/headline/recipe_args.json (e.g. to set final_sparsity);
# EVAL_STEPS=N also scores the first 1,000 dev questions every N training steps (the F1-over-time curve
# of a long run, in train_log's evaluations and train_summary.json's evals).
# MODEL=PATH starts from another ONNX model than the dense MiniLM (e.g. unpack_deploy.py's rebuild of a deployment,
# for the extension recipe benches/headline/extend-recipe.yaml); TEACHER=PATH passes --distill-teacher (the default
# teacher is the model compile started from, which is not the dense model then).
# DEADLINE_SECONDS stops training (SIGTERM via timeout) after that many seconds of this
# invocation; the next invocation resumes (binaries from 2026-12-01 on checkpoint the step they were
# in on SIGTERM; older ones, such as the 4a35f33 build this run started with, resume from the last
# --save-steps checkpoint). After training: export (int8 QDQ with int8 embeddings,
# standard ONNX) to RUN/deploy-qdq, the packed sparse form to RUN/deploy, and the dev-split
# EM/F1 of RUN/deploy (sparse kernels) into RUN/eval.json. Last, RUN/summary.json: the small summary
# (benches/summarize.py run RUN: EM/F1, budget, training summary, loss per 100/200 steps, export
# reports) that benches/results/ keeps next to a committed deployment.
set -euo pipefail
BIN=$(realpath "$1"); RUN=$(realpath -m "$2"); Q=${3:-45000}; DEADLINE=${4:-0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=${MODEL:-$ROOT/../shared/models/minilm-l6-squad/model.onnx}
TRAIN=$ROOT/../shared/data/squad-v1.1-train.json.gz
DEV=$ROOT/../shared/data/squad-v1.1-dev-split.json.gz
RECIPE=${RECIPE:-$ROOT/recipes/gmp80-block4x1-qat-distill-one-epoch.yaml}
ARGS=${RECIPE_ARGS:-$(cat "$ROOT/benches/headline/recipe_args.json")}
mkdir -p "$RUN"
started=$(date +%s)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
account() { echo -e "$(date -u +%FT%TZ)\t$1\t$(( $(date +%s) - started ))\t$REV\t$BIN" >> "$RUN/budget.tsv"; }
if [ ! -f "$RUN/compiled/plan.json" ]; then
  "$BIN" compile "$MODEL" --recipe "$RECIPE" --recipe-args "$ARGS" -o "$RUN/compiled"
fi
if [ ! -f "$RUN/train/model.onnx" ]; then
  resume=()
  extra=()
  [ -n "${EVAL_STEPS:-}" ] && extra=(--eval-file "$DEV" --max-eval-samples 1000 --eval-steps "$EVAL_STEPS")
  [ -d "$RUN/train/checkpoints" ] && resume=(--resume)
  [ -n "${TEACHER:-}" ] && extra+=(--distill-teacher "$TEACHER")
  cmd=("$BIN" train --model "$RUN/compiled" --train-file "$TRAIN" --output-dir "$RUN/train"
       --max-train-samples "$Q" --per-device-train-batch-size 16 --group-by-length
       --save-steps 100 --threads 2 --json "${resume[@]}" "${extra[@]}")
  set +e
  if [ "$DEADLINE" -gt 0 ]; then timeout "$DEADLINE" "${cmd[@]}" > "$RUN/train_summary.json"; else "${cmd[@]}" > "$RUN/train_summary.json"; fi
  rc=$?
  set -e
  account train
  if [ $rc -ne 0 ]; then
    echo "training stopped (exit $rc); run the same command again to resume" >&2
    awk -F'\t' '{s+=$3} END {printf "budget used so far: %.0f s (%.2f h)\n", s, s/3600}' "$RUN/budget.tsv" >&2
    exit $rc
  fi
fi
started=$(date +%s)
"$BIN" export --model "$RUN/train" -o "$RUN/deploy-qdq" --quantize-embeddings --json > "$RUN/export_qdq.json"
"$BIN" export --model "$RUN/train" -o "$RUN/deploy" --quantize-embeddings --format sparse --json > "$RUN/export_sparse.json"
limit=()
[ -n "${EVAL_LIMIT:-}" ] && limit=(--limit "$EVAL_LIMIT")
"$BIN" eval --model "$RUN/deploy" --data "$DEV" --threads 2 --json "${limit[@]}" > "$RUN/eval.json"
account export+eval
python3 "$ROOT/benches/summarize.py" run "$RUN" > "$RUN/summary.json"
awk -F'\t' '{s+=$3} END {printf "budget used: %.0f s (%.2f h)\n", s, s/3600}' "$RUN/budget.tsv"
cat "$RUN/eval.json"
