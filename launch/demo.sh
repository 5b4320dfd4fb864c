#!/usr/bin/env bash
# The README's main command: set up .venv (first time only), then train and evaluate the Fast dual
# encoder on the built-in `shapes` dataset. Usage: bash launch/demo.sh [WORKDIR]   (default runs/demo)
# Rerunning on the same WORKDIR resumes training from its last checkpoint.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
WORKDIR="${1:-runs/demo}"
cd "$ROOT"
start=$(date +%s)
fastslow train --config configs/shapes_fast.py --workdir "$WORKDIR"
fastslow eval --workdir "$WORKDIR" --split test --output "$WORKDIR/eval.json"
echo "[fastslow] demo finished in $(( $(date +%s) - start )) s (after set-up); table in $WORKDIR/eval.json"
