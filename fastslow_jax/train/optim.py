"""Optimizers from the config: AdamW with linear warmup and cosine decay (optax)."""
from __future__ import annotations

import jax
import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup, then cosine decay to ``lr * end_lr_factor`` over ``optim.decay_steps`` steps
    (0 = the run's ``total_steps``). A horizon longer than the run stops the run part-way down the
    cosine, with the learning rate still well above its end value."""
    horizon = int(cfg.get("decay_steps", 0) or 0) or total_steps
    if horizon < 0:
        raise ValueError(f"optim.decay_steps must be >= 0 (0 = train.steps), got {horizon}")
    warmup = min(int(cfg.warmup_steps), max(horizon - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup, decay_steps=max(horizon, warmup + 1),
        end_value=cfg.lr * cfg.end_lr_factor)


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def lr_labels(params, lr_mult: dict[str, float]):
    """The ``optim.lr_mult`` group of every parameter: the first name on its path that ``lr_mult`` lists
    (e.g. ``text`` for ``text.layers.0.mlp.output.kernel``, or ``student.text...``), else ``default``."""
    def label(path, _):
        return next((n for n in _path_names(path) if n in lr_mult), "default")
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                              optax.Schedule]:
    """Returns (transform, schedule). Weight decay skips biases, norms and scalars (ndim < 2).

    ``optim.lr_mult`` (a dict of submodule name -> factor, e.g. ``{"text": 0.1}``) scales the learning rate
    of the parameters under that name (``lr_labels``); gradient clipping stays global. A factor of 0 stops
    updates but keeps Adam state: to lock a tower, use ``model.freeze_vision`` / ``model.freeze_text``."""
    if cfg.name != "adamw":
        raise ValueError(f"unknown optim.name {cfg.name!r}; only 'adamw' is implemented")
    schedule = make_schedule(cfg, total_steps)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    lr_mult = {str(k): float(v) for k, v in dict(cfg.get("lr_mult", None) or {}).items() if float(v) != 1.0}
    bad = {k: v for k, v in lr_mult.items() if v < 0 or k == "default"}
    if bad:
        raise ValueError(f"optim.lr_mult must map submodule names to factors >= 0, got {bad}")

    def adamw(factor: float):
        sched = schedule if factor == 1.0 else (lambda step: factor * schedule(step))
        return optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)

    parts = []
    if cfg.grad_clip and cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    if lr_mult:
        groups = {"default": adamw(1.0), **{name: adamw(f) for name, f in lr_mult.items()}}
        parts.append(optax.multi_transform(groups, lambda params: lr_labels(params, lr_mult)))
    else:
        parts.append(adamw(1.0))
    return optax.chain(*parts), schedule
