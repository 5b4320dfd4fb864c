"""The Fast dual encoder: f(x) and g(y) embedded independently, scored by a dot product.

Image tower: backbone -> global average pool of C5 (or of each of ``model.pool_levels``, at the input size
and at each of ``model.pool_sizes``, concatenated; or the backbone's own ``pooled``, e.g. CLIP's CLS token;
then over time too for video clips) -> [LayerNorm] -> [dropout in training] -> linear (+ a residual MLP:
``model.image_head="mlp"``) -> L2.
Text tower: transformer encoder -> masked mean pool of the last layer (or of each of ``model.text_pool_layers``,
concatenated; CLIP: the end-of-text token) -> linear (+ a residual MLP: ``model.text_head="mlp"``) -> L2.
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
        # the pooled image feature: the mean of each level of ``pool_levels`` (C5 alone by default; C4 and C3 add
        # the finer, earlier maps), at the input size and at each of ``pool_sizes`` (the image resized), concatenated
        self.pool_levels = tuple(cfg.get("pool_levels", ("C5",)))
        self.pool_sizes = tuple(int(s) for s in cfg.get("pool_sizes", ()))
        unknown = [lv for lv in self.pool_levels if lv not in self.vision.channels]
        if unknown or not self.pool_levels:
            raise ValueError(f"model.pool_levels {list(self.pool_levels)}: the {cfg.vision.name} backbone has levels "
                             f"{sorted(self.vision.channels)}")
        if hasattr(self.vision, "pooled") and self.pool_levels != ("C5",):
            raise ValueError(f"model.pool_levels must be ('C5',) with the {cfg.vision.name} backbone (its own "
                             f"pooled token), got {list(self.pool_levels)}")
        feature_dim = sum(self.vision.channels[lv] for lv in self.pool_levels) * (1 + len(self.pool_sizes))
        self.feature_dim = feature_dim
        self.image_norm = (layers.layer_norm(feature_dim, rngs=rngs, eps=1e-6, dtype=dtype)
                           if cfg.get("image_feature_norm", "none") == "layernorm" else None)
        # dropout on the pooled feature in training (a regulariser for a head trained over a locked tower)
        self.feature_dropout = nnx.Dropout(float(cfg.get("feature_dropout", 0.0)))
        self.image_proj = layers.dense(feature_dim, cfg.embed_dim, ("embed", None), rngs=rngs, dtype=dtype)
        # image_head "mlp": a residual two-layer MLP next to the linear projection, its output layer zero-initialised
        # (at step 0 the head is the linear one)
        head = cfg.get("image_head", "linear")
        if head not in ("linear", "mlp"):
            raise ValueError(f"model.image_head must be 'linear' or 'mlp', got {head!r}")
        hidden = int(cfg.get("head_hidden", 1024))
        self.image_mlp = _residual_mlp(feature_dim, hidden, cfg.embed_dim, dtype, rngs) if head == "mlp" else None
        # the pooled text feature: the masked mean of the last layer's states, or of each layer in text_pool_layers
        # (0 = the embeddings), concatenated
        self.text_pool_layers = tuple(int(i) for i in cfg.get("text_pool_layers", ()))
        if self.text_pool_layers and hasattr(self.text, "pooled"):
            raise ValueError(f"model.text_pool_layers must be empty with the {cfg.text.get('name', 'bert')} text "
                             f"tower (it pools its end-of-text token), got {list(self.text_pool_layers)}")
        if self.text_pool_layers:
            depth = len(self.text.layers)
            if any(not 0 <= i <= depth for i in self.text_pool_layers):
                raise ValueError(f"model.text_pool_layers {list(self.text_pool_layers)}: the text tower has layers "
                                 f"0..{depth} (0 = the embeddings)")
        text_dim = self.text.width * max(1, len(self.text_pool_layers))
        self.text_feature_dim = text_dim
        self.text_proj = layers.dense(text_dim, cfg.embed_dim, ("embed", None), rngs=rngs, dtype=dtype)
        text_head = cfg.get("text_head", "linear")
        if text_head not in ("linear", "mlp"):
            raise ValueError(f"model.text_head must be 'linear' or 'mlp', got {text_head!r}")
        self.text_mlp = _residual_mlp(text_dim, hidden, cfg.embed_dim, dtype, rngs) if text_head == "mlp" else None
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1.0 / cfg.temperature), jnp.float32), out_sharding=())
        self.max_logit_scale = math.log(100.0)
        # a locked image tower (LiT) keeps its BatchNorm statistics: it always runs in inference mode
        self.vision_locked = bool(cfg.get("freeze_vision", False))

    def image_features(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """[B, H, W, 3] images or [B, T, H, W, 3] clips (uint8) -> [B, C] pooled backbone features (before
        the projection): what a locked image tower's cache holds."""
        train = train and not self.vision_locked
        frames, lead = layers.fold_time(images)
        pooled = [self._pooled(frames, train)]
        for size in self.pool_sizes:  # the same image at another resolution (cubic, antialiased when smaller)
            pooled.append(self._pooled(layers.resize_images(frames, size), train))
        pooled = layers.unfold_time(jnp.concatenate(pooled, axis=-1) if len(pooled) > 1 else pooled[0], lead)
        if pooled.ndim == 3:  # video: average over time as well
            pooled = pooled.mean(axis=1)
        return pooled

    def _pooled(self, frames: jax.Array, train: bool) -> jax.Array:
        if hasattr(self.vision, "pooled"):  # e.g. CLIP's ViT: its own pooled token
            return self.vision.pooled(frames, train=train)
        maps = self.vision(frames, train=train)
        feats = [maps[lv].mean(axis=(1, 2)) for lv in self.pool_levels]
        return jnp.concatenate(feats, axis=-1) if len(feats) > 1 else feats[0]

    def embed_image_features(self, pooled: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
                             ) -> jax.Array:
        """[B, C] pooled backbone features -> [B, E] unit vectors (float32); ``model.feature_dropout`` applies
        when ``train`` and ``rngs`` are given."""
        x = self.image_norm(pooled) if self.image_norm is not None else pooled
        if train and rngs is not None and self.feature_dropout.rate > 0:
            x = self.feature_dropout(x, deterministic=False, rngs=rngs)
        y = self.image_proj(x)
        if self.image_mlp is not None:
            y = y + self.image_mlp(x)
        return layers.l2_normalize(y).astype(jnp.float32)

    def encode_image(self, images: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """[B, H, W, 3] images or [B, T, H, W, 3] clips (uint8) -> [B, E] unit vectors (float32)."""
        return self.embed_image_features(self.image_features(images, train=train), train=train, rngs=rngs)

    def text_features(self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """[B, L] token ids (0 = padding) -> [B, D] pooled text states (before the projection): what a locked
        text tower's cache holds."""
        if self.text_pool_layers:
            states = self.text.layer_states(tokens, self.text_pool_layers, deterministic=not train, rngs=rngs)
            return jnp.concatenate([layers.masked_mean(x, tokens != 0) for x in states], axis=-1)
        states = self.text(tokens, deterministic=not train, rngs=rngs)
        if hasattr(self.text, "pooled"):  # CLIP: the end-of-text token's state
            return self.text.pooled(tokens, states)
        return layers.masked_mean(states, tokens != 0)

    def embed_text_features(self, pooled: jax.Array) -> jax.Array:
        """[B, D] pooled text states -> [B, E] unit vectors (float32)."""
        y = self.text_proj(pooled)
        if self.text_mlp is not None:
            y = y + self.text_mlp(pooled)
        return layers.l2_normalize(y).astype(jnp.float32)

    def encode_text(self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """[B, L] token ids (0 = padding) -> [B, E] unit vectors (float32)."""
        return self.embed_text_features(self.text_features(tokens, train=train, rngs=rngs))

    def scale(self) -> jax.Array:
        """exp(logit_scale), clipped at 100 as in CLIP."""
        return jnp.exp(jnp.minimum(self.logit_scale[...], self.max_logit_scale))


def _residual_mlp(d_in: int, hidden: int, d_out: int, dtype, rngs: nnx.Rngs) -> nnx.Sequential:
    """A two-layer GELU MLP added next to a head's linear projection; its output layer is zero-initialised,
    so at step 0 the head is the linear one."""
    return nnx.Sequential(
        layers.dense(d_in, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype), nnx.gelu,
        layers.dense(hidden, d_out, ("mlp", None), rngs=rngs, dtype=dtype, kernel_init=nnx.initializers.zeros_init()))
