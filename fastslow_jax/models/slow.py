"""The Slow model: a bidirectional caption decoder that cross-attends to fine-grained visual tokens.

Visual side: backbone pyramid C3..C5 -> FPN top-down path (1x1 laterals, x2 nearest upsampling, add,
3x3 smoothing) -> P5 (coarsest), P4, P3 -> one shared visual projection to the decoder width, plus
2-D sinusoidal position embeddings of each cell's centre (so all levels share one coordinate frame)
and a learned level embedding. For clips [B, T, ...] the tokens of all frames are concatenated,
with a learned frame embedding.

Text side: a left-to-right and a right-to-left transformer decoder (own weights; causal
self-attention, cross-attention, MLP) sharing the token embedding, the output projection and the
visual projection. Decoder layer ``l`` attends the pyramid level ``levels[l]``: ``(P5, P4, P3)`` is
the fine-grained coarse-to-fine schedule, ``(P5, P5, P5)`` the last-map-only baseline.

Score: ``h(x, y) = sum_t log p_fwd(y_t | y_<t, x) + sum_t log p_bwd(y_t | y_>t, x)`` over the real
caption tokens (padding masked), teacher-forced: one parallel pass per (image, caption) pair.
Scoring many pairs reuses each image's cross-attention keys and values (``visual_cache``).

Output vocabulary: by default the decoder predicts every tokenizer id. With ``model.slow.output_ids``
(e.g. the ids that occur in the training captions, which ``model.slow.output_vocab="train"`` makes the
trainer fill in), it predicts those ids plus one shared ``other`` class standing for every id outside the
list: a coarser but still normalised distribution, so ``h`` stays a log-likelihood. Inputs still embed
every id. With a large tokenizer (MiniLM: 30,522 ids) and a small caption vocabulary this removes most of
the decoder's cost, which is the output projection and softmax.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from fastslow_jax.models import layers
from fastslow_jax.models.fast import compute_dtype
from fastslow_jax.models.backbones import build_backbone
from fastslow_jax.models.vision import conv

LEVELS = ("P3", "P4", "P5")
OUTPUT_VOCABS = ("", "train")  # model.slow.output_vocab: every tokenizer id | the training captions' ids


class OutputIndex(nnx.Variable):
    """[tokenizer vocab] int32: the decoder's output class of each token id (not trained)."""


def output_classes(output_ids, vocab_size: int) -> tuple[np.ndarray | None, int]:
    """(id -> class table, padded number of classes) for ``model.slow.output_ids``; (None, vocab_size) when
    the list is empty (the decoder predicts every id). Class ``len(ids)`` is ``other``; the class count is
    padded to a multiple of 128 (shardable, MXU-sized), and padded classes get no probability."""
    ids = np.asarray(tuple(output_ids or ()), dtype=np.int64)
    if ids.size == 0:
        return None, vocab_size
    if np.any(ids <= 0) or np.any(ids >= vocab_size) or len(np.unique(ids)) != ids.size:
        raise ValueError(f"model.slow.output_ids must be distinct token ids in 1..{vocab_size - 1} "
                         f"(the tokenizer's), got {ids.size} ids in {ids.min()}..{ids.max()}")
    table = np.full(vocab_size, ids.size, dtype=np.int32)
    table[ids] = np.arange(ids.size, dtype=np.int32)
    return table, -(-(ids.size + 1) // 128) * 128


class FPN(nnx.Module):
    """Top-down feature pyramid: C3, C4, C5 -> P3, P4, P5, all ``width`` channels."""

    def __init__(self, channels: dict[str, int], width: int, *, dtype=None, rngs: nnx.Rngs):
        self.lateral = nnx.Dict({c: conv(channels[c], width, 1, rngs=rngs, use_bias=True, dtype=dtype)
                                 for c in ("C3", "C4", "C5")})
        self.smooth = nnx.Dict({p: conv(width, width, 3, rngs=rngs, use_bias=True, dtype=dtype)
                                for p in LEVELS})

    def __call__(self, feats: dict[str, jax.Array]) -> dict[str, jax.Array]:
        p5 = self.lateral["C5"](feats["C5"])
        p4 = self.lateral["C4"](feats["C4"]) + _upsample2(p5, feats["C4"].shape)
        p3 = self.lateral["C3"](feats["C3"]) + _upsample2(p4, feats["C3"].shape)
        return {"P3": self.smooth["P3"](p3), "P4": self.smooth["P4"](p4), "P5": self.smooth["P5"](p5)}


def _upsample2(x: jax.Array, target_shape) -> jax.Array:
    """x2 nearest-neighbour upsampling, cropped to the lateral map (odd sizes)."""
    y = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return y[:, : target_shape[1], : target_shape[2]]


def position_embedding_2d(h: int, w: int, dim: int) -> jax.Array:
    """[h*w, dim] sinusoidal embedding of each cell centre in normalised [0, 1] image coordinates."""
    ys = (jnp.arange(h) + 0.5) / h
    xs = (jnp.arange(w) + 0.5) / w
    yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
    quarter = dim // 4
    freqs = jnp.exp(jnp.linspace(0.0, math.log(64.0), quarter)) * math.pi
    parts = []
    for coord in (yy.ravel(), xx.ravel()):
        ang = coord[:, None] * freqs[None]
        parts += [jnp.sin(ang), jnp.cos(ang)]
    emb = jnp.concatenate(parts, axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim - emb.shape[-1])))


