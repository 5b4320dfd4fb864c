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

Pretrained decoder (``model.slow.pretrained``, e.g. ``minilm``: a BERT-family checkpoint): the token,
position and LayerNorm embeddings are the checkpoint's (shared by both directions), each direction's
layers are copies of its first ``len(levels)`` layers run with a causal mask, and each layer gets a gated
cross-attention block (``layers.TransformerLayer(cross_gate=True)``, gate 0 at the start, so at step 0 the
decoder is the pretrained encoder run causally). The output is tied to the word embeddings (a fresh
dense + GELU + LayerNorm transform, then ``E^T`` and a bias), so every word piece is predicted with its own
pretrained embedding. ``output_vocab="train+query"`` keeps that affordable: the softmax runs over the
training captions' ids plus, when scoring, the query's own ids, one fixed class set for every image a
query is scored against, so ``h`` stays a log-likelihood and an unseen word piece keeps its own embedding
(training targets are all training ids, so training uses the training ids alone).
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
from fastslow_jax.models.text import Embeddings, pretrained_arch
from fastslow_jax.models.vision import conv

LEVELS = ("P3", "P4", "P5")
# model.slow.output_vocab: every tokenizer id | the training captions' ids + 'other' | the training ids + the query's
OUTPUT_VOCABS = ("", "train", "train+query")


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
    """One direction: position embeddings (unless shared pretrained embeddings carry them) + causal layers
    with cross-attention (gated when the layers come from a pretrained encoder)."""

    def __init__(self, cfg, *, own_positions: bool = True, cross_gate: bool = False, dtype=None,
                 remat: bool = False, rngs: nnx.Rngs):
        init = nnx.initializers.truncated_normal(stddev=0.02)
        self.position = nnx.Embed(cfg.max_len, cfg.width, embedding_init=nnx.with_partitioning(init, (None, "embed")),
                                  dtype=dtype, rngs=rngs) if own_positions else None
        self.layers = nnx.List([
            layers.TransformerLayer(cfg.width, cfg.num_heads, cfg.mlp_dim, cross_attention=True,
                                    dropout=cfg.dropout, ln_eps=cfg.get("ln_eps", 1e-12), cross_gate=cross_gate,
                                    dtype=dtype, remat=remat, rngs=rngs)
            for _ in range(len(cfg.levels))
        ])


class TiedOutput(nnx.Module):
    """Output logits tied to the word embeddings: ``LN(gelu(dense(h))) @ E^T + b`` (BERT's MLM head shape)."""

    def __init__(self, width: int, vocab_size: int, *, ln_eps: float = 1e-12, dtype=None, rngs: nnx.Rngs):
        self.transform = layers.dense(width, width, ("embed", None), rngs=rngs, dtype=dtype)
        self.norm = layers.layer_norm(width, eps=ln_eps, rngs=rngs, dtype=dtype)
        self.bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32), out_sharding=("vocab",))

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.norm(jax.nn.gelu(self.transform(h), approximate=False))


