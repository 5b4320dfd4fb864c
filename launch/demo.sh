#!/usr/bin/env bash
# The README's main command: set up .venv (first time only), then run the whole Fast and Slow pipeline
# on the built-in `shapes` dataset and print the evaluation table.
#   bash launch/demo.sh [WORKDIR]          (default runs/demo)
# Stages (each a normal run in WORKDIR/<stage>; rerunning resumes or skips finished stages):
#   fast_init     Fast dual encoder (InfoNCE), FAST_STEPS
#   slow          Slow captioner, fine-grained cross-attention P5 -> P4 -> P3 (backbone from fast_init)
#   slow_lastmap  the ablation: every decoder layer attends P5 only (same budget)
#   fast          plain Fast: fast_init trained CONT_STEPS more with InfoNCE only (distill.weight=0)
#   distill       distilled Fast: fast_init trained CONT_STEPS more with InfoNCE + KL to the Slow teacher;
#                 same seed, steps and batches as `fast`, which is its exact control
#   eval          one table (WORKDIR/eval.json): fast, fast_distilled, slow, slow_lastmap,
#                 fast+slow and fast_distilled+slow for K in 1, 5, 10, 20, 50
# After fast_init the stages form two independent lanes, (slow, distill) and (slow_lastmap, fast); with
# LANES=2 (the default on 2 or more cores) they run side by side, each pinned to half the cores: on
# XLA:CPU two 1-core processes get more done than one 2-core process (docs/demo.md has the figures).
# The second lane's training output goes to WORKDIR/lane2.log. LANES=1 runs the stages one by one.
# The step counts below are the demo's CPU budget; the configs' own defaults train longer.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
WORKDIR="${1:-runs/demo}"
FAST_STEPS="${FAST_STEPS:-500}"
CONT_STEPS="${CONT_STEPS:-200}"
SLOW_STEPS="${SLOW_STEPS:-700}"
SLOW_DECAY="${SLOW_DECAY:-1000}"  # Slow's cosine horizon: the run stops part-way down (chosen on validation)
GALLERY="${GALLERY:-300}"
CORES="$(nproc)"
LANES="${LANES:-$([ "$CORES" -ge 2 ] && echo 2 || echo 1)}"
case "$LANES" in 1|2) ;; *) echo "LANES must be 1 or 2, got $LANES" >&2; exit 2 ;; esac
cd "$ROOT"
mkdir -p "$WORKDIR"
start=$(date +%s)
stage() { echo "[fastslow] $1 ($(( $(date +%s) - start )) s)"; }

slow_run() {  # NAME [extra flags]: a Slow run from fast_init's backbone
  local name=$1; shift
  fastslow train --config configs/shapes_slow.py --workdir "$WORKDIR/$name" --config.train.steps="$SLOW_STEPS" \
    --config.optim.decay_steps="$SLOW_DECAY" --config.model.vision_init="$WORKDIR/fast_init" --config.eval.every=0 "$@"
}
cont_run() {  # fast | distill: fast_init + CONT_STEPS, the control with distill.weight=0, distill with the config's lambda
  local weight=(); [ "$1" = fast ] && weight=(--config.distill.weight=0)
  fastslow train --config configs/shapes_distill.py --workdir "$WORKDIR/$1" --config.train.steps="$CONT_STEPS" \
    --config.distill.teacher_workdir="$WORKDIR/slow" --config.distill.student_init="$WORKDIR/fast_init" \
    "${weight[@]}" --config.optim.warmup_steps=20 --config.eval.every=0
}
pin() {  # LANE: pin this (sub)shell and its children to the lane's half of the cores
  local half=$(( CORES / 2 ))
  if [ "$1" = 1 ]; then taskset -cp "0-$(( half - 1 ))" $BASHPID >/dev/null; else taskset -cp "$half-$(( CORES - 1 ))" $BASHPID >/dev/null; fi
}

stage "fast_init"
fastslow train --config configs/shapes_fast.py --workdir "$WORKDIR/fast_init" --config.train.steps="$FAST_STEPS" \
  --config.eval.every=0
if [ "$LANES" = 1 ]; then
  stage "slow (fine-grained)"; slow_run slow
  stage "slow_lastmap (ablation)"; slow_run slow_lastmap --config.model.slow.levels=P5,P5,P5
  stage "fast (fast_init + $CONT_STEPS steps, distill.weight=0)"; cont_run fast
  stage "distill (fast_init + $CONT_STEPS steps)"; cont_run distill
else
  rm -f "$WORKDIR/.slow_done"
  stage "two lanes: (slow, distill) here, (slow_lastmap, fast) in $WORKDIR/lane2.log"
  (
    pin 1
    slow_run slow && touch "$WORKDIR/.slow_done" || { touch "$WORKDIR/.slow_failed"; exit 1; }
    stage "lane 1: distill (fast_init + $CONT_STEPS steps)"
    cont_run distill
  ) & lane1=$!
  (
    pin 2
    stage "lane 2: slow_lastmap (ablation)"
    slow_run slow_lastmap --config.model.slow.levels=P5,P5,P5 >"$WORKDIR/lane2.log" 2>&1
    while [ ! -f "$WORKDIR/.slow_done" ]; do  # the control loads the teacher's config and weights too
      [ -f "$WORKDIR/.slow_failed" ] && exit 1
      sleep 2
    done
    stage "lane 2: fast (fast_init + $CONT_STEPS steps, distill.weight=0)"
    cont_run fast >>"$WORKDIR/lane2.log" 2>&1
    stage "lane 2: done"
  ) & lane2=$!
  failed=0
  wait "$lane1" || failed=1
  wait "$lane2" || failed=1
  rm -f "$WORKDIR/.slow_done" "$WORKDIR/.slow_failed"
  if [ "$failed" = 1 ]; then
    echo "[fastslow] a lane failed; the end of $WORKDIR/lane2.log:" >&2
    tail -n 20 "$WORKDIR/lane2.log" >&2
    exit 1
  fi
fi
stage "eval"
fastslow eval --workdir "$WORKDIR" --split test --output "$WORKDIR/eval.json" \
  --config.eval.limit="$GALLERY" --config.eval.queries_per_image=1
stage "done: table in $WORKDIR/eval.json"
