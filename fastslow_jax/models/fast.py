"""The Fast dual encoder: f(x) and g(y) embedded independently, scored by a dot product.

Image tower: backbone -> global average pool of C5 (or the backbone's own ``pooled``, e.g. CLIP's CLS
token; then over time too for video clips) -> linear -> L2.
Text tower: transformer encoder -> masked mean pool (CLIP: the end-of-text token) -> linear -> L2.
``model.vision.pretrained`` / ``model.text.pretrained`` initialise the towers (``weights.load_pretrained``);
``model.freeze_vision`` / ``model.freeze_text`` lock a tower (LiT: the optimizer skips it, and a locked
image tower keeps its BatchNorm statistics and is computed once per training image). A learnable temperature
(``logit_scale = log(1 / tau)``, initialised from ``model.temperature``) scales the logits.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fastslow_jax.models import layers
from fastslow_jax.models.text import build_text_tower
from fastslow_jax.models.backbones import build_backbone


def compute_dtype(cfg: ml_collections.ConfigDict):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[cfg.get("dtype", "float32")]


class FastModel(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, vocab_size: int, rngs: nnx.Rngs):
        dtype = compute_dtype(cfg)
        self.vision = build_backbone(cfg.vision, dtype=dtype, rngs=rngs)
        self.text = build_text_tower(cfg.text, vocab_size=vocab_size, dtype=dtype, remat=bool(cfg.get("remat", False)),
                                     rngs=rngs)
        self.image_proj = layers.dense(self.vision.channels["C5"], cfg.embed_dim, ("embed", None), rngs=rngs,
                                       dtype=dtype)
        self.text_proj = layers.dense(self.text.width, cfg.embed_dim, ("embed", None), rngs=rngs, dtype=dtype)
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1.0 / cfg.temperature), jnp.float32), out_sharding=())
        self.max_logit_scale = math.log(100.0)
        # a locked image tower (LiT) keeps its BatchNorm statistics: it always runs in inference mode
        self.vision_locked = bool(cfg.get("freeze_vision", False))

    def image_features(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """[B, H, W, 3] images or [B, T, H, W, 3] clips (uint8) -> [B, C] pooled backbone features (before
        the projection): what a locked image tower's cache holds."""
        train = train and not self.vision_locked
        frames, lead = layers.fold_time(images)
        if hasattr(self.vision, "pooled"):  # e.g. CLIP's ViT: its own pooled token
            pooled = self.vision.pooled(frames, train=train)
        else:
            pooled = self.vision(frames, train=train)["C5"].mean(axis=(1, 2))
        pooled = layers.unfold_time(pooled, lead)
        if pooled.ndim == 3:  # video: average over time as well
            pooled = pooled.mean(axis=1)
        return pooled

    def embed_image_features(self, pooled: jax.Array) -> jax.Array:
        """[B, C] pooled backbone features -> [B, E] unit vectors (float32)."""
        return layers.l2_normalize(self.image_proj(pooled)).astype(jnp.float32)

    def encode_image(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """[B, H, W, 3] images or [B, T, H, W, 3] clips (uint8) -> [B, E] unit vectors (float32)."""
        return self.embed_image_features(self.image_features(images, train=train))

    def text_features(self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """[B, L] token ids (0 = padding) -> [B, width] pooled text states (before the projection)."""
        states = self.text(tokens, deterministic=not train, rngs=rngs)
        if hasattr(self.text, "pooled"):  # CLIP: the end-of-text token's state
            return self.text.pooled(tokens, states)
        return layers.masked_mean(states, tokens != 0)

    def embed_text_features(self, pooled: jax.Array) -> jax.Array:
        """[B, width] pooled text states -> [B, E] unit vectors (float32)."""
        return layers.l2_normalize(self.text_proj(pooled)).astype(jnp.float32)

    def encode_text(self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """[B, L] token ids (0 = padding) -> [B, E] unit vectors (float32)."""
        return self.embed_text_features(self.text_features(tokens, train=train, rngs=rngs))

    def scale(self) -> jax.Array:
        """exp(logit_scale), clipped at 100 as in CLIP."""
        return jnp.exp(jnp.minimum(self.logit_scale[...], self.max_logit_scale))
