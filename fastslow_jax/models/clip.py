"""CLIP's towers (Radford et al.) in the Hugging Face ``CLIPModel`` layout: a ViT image tower and a causal
text transformer, both pre-LayerNorm with quick-GELU (or the checkpoint's ``hidden_act``).

The image tower is a Fast backbone: ``__call__`` returns ``{"C5": [B, h, w, width]}`` (the patch tokens
of the last layer; a ViT has one scale, so it serves Fast, not Slow's pyramid) and ``pooled`` returns
``post_layernorm(CLS)``, which Fast projects with ``image_proj`` (CLIP's ``visual_projection``).
The text tower returns token states and ``pooled`` takes the state at the first end-of-text token
(the highest id for checkpoints whose ``eos_token_id`` is the legacy 2), as CLIP does.
With ``pretrained`` set, the architecture comes from the checkpoint's config.json.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fastslow_jax.models import layers
from fastslow_jax.models.vision import normalize_images
from fastslow_jax.preprocess import preprocessing


class PreLNLayer(nnx.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)) (attribute names as in layers.TransformerLayer)."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, ln_eps: float, act: str, dtype=None,
                 rngs: nnx.Rngs):
        self.attention_norm = layers.layer_norm(width, eps=ln_eps, rngs=rngs, dtype=dtype)
        self.attention = layers.MultiHeadAttention(width, num_heads, dtype=dtype, rngs=rngs)
        self.mlp_norm = layers.layer_norm(width, eps=ln_eps, rngs=rngs, dtype=dtype)
        self.mlp = layers.MLP(width, mlp_dim, act=act, dtype=dtype, rngs=rngs)

    def __call__(self, x, mask=None):
        x = x + self.attention(self.attention_norm(x), mask=mask)
        return x + self.mlp(self.mlp_norm(x))


def _arch(cfg: ml_collections.ConfigDict, reader) -> ml_collections.ConfigDict:
    if not cfg.get("pretrained", ""):
        return cfg
    from fastslow_jax.models import weights

    arch = reader(weights.resolve(cfg.pretrained, what="pretrained"))
    out = ml_collections.ConfigDict(cfg.to_dict())
    for k, v in arch.items():
        out[k] = v
    return out


class CLIPVisionTower(nnx.Module):
    """``model.vision.name = "clip_vit"``: width, depth, num_heads, mlp_dim, image_size, patch_size (or
    read from ``model.vision.pretrained``)."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, dtype=None, rngs: nnx.Rngs):
        from fastslow_jax.models import weights

        cfg = _arch(cfg, weights.clip_vision_config)
        init = nnx.initializers.normal(0.02)
        width, p = cfg.width, cfg.patch_size
        spec = preprocessing(cfg)
        self.mean, self.std, self.dtype = spec.mean, spec.std, dtype
        self.patch_size, self.grid = p, cfg.image_size // p
        self.patch = nnx.Conv(3, width, (p, p), strides=p, padding="VALID", use_bias=False, dtype=dtype,
                              kernel_init=nnx.with_partitioning(init, (None, None, "conv_in", "embed")), rngs=rngs)
        self.cls = nnx.Param(nnx.with_partitioning(init, ("embed",))(rngs.params(), (width,)))
        self.position = nnx.Embed(self.grid ** 2 + 1, width, dtype=dtype, rngs=rngs,
                                  embedding_init=nnx.with_partitioning(init, (None, "embed")))
        ln_eps, act = cfg.get("ln_eps", 1e-5), cfg.get("act", "quick_gelu")
        self.pre_norm = layers.layer_norm(width, eps=ln_eps, rngs=rngs, dtype=dtype)
        self.layers = nnx.List([PreLNLayer(width, cfg.num_heads, cfg.mlp_dim, ln_eps=ln_eps, act=act, dtype=dtype,
                                           rngs=rngs) for _ in range(cfg.depth)])
        self.post_norm = layers.layer_norm(width, eps=ln_eps, rngs=rngs, dtype=dtype)
        self.channels = {"C5": width}
        self.width = width

    def tokens(self, images: jax.Array) -> jax.Array:
        """[B, H, W, 3] uint8 -> [B, 1 + h*w, width] states of the last layer (CLS first)."""
        x = self.patch(normalize_images(images, self.mean, self.std, self.dtype))
        b, h, w, c = x.shape
        if h * w + 1 != self.position.num_embeddings:
            raise ValueError(f"clip_vit expects {self.grid * self.patch_size}px images, got {images.shape[1:3]}")
        cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (b, 1, c))
        x = jnp.concatenate([cls, x.reshape(b, h * w, c)], axis=1) + self.position.embedding[...].astype(x.dtype)
        x = self.pre_norm(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        x = self.tokens(images)[:, 1:]
        return {"C5": x.reshape(x.shape[0], self.grid, self.grid, x.shape[-1])}

    def pooled(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        return self.post_norm(self.tokens(images)[:, 0])


class CLIPTextTower(nnx.Module):
    """``model.text.name = "clip"``: causal self-attention; ``eos_token_id`` picks the pooled token."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, vocab_size: int, dtype=None, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.width, self.max_len = cfg.width, cfg.max_len
        self.eos_token_id = cfg.get("eos_token_id", 2)
        self.token = nnx.Embed(vocab_size, cfg.width, dtype=dtype, rngs=rngs,
                               embedding_init=nnx.with_partitioning(init, ("vocab", "embed")))
        self.position = nnx.Embed(cfg.max_len, cfg.width, dtype=dtype, rngs=rngs,
                                  embedding_init=nnx.with_partitioning(init, (None, "embed")))
        ln_eps, act = cfg.get("ln_eps", 1e-5), cfg.get("act", "quick_gelu")
        self.layers = nnx.List([PreLNLayer(cfg.width, cfg.num_heads, cfg.mlp_dim, ln_eps=ln_eps, act=act,
                                           dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
        self.final_norm = layers.layer_norm(cfg.width, eps=ln_eps, rngs=rngs, dtype=dtype)

    def __call__(self, tokens: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        """[B, L] ids -> [B, L, width]. Causal attention: states up to the end-of-text token do not depend
        on what follows it (padding)."""
        length = tokens.shape[-1]
        if length > self.max_len:
            raise ValueError(f"text of {length} tokens is longer than the CLIP text tower's max_len {self.max_len}")
        x = self.token(tokens) + self.position(jnp.arange(length))[None]
        causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
        for layer in self.layers:
            x = layer(x, mask=causal)
        return self.final_norm(x)

    def pooled(self, tokens: jax.Array, states: jax.Array) -> jax.Array:
        if self.eos_token_id == 2:  # legacy configs: the end-of-text token has the highest id
            idx = jnp.argmax(tokens, axis=-1)
        else:
            idx = jnp.argmax(tokens == self.eos_token_id, axis=-1)
        return jnp.take_along_axis(states, idx[:, None, None], axis=1)[:, 0]