def reverse_tokens(tokens: jax.Array, pad_id: int = 0) -> jax.Array:
    """Reverse the real (non-pad) part of each row: [CLS a b SEP 0 0] -> [SEP b a CLS 0 0]."""
    n = (tokens != pad_id).sum(-1, keepdims=True)
    idx = jnp.arange(tokens.shape[-1])[None]
    src = jnp.where(idx < n, n - 1 - idx, idx)
    return jnp.where(idx < n, jnp.take_along_axis(tokens, src, axis=-1), pad_id)


class CaptionDecoder(nnx.Module):
    """One direction: position embeddings + causal layers with cross-attention."""

    def __init__(self, cfg, *, dtype=None, remat: bool = False, rngs: nnx.Rngs):
        init = nnx.initializers.truncated_normal(stddev=0.02)
        self.position = nnx.Embed(cfg.max_len, cfg.width, embedding_init=nnx.with_partitioning(init, (None, "embed")),
                                  dtype=dtype, rngs=rngs)
        self.layers = nnx.List([
            layers.TransformerLayer(cfg.width, cfg.num_heads, cfg.mlp_dim, cross_attention=True,
                                    dropout=cfg.dropout, dtype=dtype, remat=remat, rngs=rngs)
            for _ in range(len(cfg.levels))
        ])


