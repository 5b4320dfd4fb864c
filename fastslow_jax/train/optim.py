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


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                              optax.Schedule]:
    """Returns (transform, schedule). Weight decay skips biases, norms and scalars (ndim < 2)."""
    if cfg.name != "adamw":
        raise ValueError(f"unknown optim.name {cfg.name!r}; only 'adamw' is implemented")
    schedule = make_schedule(cfg, total_steps)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    parts = []
    if cfg.grad_clip and cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule
