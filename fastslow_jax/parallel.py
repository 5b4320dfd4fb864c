"""Meshes and shardings: the one place that knows about devices.

* ``make_mesh(cfg.mesh)`` builds the global mesh with axes ``data``, ``fsdp``, ``model`` (one axis
  may be -1: it takes the remaining devices).
* Models annotate parameters with logical axis names; ``cfg.sharding_rules`` maps each logical name
  to a mesh axis (or a tuple of axes, or None). ``logical_to_mesh`` applies the rules, skipping a
  mesh axis already used in the same spec and any axis that does not divide the dimension.
* ``host_to_global`` turns each process's slice of a batch into one global ``jax.Array``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
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

