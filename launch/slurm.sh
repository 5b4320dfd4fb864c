#!/usr/bin/env bash
# Train on GPU nodes with SLURM: one process per node (each drives all the node's GPUs), started by srun;
# JAX reads the job's SLURM variables to find the coordinator (FASTSLOW_DISTRIBUTED=slurm).
#   sbatch --nodes=4 --gpus-per-node=8 --time=24:00:00 launch/slurm.sh train --config configs/shapes_fast.py \
#       --workdir /shared/runs/fast --config.mesh.data=-1 --config.mesh.fsdp=8
# or, from inside an allocation:  bash launch/slurm.sh train ...
# Submit from the checkout's root; it and the workdir must be on a file system every node sees. .venv is set up (GPU extras)
# once, on the submitting node, before the job steps start. Time-sliced jobs: set
# --config.train.stop_after=N and resubmit; each job resumes from the last checkpoint.
#SBATCH --job-name=fastslow
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --output=fastslow-%j.out
set -euo pipefail
ROOT="${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
FASTSLOW_EXTRAS=gpu source "$ROOT/launch/_env.sh"
cd "$ROOT"
export FASTSLOW_DISTRIBUTED=slurm
exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 "$VENV/bin/fastslow" "$@"
