#!/usr/bin/env bash
# The README's main command: set up .venv (first time only), then run the whole Fast and Slow pipeline
# on the built-in `shapes` dataset and print the evaluation table.
#   bash launch/demo.sh [WORKDIR]          (default runs/demo)
# Stages (each a normal run in WORKDIR/<stage>; rerunning resumes or skips finished stages):
#   fast          Fast dual encoder (InfoNCE)
#   slow          Slow captioner, fine-grained cross-attention P5 -> P4 -> P3 (backbone from `fast`)
#   slow_lastmap  the ablation: every decoder layer attends P5 only (same budget)
#   distill       Slow -> Fast distillation: the student has `fast`'s seed, steps and data order,
#                 so `fast` is its exact control (the only difference is the KL term)
#   eval          one table (WORKDIR/eval.json): fast, fast_distilled, slow, slow_lastmap,
#                 fast+slow and fast_distilled+slow for K in 1, 5, 10, 20, 50
# The step counts below are the demo's CPU budget (about 15 minutes on 2 cores); the configs' own
# defaults train longer.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
WORKDIR="${1:-runs/demo}"
FAST_STEPS="${FAST_STEPS:-500}"
SLOW_STEPS="${SLOW_STEPS:-500}"
GALLERY="${GALLERY:-300}"
cd "$ROOT"
start=$(date +%s)
stage() { echo "[fastslow] $1 ($(( $(date +%s) - start )) s)"; }

stage "fast"
fastslow train --config configs/shapes_fast.py --workdir "$WORKDIR/fast" --config.train.steps="$FAST_STEPS" \
  --config.eval.every=0
stage "slow (fine-grained)"
fastslow train --config configs/shapes_slow.py --workdir "$WORKDIR/slow" --config.train.steps="$SLOW_STEPS" \
  --config.model.vision_init="$WORKDIR/fast" --config.eval.every=0
stage "slow_lastmap (ablation)"
fastslow train --config configs/shapes_slow.py --workdir "$WORKDIR/slow_lastmap" --config.train.steps="$SLOW_STEPS" \
  --config.model.vision_init="$WORKDIR/fast" --config.model.slow.levels=P5,P5,P5 --config.eval.every=0
stage "distill"
fastslow train --config configs/shapes_distill.py --workdir "$WORKDIR/distill" --config.train.steps="$FAST_STEPS" \
  --config.distill.teacher_workdir="$WORKDIR/slow" --config.eval.every=0
stage "eval"
fastslow eval --workdir "$WORKDIR" --split test --output "$WORKDIR/eval.json" \
  --config.eval.limit="$GALLERY" --config.eval.queries_per_image=1
stage "done: table in $WORKDIR/eval.json"