class SlowModel(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, vocab_size: int, rngs: nnx.Rngs):
        dtype = compute_dtype(cfg)
        scfg = cfg.slow
        if scfg.get("pretrained", ""):  # the architecture comes from the checkpoint's config.json
            scfg = ml_collections.ConfigDict(scfg.to_dict())
            arch = pretrained_arch(scfg.pretrained, what="model.slow.pretrained", vocab_size=vocab_size)
            if len(scfg.levels) > arch["depth"]:
                raise ValueError(f"model.slow.levels asks for {len(scfg.levels)} decoder layers, but "
                                 f"model.slow.pretrained ({scfg.pretrained}) has only {arch['depth']}")
            for k in ("width", "num_heads", "mlp_dim", "max_len", "ln_eps", "type_vocab_size"):
                scfg[k] = arch[k]
            vocab_size = arch["vocab_size"]
        bad = [lv for lv in scfg.levels if lv not in LEVELS]
        if bad or not scfg.levels:
            raise ValueError(f"model.slow.levels must list one of {LEVELS} per decoder layer, got {tuple(scfg.levels)}")
        self.levels = tuple(scfg.levels)
        self.width = scfg.width
        self.token_dropout = float(scfg.get("token_dropout", 0.0))
        if not 0.0 <= self.token_dropout < 1.0:
            raise ValueError(f"model.slow.token_dropout must be in [0, 1), got {self.token_dropout}")
        self.vision_locked = bool(cfg.get("freeze_vision", False))  # a locked backbone keeps its BatchNorm stats
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
        self.pretrained = bool(scfg.get("pretrained", ""))
        vocab = scfg.get("output_vocab", "")
        if vocab not in OUTPUT_VOCABS:
            raise ValueError(f"model.slow.output_vocab must be one of {OUTPUT_VOCABS}, got {vocab!r}")
        if self.pretrained:  # the checkpoint's embeddings (word + position + LayerNorm), shared by both directions
            self.token_embed = Embeddings(vocab_size, scfg.width, scfg.max_len, dropout=scfg.dropout, dtype=dtype,
                                          type_vocab_size=scfg.get("type_vocab_size", 2),
                                          ln_eps=scfg.get("ln_eps", 1e-12), rngs=rngs)
            self.embed_norm = None
        else:
            self.token_embed = nnx.Embed(vocab_size, scfg.width,
                                         embedding_init=nnx.with_partitioning(init, ("vocab", "embed")),
                                         dtype=dtype, rngs=rngs)
            self.embed_norm = layers.layer_norm(scfg.width, rngs=rngs, dtype=dtype)
        if vocab == "train+query" and not self.pretrained:
            raise ValueError("model.slow.output_vocab='train+query' needs output embeddings for every id, which only the "
                             "tied output of a pretrained decoder has: set model.slow.pretrained (e.g. minilm)")
        if vocab == "train" and self.pretrained:
            raise ValueError("model.slow.output_vocab='train' collapses unseen ids into one class; a pretrained "
                             "decoder's tied output scores them with their own embeddings: use 'train+query' or ''")
        ids = tuple(scfg.get("output_ids", ()) or ())
        if ids and not vocab:  # output_ids listed without output_vocab: the compact vocabulary, as before
            vocab = "train"
            if self.pretrained:
                vocab = "train+query"
        if vocab and not ids:
            raise ValueError(f"model.slow.output_vocab={vocab!r} needs model.slow.output_ids, which "
                             f"`fastslow train` fills in from the training split before building the model")
        table, num_outputs = output_classes(ids if vocab else (), vocab_size)  # validates the ids
        # train: id -> output class (classes >= num_classes are padding); train+query: the class ids, and
        # whether each id is one of them
        self.output_index = OutputIndex(jnp.asarray(table)) if vocab == "train" else None
        self.class_ids = OutputIndex(jnp.asarray(np.asarray(ids, np.int32))) if vocab == "train+query" else None
        self.in_classes = OutputIndex(jnp.asarray(table < len(ids))) if vocab == "train+query" else None
        self.num_classes = {"train": len(ids) + 1, "train+query": len(ids)}.get(vocab, vocab_size)
        if self.pretrained:
            self.output = TiedOutput(scfg.width, vocab_size, ln_eps=scfg.get("ln_eps", 1e-12), dtype=dtype, rngs=rngs)
        else:
            self.output = layers.dense(scfg.width, num_outputs, ("embed", "vocab"), rngs=rngs, dtype=dtype)
        remat = bool(cfg.get("remat", False))
        kw = dict(own_positions=not self.pretrained, cross_gate=self.pretrained, dtype=dtype, remat=remat, rngs=rngs)
        self.fwd = CaptionDecoder(scfg, **kw)
        self.bwd = CaptionDecoder(scfg, **kw)
        self.pad_id = 0

    # ----------------------------------------------------------------------------- visual side
    def visual_tokens(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """uint8 [B, H, W, 3] (or clips [B, T, H, W, 3]) -> {level: [B, tokens, width]}."""
        frames, lead = layers.fold_time(images)
        pyramid = self.fpn(self.vision(frames, train=train and not self.vision_locked))
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
    def hidden_states(self, dec: CaptionDecoder, inputs: jax.Array, kv, *, deterministic: bool = True,
                      rngs: nnx.Rngs | None = None) -> jax.Array:
        """The last decoder layer's states [..., T, width] for input tokens [..., T] (causal, padding masked)."""
        length = inputs.shape[-1]
        keep = None
        if not deterministic and rngs is not None and self.token_dropout > 0:
            # each input token after the first is hidden with probability token_dropout: its word embedding is
            # zeroed (its position stays), so the decoder must read the image rather than the caption's prefix
            keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.token_dropout, inputs.shape)
            keep = keep | (jnp.arange(length) == 0)
        if self.pretrained:
            x = self.token_embed(inputs, deterministic=deterministic, rngs=rngs, keep=keep)
        else:
            words = self.token_embed(inputs)
            if keep is not None:
                words = jnp.where(keep[..., None], words, 0.0).astype(words.dtype)
            x = self.embed_norm(words + dec.position(jnp.arange(length)))
        causal = jnp.tril(jnp.ones((length, length), bool))
        mask = causal & (inputs != self.pad_id)[..., None, None, :]
        for layer, layer_kv in zip(dec.layers, kv):
            x = layer(x, mask=mask, memory_kv=layer_kv, deterministic=deterministic, rngs=rngs)
        return x

    def _decode(self, dec: CaptionDecoder, tokens: jax.Array, kv, *, deterministic: bool,
                rngs: nnx.Rngs | None) -> jax.Array:
        """Teacher-forced per-token log-probabilities of tokens[..., 1:] given tokens[..., :-1]."""
        inputs, targets = tokens[..., :-1], tokens[..., 1:]
        valid = targets != self.pad_id
        x = self.hidden_states(dec, inputs, kv, deterministic=deterministic, rngs=rngs)
        if self.pretrained:
            tok_logp = self._tied_log_probs(self.output(x), tokens, targets)
        else:
            logits = self.output(x).astype(jnp.float32)
            if self.output_index is not None:  # compact output: ids -> classes; padded classes get no mass
                targets = self.output_index[...][targets]
                if logits.shape[-1] > self.num_classes:
                    logits = jnp.where(jnp.arange(logits.shape[-1]) < self.num_classes, logits, -jnp.inf)
            logp = jax.nn.log_softmax(logits, axis=-1)
            tok_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.where(valid, tok_logp, 0.0)

    def _tied_log_probs(self, z: jax.Array, tokens: jax.Array, targets: jax.Array) -> jax.Array:
        """log p(target) under the tied output: logits ``z . E[c] + b[c]`` over every id (``output_vocab=""``) or
        over the training ids plus this caption's own ids not among them (``train+query``)."""
        emb = self.token_embed.word.embedding[...]
        bias = self.output.bias[...]
        z = z.astype(jnp.float32)
        target_logit = jnp.einsum("...td,...td->...t", z, emb[targets].astype(jnp.float32)) + bias[targets]
        if self.class_ids is None:  # every id
            log_z = jax.nn.logsumexp(z @ emb.T.astype(jnp.float32) + bias, axis=-1)
            return target_logit - log_z
        cls = self.class_ids[...]
        class_logits = z @ emb[cls].T.astype(jnp.float32) + bias[cls]  # [..., T, C]
        # the caption's own ids outside the class list, each once: [..., L]
        own = tokens
        first = ~jnp.tril(own[..., :, None] == own[..., None, :], k=-1).any(-1)
        extra = (own != self.pad_id) & ~self.in_classes[...][own] & first
        own_logits = jnp.einsum("...td,...ld->...tl", z, emb[own].astype(jnp.float32)) + bias[own][..., None, :]
        own_logits = jnp.where(extra[..., None, :], own_logits, -jnp.inf)
        log_z = jnp.logaddexp(jax.nn.logsumexp(class_logits, axis=-1), jax.nn.logsumexp(own_logits, axis=-1))
        return target_logit - log_z

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

