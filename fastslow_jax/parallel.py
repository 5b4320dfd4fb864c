"""Meshes and shardings: the one place that knows about devices.

* ``make_mesh(cfg.mesh)`` builds the global mesh with axes ``data``, ``fsdp``, ``model`` (one axis
  may be -1: it takes the remaining devices).
* Models annotate parameters with logical axis names; ``cfg.sharding_rules`` maps each logical name
  to a mesh axis (or a tuple of axes, or None). ``logical_to_mesh`` applies the rules, skipping a
  mesh axis already used in the same spec and any axis that does not divide the dimension.
* ``host_to_global`` turns each process's slice of a batch into one global ``jax.Array``.
* ``constrain`` pins activations by logical names with the same rules (inside ``activation_sharding``).
* ``sharded_top_k`` is exact retrieval over a gallery split across every device and host.
* ``initialize_distributed`` starts JAX's multi-controller runtime (TPU pod, SLURM, or explicit).
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}
    unknown = set(mesh_cfg) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)} in config.mesh; valid axes are {MESH_AXES}")
    fill = [a for a, n in shape.items() if n == -1]
    if len(fill) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {fill}")
    known = math.prod(n for n in shape.values() if n != -1)
    if fill:
        if len(devices) % known:
            raise ValueError(f"config.mesh {shape} cannot fill {len(devices)} devices")
        shape[fill[0]] = len(devices) // known
    if math.prod(shape.values()) != len(devices):
        raise ValueError(f"config.mesh {shape} needs {math.prod(shape.values())} devices, "
                         f"but {len(devices)} are available")
    dev_array = np.asarray(devices).reshape(tuple(shape[a] for a in MESH_AXES))
    return Mesh(dev_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_mesh(names: Sequence[str | None] | None, shape: Sequence[int], rules: Mapping[str, Any],
                    mesh: Mesh) -> P:
    """Map a tuple of logical axis names to a PartitionSpec on ``mesh``."""
    if names is None:
        return P()
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        target = rules.get(name) if name is not None else None
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        axes = tuple(a for a in axes if a not in used and mesh.shape.get(a, 1) > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = ()  # not divisible: keep this dimension replicated rather than fail
        used.update(axes)
        spec.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return P(*spec)


def state_shardings(state: Any, rules: Mapping[str, Any], mesh: Mesh):
    """NamedShardings for any tree holding ``nnx.Variable``s (model state, optimizer state...).

    A Variable is placed by its logical-axis metadata; any other leaf is replicated."""
    def one(var):
        meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
        names = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        if not hasattr(value, "shape"):  # e.g. optax's MaskedNode (a parameter another optimizer group owns)
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, logical_to_mesh(names, tuple(value.shape), rules, mesh))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules: Mapping[str, Any]) -> NamedSharding:
    target = rules.get("batch", ("data", "fsdp"))
    axes = (target,) if isinstance(target, str) else tuple(target)
    axes = tuple(a for a in axes if a in mesh.shape)
    return NamedSharding(mesh, P(axes if axes else None))


def batch_divisor(mesh: Mesh, rules: Mapping[str, Any]) -> int:
    spec = batch_sharding(mesh, rules).spec[0]
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else spec)
    return math.prod(mesh.shape[a] for a in axes)


def host_to_global(local_batch: Any, sharding: NamedSharding) -> Any:
    """Assemble each process's rows of a batch into global arrays sharded along the batch axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)



# ------------------------------------------------------------------------------------------------
# Activations: the same rules table as the parameters
# ------------------------------------------------------------------------------------------------

_ACTIVATION_CONTEXT: list[tuple[Mesh, Mapping[str, Any]]] = []


