"""Shared building blocks: sharded dense layers, multi-head attention and BERT-style transformer layers.

Every parameter carries *logical* axis names (``embed``, ``mlp``, ``heads``, ``vocab``, ``conv_in``,
``conv_out``...). ``fastslow_jax.parallel`` maps them to mesh axes with the config's rules table, so a
model never names a device or a mesh axis. Main activations are pinned the same way with
``constrain(x, ("batch", "length", "embed"))`` (a no-op outside the train step).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fastslow_jax.parallel import constrain

Array = jax.Array

default_kernel_init = nnx.initializers.truncated_normal(stddev=0.02)


def dense(in_features: int, out_features: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs,
          use_bias: bool = True, dtype=None, kernel_init=default_kernel_init) -> nnx.Linear:
    """An ``nnx.Linear`` whose kernel is annotated with logical axes ``axes`` (bias gets ``axes[1]``)."""
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(kernel_init, axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
    )


def layer_norm(features: int, *, rngs: nnx.Rngs, eps: float = 1e-12, dtype=None) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        features, epsilon=eps, dtype=dtype, rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
    )


class MultiHeadAttention(nnx.Module):
    """Multi-head dot-product attention with separate query/key/value/output projections (BERT layout).

    ``mask`` is boolean, broadcastable to ``[batch, heads, q_len, kv_len]``; True means "may attend".
    """

    def __init__(self, width: int, num_heads: int, *, kv_width: int | None = None, dropout: float = 0.0,
                 dtype=None, rngs: nnx.Rngs):
        if width % num_heads:
            raise ValueError(f"attention width {width} is not divisible by num_heads {num_heads}")
        kv_width = kv_width or width
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.query = dense(width, width, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.key = dense(kv_width, width, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.value = dense(kv_width, width, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.out = dense(width, width, ("heads", "embed"), rngs=rngs, dtype=dtype)
        self.dropout = nnx.Dropout(dropout)

    def _split(self, x: Array) -> Array:
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def project_kv(self, kv: Array) -> tuple[Array, Array]:
        """Keys and values [..., T, heads, head_dim] of a memory, to reuse across many queries."""
        return self._split(self.key(kv)), self._split(self.value(kv))

    def __call__(self, x: Array, kv: Array | None = None, mask: Array | None = None, *,
                 kv_cache: tuple[Array, Array] | None = None, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> Array:
        """Attend from ``x`` to ``kv`` (default: ``x``), or to precomputed ``kv_cache`` = project_kv(memory).

        Leading (batch) dimensions of ``x`` and of the keys/values broadcast against each other."""
        q = constrain(self._split(self.query(x)), ("batch", "length", "heads", None))
        k, v = kv_cache if kv_cache is not None else self.project_kv(x if kv is None else kv)
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(self.head_dim).astype(q.dtype)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        weights = self.dropout(weights, deterministic=deterministic, rngs=rngs)
        y = jnp.einsum("...hqk,...khd->...qhd", weights, v)
        return self.out(y.reshape(*y.shape[:-2], -1))


def quick_gelu(x: Array) -> Array:
    """x * sigmoid(1.702 x): the activation of OpenAI's CLIP."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
               "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True), "quick_gelu": quick_gelu,
               "relu": jax.nn.relu}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nnx.Module):
    def __init__(self, width: int, hidden: int, *, dropout: float = 0.0, act: str = "gelu", dtype=None,
                 rngs: nnx.Rngs):
        self.intermediate = dense(width, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.output = dense(hidden, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.dropout = nnx.Dropout(dropout)
        self.act = activation(act)

    def __call__(self, x: Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
        h = constrain(self.act(self.intermediate(x)), ("batch", "length", "mlp"))
        return self.dropout(self.output(h), deterministic=deterministic, rngs=rngs)


class TransformerLayer(nnx.Module):
    """A post-LayerNorm (BERT-style) transformer layer, optionally with cross-attention to a memory.

    x -> LN(x + SelfAttn(x)) [-> LN(x + CrossAttn(x, memory))] -> LN(x + MLP(x)).

    ``cross_gate``: the cross-attention block is instead ``x + tanh(g) * CrossAttn(LN(x), memory)`` with a
    learned scalar gate ``g`` initialised to 0 (as in Flamingo), so a layer taken from a pretrained text
    encoder computes exactly what it did before training starts, and learns how much to look.
    """

    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, cross_attention: bool = False,
                 memory_width: int | None = None, dropout: float = 0.0, ln_eps: float = 1e-12,
                 cross_gate: bool = False, dtype=None, remat: bool = False, rngs: nnx.Rngs):
        self.remat = remat  # recompute this layer's activations in the backward pass (saves memory)
        self.cross_gate = nnx.Param(jnp.zeros((), jnp.float32), out_sharding=()) if cross_attention and cross_gate \
            else None
        self.attention = MultiHeadAttention(width, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
        self.attention_norm = layer_norm(width, eps=ln_eps, rngs=rngs, dtype=dtype)
        if cross_attention:
            self.cross_attention = MultiHeadAttention(width, num_heads, kv_width=memory_width, dropout=dropout,
                                                      dtype=dtype, rngs=rngs)
            self.cross_norm = layer_norm(width, eps=ln_eps, rngs=rngs, dtype=dtype)
        else:
            self.cross_attention = None
        self.mlp = MLP(width, mlp_dim, dropout=dropout, dtype=dtype, rngs=rngs)
        self.mlp_norm = layer_norm(width, eps=ln_eps, rngs=rngs, dtype=dtype)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: Array, mask: Array | None = None, memory: Array | None = None,
                 memory_mask: Array | None = None, *, memory_kv: tuple[Array, Array] | None = None,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
        if self.remat:
            return nnx.remat(TransformerLayer._forward, static_argnums=(6,))(
                self, x, mask, memory, memory_mask, memory_kv, deterministic, rngs)
        return self._forward(x, mask, memory, memory_mask, memory_kv, deterministic, rngs)

    def _forward(self, x, mask, memory, memory_mask, memory_kv, deterministic, rngs):
        kw = dict(deterministic=deterministic, rngs=rngs)
        h = self.attention(x, mask=mask, **kw)
        x = self.attention_norm(x + self.dropout(h, **kw))
        if self.cross_attention is not None:
            if memory is None and memory_kv is None:
                raise ValueError("this layer has cross-attention and needs a memory to attend to")
            if self.cross_gate is not None:  # pre-LN, gated residual: the identity while the gate is 0
                h = self.cross_attention(self.cross_norm(x), memory, mask=memory_mask, kv_cache=memory_kv, **kw)
                x = x + jnp.tanh(self.cross_gate[...]).astype(x.dtype) * self.dropout(h, **kw)
            else:
                h = self.cross_attention(x, memory, mask=memory_mask, kv_cache=memory_kv, **kw)
                x = self.cross_norm(x + self.dropout(h, **kw))
        return constrain(self.mlp_norm(x + self.mlp(x, **kw)), ("batch", "length", "embed"))


def padding_mask(tokens: Array, pad_id: int = 0) -> Array:
    """[B, L] token ids -> [B, 1, 1, L] boolean key mask (True = real token)."""
    return (tokens != pad_id)[:, None, None, :]


def masked_mean(x: Array, valid: Array, axis: int = 1) -> Array:
    """Mean of ``x`` over ``axis`` counting only positions where ``valid`` (shape x.shape[:axis+1]) is True."""
    w = valid.astype(x.dtype)[..., None]
    return (x * w).sum(axis) / jnp.maximum(w.sum(axis), 1.0)


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
    x32 = x.astype(jnp.float32)
    return (x32 / jnp.sqrt(jnp.maximum((x32 * x32).sum(-1, keepdims=True), eps * eps))).astype(x.dtype)


def fold_time(x: Array, image_ndim: int = 4) -> tuple[Array, tuple[int, ...]]:
    """Merge an optional leading time axis into the batch: [B, T, ...] -> [B*T, ...] (video clips)."""
    lead = x.shape[: x.ndim - image_ndim + 1]
    return x.reshape(-1, *x.shape[x.ndim - image_ndim + 1:]), lead


def unfold_time(x: Array, lead: Sequence[int]) -> Array:
    return x.reshape(*lead, *x.shape[1:])


def resize_images(images: Array, size: int) -> Array:
    """[..., H, W, C] pixel values (uint8 or float) -> float32 [..., size, size, C]: cubic, antialiased when
    shrinking, clipped to [0, 255] (the same image at another resolution)."""
    out = jax.image.resize(images.astype(jnp.float32), (*images.shape[:-3], size, size, images.shape[-1]),
                           "cubic", antialias=True)
    return jnp.clip(out, 0.0, 255.0)
