#!/usr/bin/env bash
# GPU efficiency check (ResNet-50 224 px + BERT-base, batch 256, bf16): examples/s, step time and MFU
# of the fast, slow and distill train steps, and Slow re-ranking pairs/s. Within 8 minutes on one H100/H200.
#   bash bench/gpu_check.sh [--output gpu_check.json] [--steps 300] [--tasks fast,slow]
#   bash bench/gpu_check.sh --smoke      # tiny configs on any device (CPU too): checks that it runs
# Set FASTSLOW_EXTRAS=gpu (the default here unless --smoke) to install jax's CUDA plugin into .venv.
set -euo pipefail
case " $* " in
  *" --smoke "*) : ;;
  *) export FASTSLOW_EXTRAS="${FASTSLOW_EXTRAS:-gpu}" ;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/../launch/_env.sh"
cd "$ROOT"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$VENV/bin/python" bench/gpu_check.py "$@"