class activation_sharding:
    """While active (at trace time), ``constrain`` pins activations to the mesh with ``rules``.

    The train step enters it around the loss, so a model's ``constrain`` calls cost nothing anywhere
    else (evaluation, tests of single modules)."""

    def __init__(self, mesh: Mesh, rules: Mapping[str, Any]):
        self.entry = (mesh, rules)

    def __enter__(self):
        _ACTIVATION_CONTEXT.append(self.entry)
        return self

    def __exit__(self, *exc):
        _ACTIVATION_CONTEXT.pop()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` of ``x`` by logical axis names (one per dimension; a rank
    mismatch leaves ``x`` alone), under the innermost ``activation_sharding``; identity outside."""
    if not _ACTIVATION_CONTEXT or x.ndim != len(names):
        return x
    mesh, rules = _ACTIVATION_CONTEXT[-1]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_mesh(names, x.shape, rules, mesh)))


# ------------------------------------------------------------------------------------------------
# Sharded exact top-k
# ------------------------------------------------------------------------------------------------

def pad_rows(x, size: int):
    """``x`` (a numpy or jax array, or a list) with its first row repeated until it has ``size`` rows:
    the one way a short last batch is padded to its compiled shape (callers keep the real count and
    drop the padded rows' outputs). ``x`` itself when it has ``size`` rows or more."""
    n = len(x)
    if n >= size:
        return x
    if isinstance(x, list):
        return x + [x[0]] * (size - n)
    if isinstance(x, jax.Array):
        return jnp.concatenate([x, jnp.repeat(x[:1], size - n, axis=0)])
    x = np.asarray(x)
    return np.concatenate([x, np.repeat(x[:1], size - n, axis=0)])


def shard_rows(host: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array present on every process -> a global array with its rows split over every device
    of ``mesh`` (all axes, all hosts), zero-padded to a multiple of the device count."""
    host = np.asarray(host)
    rows = -(-host.shape[0] // mesh.size)
    pad = rows * mesh.size - host.shape[0]
    if pad:
        host = np.concatenate([host, np.zeros((pad, *host.shape[1:]), host.dtype)])
    return jax.make_array_from_callback(host.shape, NamedSharding(mesh, P(tuple(mesh.axis_names))),
                                        lambda idx: host[idx])


def sharded_top_k(queries, gallery, k: int, mesh: Mesh, *, num_rows: int | None = None):
    """Exact top-``k`` of ``queries @ gallery.T`` with the gallery's rows split over every device of
    ``mesh`` (all axes, all hosts): each shard takes its local top-k inside ``jax.shard_map``, the
    shards' candidates are gathered and merged into the global top-k. Ties break towards the lower
    gallery index, as ``jax.lax.top_k`` on one device does, so the result is identical to it.

    ``gallery``: a host array present on every process, or ``shard_rows``' output with the real row
    count in ``num_rows``. ``queries``: a host array or a (replicated) jax.Array.
    Returns (scores [Q, k], indices [Q, k]) replicated on the mesh."""
    if not isinstance(gallery, jax.Array):
        num_rows = int(gallery.shape[0])
        gallery = shard_rows(gallery, mesh)
    n = int(gallery.shape[0] if num_rows is None else num_rows)
    if not 0 < k <= n:
        raise ValueError(f"top-k needs 0 < k <= gallery size, got k={k} for a gallery of {n}")
    axes = tuple(mesh.axis_names)
    rows = gallery.shape[0] // mesh.size
    if not isinstance(queries, jax.Array):
        q_host = np.asarray(queries)
        queries = jax.make_array_from_callback(q_host.shape, replicated(mesh), lambda idx: q_host[idx])
    return _top_k_fn(mesh, axes, n, rows, k, min(k, rows))(queries, gallery)


_TOPK_CACHE: dict = {}


def _top_k_fn(mesh, axes, n, rows, k, k_local):
    key = (mesh, axes, n, rows, k, k_local)
    if key not in _TOPK_CACHE:
        def local(q, g):
            shard = jax.lax.axis_index(axes)
            scores = q @ g.T  # [Q, rows]
            index = shard * rows + jnp.arange(rows)
            scores = jnp.where(index[None] < n, scores, -jnp.inf)  # padding rows never win
            vals, idx = jax.lax.top_k(scores, k_local)
            vals = jax.lax.all_gather(vals, axes, axis=1, tiled=True)  # [Q, shards*k_local], shard order
            idx = jax.lax.all_gather(idx + shard * rows, axes, axis=1, tiled=True)
            best, pos = jax.lax.top_k(vals, k)  # stable: the lower position (lower global index) first
            return best, jnp.take_along_axis(idx, pos, axis=1)

        fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axes)), out_specs=(P(), P()), check_vma=False)
        _TOPK_CACHE[key] = jax.jit(fn)
    return _TOPK_CACHE[key]


# ------------------------------------------------------------------------------------------------
# Multi-host start-up
# ------------------------------------------------------------------------------------------------

def prepare_once(fn, what: str, timeout_s: int = 3 * 3600) -> None:
    """Run ``fn`` (e.g. building a dataset into a shared directory) on process 0 while the other
    processes wait at a barrier of the distributed runtime (not a device collective, whose set-up
    times out after 30 s); with one process, just run it."""
    if jax.process_count() == 1:
        fn()
        return
    if jax.process_index() == 0:
        fn()
    from jax._src.distributed import global_state  # the coordination service's barrier
    global_state.client.wait_at_barrier(f"fastslow_prepare_{what}", timeout_in_ms=timeout_s * 1000)
    if jax.process_index() != 0:
        fn()  # now only reads what process 0 wrote


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, env: Mapping[str, str] | None = None) -> str:
    """Start JAX's multi-controller runtime when this process is one of several; returns what it did.

    Decided, in order, by:
      * an explicit coordinator: the arguments, or ``FASTSLOW_COORDINATOR=host:port`` with
        ``FASTSLOW_NUM_PROCESSES`` and ``FASTSLOW_PROCESS_ID`` (any machine, e.g. CPU hosts);
      * ``FASTSLOW_DISTRIBUTED``: ``tpu`` or ``slurm`` (JAX's own detection of a TPU VM pod slice or a
        SLURM job step), ``off`` (single process);
      * otherwise SLURM is detected from ``SLURM_JOB_ID`` with ``SLURM_NTASKS`` > 1, and a TPU pod
        slice from ``TPU_WORKER_HOSTNAMES`` naming more than one worker.
    Nothing is started for a single process (the default on a laptop or one accelerator host)."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get("FASTSLOW_COORDINATOR") or None
    mode = (env.get("FASTSLOW_DISTRIBUTED") or "").lower()
    if mode not in ("", "tpu", "slurm", "off"):
        raise ValueError(f"FASTSLOW_DISTRIBUTED={mode!r} is not one of tpu, slurm, off")
    if coordinator:
        n = num_processes if num_processes is not None else env.get("FASTSLOW_NUM_PROCESSES")
        i = process_id if process_id is not None else env.get("FASTSLOW_PROCESS_ID")
        if n is None or i is None:
            raise ValueError(f"coordinator {coordinator} given without the number of processes and this process's "
                             f"id (--num-processes/--process-id or FASTSLOW_NUM_PROCESSES/FASTSLOW_PROCESS_ID)")
        n, i = int(n), int(i)
        if not 0 <= i < n:
            raise ValueError(f"process id {i} is not in [0, {n}) for {n} processes")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=i)
        return f"explicit coordinator {coordinator}: process {i} of {n}"
    if mode == "off":
        return "single process (FASTSLOW_DISTRIBUTED=off)"
    slurm = env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1
    tpu = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    if mode in ("tpu", "slurm") or slurm or tpu:
        jax.distributed.initialize()  # JAX detects the cluster (Cloud TPU metadata, SLURM variables)
        return (f"{mode or ('slurm' if slurm else 'tpu')} cluster: process {jax.process_index()} of "
                f"{jax.process_count()}")
    return "single process"
