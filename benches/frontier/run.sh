#!/usr/bin/env bash
# Issue 13's frontier: trained points of MiniLM-L6 SQuAD at several [4, 1]-block sparsities on an equal
# sample budget. For each SPARSITY (percent) it runs benches/headline/run.sh with the one-pass OBS recipe
# (gradual global OBS in [4, 1] blocks + int8 QAT + distillation from the dense model), the headline's
# learning rates (benches/headline/recipe_args.json) and final_sparsity = SPARSITY / 100, on the first
# QUESTIONS training questions, masks every MASK_EVERY of the pass; before them the 0% point (int8
# only: one-shot calibration on 128 windows, no training). Each run's small artefacts (budget, eval,
# summary, log, export reports, deployment file sizes) are copied to OUT/<run>/, with
# OUT/<run>/summary.json (benches/summarize.py run); the checkpoints and deployments stay in WORK. Put
# OUT and WORK under out/ (git-ignored), e.g. out/frontier-4k out/frontier-work; benches/results/
# frontier-4k.json is the committed summary of the 2026-12-02 run.
#
#   benches/frontier/run.sh SPARSEC OUT WORK [QUESTIONS=4000] [MASK_EVERY=0.1] [SPARSITY...=90 70 50]
set -euo pipefail
BIN=$(realpath "$1"); OUT=$(realpath -m "$2"); WORK=$(realpath -m "$3"); Q=${4:-4000}; EVERY=${5:-0.1}
shift 5 || shift $#
LEVELS=("$@")
[ ${#LEVELS[@]} -eq 0 ] && LEVELS=(90 70 50)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=$ROOT/../shared/models/minilm-l6-squad/model.onnx
TRAIN=$ROOT/../shared/data/squad-v1.1-train.json.gz
DEV=$ROOT/../shared/data/squad-v1.1-dev-split.json.gz
mkdir -p "$OUT" "$WORK"
keep() {
  local run=$1 dst=$2
  mkdir -p "$dst"
  for f in budget.tsv eval.json train_summary.json export_qdq.json export_sparse.json; do
    [ -f "$run/$f" ] && cp "$run/$f" "$dst/"
  done
  [ -f "$run/train/train_log.jsonl" ] && cp "$run/train/train_log.jsonl" "$dst/"
  [ -f "$run/compiled/recipe.yaml" ] && cp "$run/compiled/recipe.yaml" "$dst/"
  for d in deploy deploy-qdq; do
    [ -d "$run/$d" ] && du -b "$run/$d"/* | sed "s|$run/||" >> "$dst/sizes.txt"
  done
  true
}
name=int8-only
echo "== $name $(date -u +%T)"
w=$WORK/$name; mkdir -p "$w"
started=$(date +%s)
"$BIN" compile "$MODEL" --recipe "$ROOT/benches/oneshot/int8-only.yaml" -o "$w/compiled" > /dev/null
"$BIN" train --model "$w/compiled" --train-file "$TRAIN" --output-dir "$w/train" --one-shot 128 \
  --max-train-samples 400 --per-device-train-batch-size 8 --threads 2 --json > "$w/train_summary.json"
"$BIN" export --model "$w/train" -o "$w/deploy-qdq" --quantize-embeddings --json > "$w/export_qdq.json"
echo -e "$(date -u +%FT%TZ)\tcalibrate+export\t$(( $(date +%s) - started ))" > "$w/budget.tsv"
started=$(date +%s)
"$BIN" eval --model "$w/deploy-qdq" --data "$DEV" --threads 2 --json > "$w/eval.json"
echo -e "$(date -u +%FT%TZ)\teval\t$(( $(date +%s) - started ))" >> "$w/budget.tsv"
keep "$w" "$OUT/$name"
cat "$w/eval.json"; echo
base=$(cat "$ROOT/benches/headline/recipe_args.json")
for s in "${LEVELS[@]}"; do
  name=obs$s-block4x1-$Q
  args=$(python3 -c "import json,sys; a=json.loads(sys.argv[1]); a.update(final_sparsity=$s/100, mask_update_fraction=$EVERY); print(json.dumps(a))" "$base")
  echo "== $name $(date -u +%T) args $args"
  echo "$args" > "$WORK/$name.args.json"
  RECIPE="$ROOT/recipes/obs80-block4x1-qat-distill-one-epoch.yaml" RECIPE_ARGS="$args" \
    "$ROOT/benches/headline/run.sh" "$BIN" "$WORK/$name" "$Q" 2>&1 | tee "$WORK/$name.log" | tail -3
  keep "$WORK/$name" "$OUT/$name"
  cp "$WORK/$name.args.json" "$OUT/$name/recipe_args.json"
done
for d in "$OUT"/*/; do
  python3 "$ROOT/benches/summarize.py" run "$d" > "$d/summary.json"
done
