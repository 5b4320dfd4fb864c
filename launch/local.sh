#!/usr/bin/env bash
# Run `fastslow` on this machine: one process over all local devices (the usual case), or N processes
# joined by jax.distributed on 127.0.0.1 (to rehearse a multi-host run on one box).
#   bash launch/local.sh train --config configs/shapes_fast.py --workdir runs/fast
#   NPROC=2 DEVICES_PER_PROC=4 bash launch/local.sh train --config configs/shapes_fast.py:tiny --workdir /tmp/mp
# NPROC > 1 starts process 0..NPROC-1 with --coordinator 127.0.0.1:PORT (PORT: a free one unless set);
# DEVICES_PER_PROC fakes that many CPU devices per process (CPU only). Exits with the first failure.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
NPROC="${NPROC:-1}"
if [ "$NPROC" -le 1 ]; then
  exec fastslow "$@"
fi
PORT="${PORT:-$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
if [ -n "${DEVICES_PER_PROC:-}" ]; then
  export JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES_PER_PROC"
fi
pids=()
for ((i = 0; i < NPROC; i++)); do
  fastslow "$@" --coordinator "127.0.0.1:$PORT" --num-processes "$NPROC" --process-id "$i" &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do
  wait "$pid" || rc=$?
done
exit $rc
