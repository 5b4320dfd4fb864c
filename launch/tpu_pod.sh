#!/usr/bin/env bash
# Run `fastslow` on every worker of a Cloud TPU VM pod slice: copy this checkout to each worker, set up
# .venv there with the TPU extras (first time only), then start the same command on all workers at once.
# JAX finds the other workers itself (FASTSLOW_DISTRIBUTED=tpu); process 0 writes the logs and metrics.
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a bash launch/tpu_pod.sh train --config configs/shapes_fast.py \
#       --workdir /mnt/shared/runs/fast --config.mesh.data=-1 --config.mesh.fsdp=4
# The workdir must be a path every worker sees (a Filestore NFS or gcsfuse mount): checkpoints are
# written by every worker, each its own shards. Optional: PROJECT, REMOTE_DIR (default ~/fastslow_jax),
# DATA_DIR (FASTSLOW_DATA_DIR on the workers; default ~/.cache/fastslow_jax/datasets).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM's name}"
: "${ZONE:?set ZONE to the TPU VM's zone}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="${REMOTE_DIR:-fastslow_jax}"
gc=(gcloud compute tpus tpu-vm)
where=(--zone "$ZONE" ${PROJECT:+--project "$PROJECT"})
# 1. the code, on every worker (git archive of HEAD: commit first)
tarball="$(mktemp --suffix=.tar.gz)"
git -C "$ROOT" archive --format=tar.gz -o "$tarball" HEAD
"${gc[@]}" scp "$tarball" "$TPU_NAME:/tmp/fastslow_src.tar.gz" --worker=all "${where[@]}"
rm -f "$tarball"
# 2. set-up (idempotent) and 3. the same command on every worker
printf -v cmd '%q ' "$@"
"${gc[@]}" ssh "$TPU_NAME" --worker=all "${where[@]}" --command "set -e
mkdir -p $REMOTE_DIR && tar -xzf /tmp/fastslow_src.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR
FASTSLOW_EXTRAS=tpu source launch/_env.sh
export FASTSLOW_DISTRIBUTED=tpu ${DATA_DIR:+FASTSLOW_DATA_DIR=$DATA_DIR}
fastslow $cmd"