class SlowModel(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, vocab_size: int, rngs: nnx.Rngs):
        dtype = compute_dtype(cfg)
        scfg = cfg.slow
        bad = [lv for lv in scfg.levels if lv not in LEVELS]
        if bad or not scfg.levels:
            raise ValueError(f"model.slow.levels must list one of {LEVELS} per decoder layer, got {tuple(scfg.levels)}")
        self.levels = tuple(scfg.levels)
        self.width = scfg.width
        self.vision = build_backbone(cfg.vision, dtype=dtype, rngs=rngs)
        if set(self.vision.channels) != {"C3", "C4", "C5"}:
            raise ValueError(f"model.vision.name {cfg.vision.name!r} gives no C3..C5 pyramid, which Slow needs; "
                             f"use a CNN backbone (tiny_cnn, resnet50, efficientnet_lite*)")
        self.fpn = FPN(self.vision.channels, scfg.fpn_width, dtype=dtype, rngs=rngs)
        # per-level BatchNorm on the pyramid: standardises each channel across images, so the image-dependent
        # part of the maps is not drowned by a large image-independent offset (the decoder would then learn to
        # ignore the image and become a language model)
        self.level_norm = nnx.Dict({lv: nnx.BatchNorm(scfg.fpn_width, momentum=0.9, dtype=dtype, rngs=rngs)
                                    for lv in LEVELS})
        self.visual_proj = layers.dense(scfg.fpn_width, scfg.width, (None, "embed"), rngs=rngs, dtype=dtype)
        self.visual_norm = layers.layer_norm(scfg.width, rngs=rngs, dtype=dtype)
        init = nnx.initializers.truncated_normal(stddev=0.02)
        self.level_embed = nnx.Param(init(rngs.params(), (len(LEVELS), scfg.width)), out_sharding=(None, "embed"))
        self.frame_embed = nnx.Param(init(rngs.params(), (scfg.max_frames, scfg.width)), out_sharding=(None, "embed"))
        self.token_embed = nnx.Embed(vocab_size, scfg.width,
                                     embedding_init=nnx.with_partitioning(init, ("vocab", "embed")),
                                     dtype=dtype, rngs=rngs)
        self.embed_norm = layers.layer_norm(scfg.width, rngs=rngs, dtype=dtype)
        if scfg.get("output_vocab", "") not in OUTPUT_VOCABS:
            raise ValueError(f"model.slow.output_vocab must be one of {OUTPUT_VOCABS}, got {scfg.output_vocab!r}")
        table, num_outputs = output_classes(scfg.get("output_ids", ()), vocab_size)
        if table is None and scfg.get("output_vocab", ""):
            raise ValueError(f"model.slow.output_vocab={scfg.output_vocab!r} needs model.slow.output_ids, which "
                             f"`fastslow train` fills in from the {scfg.output_vocab} split before building the model")
        # id -> output class (None: the decoder predicts every id); classes >= num_classes are padding
        self.output_index = None if table is None else OutputIndex(jnp.asarray(table))
        self.num_classes = vocab_size if table is None else len(scfg.output_ids) + 1
        self.output = layers.dense(scfg.width, num_outputs, ("embed", "vocab"), rngs=rngs, dtype=dtype)
        remat = bool(cfg.get("remat", False))
        self.fwd = CaptionDecoder(scfg, dtype=dtype, remat=remat, rngs=rngs)
        self.bwd = CaptionDecoder(scfg, dtype=dtype, remat=remat, rngs=rngs)
        self.pad_id = 0

    # ----------------------------------------------------------------------------- visual side
    def visual_tokens(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """uint8 [B, H, W, 3] (or clips [B, T, H, W, 3]) -> {level: [B, tokens, width]}."""
        frames, lead = layers.fold_time(images)
        pyramid = self.fpn(self.vision(frames, train=train))
        out = {}
        for i, level in enumerate(LEVELS):
            p = self.level_norm[level](pyramid[level], use_running_average=not train)
            _, h, w, c = p.shape
            x = self.visual_proj(p.reshape(p.shape[0], h * w, c))
            x = x + position_embedding_2d(h, w, self.width).astype(x.dtype) + self.level_embed[i].astype(x.dtype)
            x = layers.unfold_time(x, lead)
            if x.ndim == 4:  # clip: [B, T, hw, D] -> [B, T*hw, D] with a frame embedding
                t = x.shape[1]
                x = (x + self.frame_embed[:t][None, :, None].astype(x.dtype)).reshape(x.shape[0], -1, x.shape[-1])
            out[level] = self.visual_norm(x)
        return out

    def visual_cache(self, images: jax.Array, *, train: bool = False):
        """Per-image cross-attention keys and values for every decoder layer of both directions.

        Returns ``{"fwd": [(k, v) per layer], "bwd": [...]}`` with k, v of shape [B, tokens, heads, head_dim].
        Computed once per gallery image and reused for every caption scored against it.
        """
        tokens = self.visual_tokens(images, train=train)
        cache = {}
        for name, dec in (("fwd", self.fwd), ("bwd", self.bwd)):
            cache[name] = [layer.cross_attention.project_kv(tokens[level])
                           for layer, level in zip(dec.layers, self.levels)]
        return cache

    # ----------------------------------------------------------------------------- text side
    def _decode(self, dec: CaptionDecoder, tokens: jax.Array, kv, *, deterministic: bool,
                rngs: nnx.Rngs | None) -> jax.Array:
        """Teacher-forced per-token log-probabilities of tokens[..., 1:] given tokens[..., :-1]."""
        inputs, targets = tokens[..., :-1], tokens[..., 1:]
        valid = targets != self.pad_id
        length = inputs.shape[-1]
        x = self.token_embed(inputs) + dec.position(jnp.arange(length))
        x = self.embed_norm(x)
        causal = jnp.tril(jnp.ones((length, length), bool))
        mask = causal & (inputs != self.pad_id)[..., None, None, :]
        for layer, layer_kv in zip(dec.layers, kv):
            x = layer(x, mask=mask, memory_kv=layer_kv, deterministic=deterministic, rngs=rngs)
        logits = self.output(x).astype(jnp.float32)
        if self.output_index is not None:  # compact output: ids -> classes; padded classes get no mass
            targets = self.output_index[...][targets]
            if logits.shape[-1] > self.num_classes:
                logits = jnp.where(jnp.arange(logits.shape[-1]) < self.num_classes, logits, -jnp.inf)
        logp = jax.nn.log_softmax(logits, axis=-1)
        tok_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.where(valid, tok_logp, 0.0)

    def token_log_probs(self, tokens: jax.Array, cache, *, train: bool = False, rngs: nnx.Rngs | None = None):
        """(fwd, bwd) per-token log-probabilities, each [..., L-1]; cache leaves broadcast against tokens."""
        det = not train
        fwd = self._decode(self.fwd, tokens, cache["fwd"], deterministic=det, rngs=rngs)
        bwd = self._decode(self.bwd, reverse_tokens(tokens, self.pad_id), cache["bwd"], deterministic=det, rngs=rngs)
        return fwd, bwd

    def score_with_cache(self, tokens: jax.Array, cache) -> jax.Array:
        """h(x, y) for tokens [..., L] against cached images whose leading dims broadcast with tokens'."""
        fwd, bwd = self.token_log_probs(tokens, cache)
        return fwd.sum(-1) + bwd.sum(-1)

    def score(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
        """h(x_i, y_i) for aligned pairs: images [B, ...], tokens [B, L] -> [B]."""
        return self.score_with_cache(tokens, self.visual_cache(images))

