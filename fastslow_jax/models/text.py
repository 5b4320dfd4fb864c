"""A BERT-compatible transformer text encoder (word + position + token-type embeddings, post-LN layers).

The attribute names follow Hugging Face's BERT layout (embeddings / encoder layers with attention,
intermediate and output projections), so that BERT-family safetensors checkpoints can be mapped
onto it one tensor at a time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fastslow_jax.models import layers


class Embeddings(nnx.Module):
    def __init__(self, vocab_size: int, width: int, max_len: int, *, type_vocab_size: int = 2,
                 dropout: float = 0.0, ln_eps: float = 1e-12, dtype=None, rngs: nnx.Rngs):
        init = nnx.initializers.truncated_normal(stddev=0.02)
        self.word = nnx.Embed(vocab_size, width, embedding_init=nnx.with_partitioning(init, ("vocab", "embed")),
                              dtype=dtype, rngs=rngs)
        self.position = nnx.Embed(max_len, width, embedding_init=nnx.with_partitioning(init, (None, "embed")),
                                  dtype=dtype, rngs=rngs)
        self.token_type = nnx.Embed(type_vocab_size, width,
                                    embedding_init=nnx.with_partitioning(init, (None, "embed")),
                                    dtype=dtype, rngs=rngs)
        self.norm = layers.layer_norm(width, eps=ln_eps, rngs=rngs, dtype=dtype)
        self.dropout = nnx.Dropout(dropout)
        self.max_len = max_len

    def __call__(self, tokens: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None,
                 keep: jax.Array | None = None):
        """``keep`` (bool, like ``tokens``): where False, the word embedding is left out (position and type stay)."""
        length = tokens.shape[-1]
        if length > self.max_len:
            raise ValueError(f"text of {length} tokens is longer than the encoder's max_len {self.max_len}")
        positions = jnp.arange(length)
        words = self.word(tokens)
        if keep is not None:
            words = jnp.where(keep[..., None], words, 0.0).astype(words.dtype)
        x = words + self.position(positions)[None] + self.token_type(jnp.zeros_like(tokens))
        return self.dropout(self.norm(x), deterministic=deterministic, rngs=rngs)


class TextEncoder(nnx.Module):
    """[B, L] token ids (0 = padding) -> [B, L, width] contextual token states."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, vocab_size: int, dtype=None, remat: bool = False,
                 rngs: nnx.Rngs):
        self.width = cfg.width
        self.pad_id = 0
        ln_eps = cfg.get("ln_eps", 1e-12)
        self.embeddings = Embeddings(vocab_size, cfg.width, cfg.max_len, dropout=cfg.dropout, dtype=dtype,
                                     type_vocab_size=cfg.get("type_vocab_size", 2), ln_eps=ln_eps, rngs=rngs)
        self.layers = nnx.List([
            layers.TransformerLayer(cfg.width, cfg.num_heads, cfg.mlp_dim, dropout=cfg.dropout, dtype=dtype,
                                    ln_eps=ln_eps, remat=remat, rngs=rngs)
            for _ in range(cfg.depth)
        ])

    def __call__(self, tokens: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        return self.layer_states(tokens, (len(self.layers),), deterministic=deterministic, rngs=rngs)[0]

    def layer_states(self, tokens: jax.Array, which: tuple[int, ...], *, deterministic: bool = True,
                     rngs: nnx.Rngs | None = None) -> list[jax.Array]:
        """The [B, L, width] states after each layer index in ``which`` (0 = the embeddings, depth = the last
        layer); the layers above the highest one asked for are not run."""
        bad = [i for i in which if not 0 <= i <= len(self.layers)]
        if bad or not which:
            raise ValueError(f"text layer indices must be in 0..{len(self.layers)} (0 = the embeddings), "
                             f"got {list(which)}")
        mask = layers.padding_mask(tokens, self.pad_id)
        x = self.embeddings(tokens, deterministic=deterministic, rngs=rngs)
        states = {0: x}
        for i, layer in enumerate(self.layers[:max(which)], start=1):
            x = layer(x, mask=mask, deterministic=deterministic, rngs=rngs)
            states[i] = x
        return [states[i] for i in which]


TEXT_TOWERS = ("bert", "clip")


def tower_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> tuple[ml_collections.ConfigDict, int]:
    """``model.text`` with the architecture of ``model.text.pretrained`` (its config.json) filled in, and
    the embedding table size (the checkpoint's, which must cover the tokenizer's ``vocab_size``)."""
    from fastslow_jax.models import weights

    name, pretrained = cfg.get("name", "bert"), cfg.get("pretrained", "")
    if name not in TEXT_TOWERS:
        raise ValueError(f"unknown model.text.name {name!r}; choose one of {list(TEXT_TOWERS)}")
    if not pretrained:
        return cfg, vocab_size
    path = weights.resolve(pretrained, what="model.text.pretrained")
    arch = weights.bert_text_config(path) if name == "bert" else weights.clip_text_config(path)
    if vocab_size > arch["vocab_size"]:
        raise ValueError(f"the tokenizer has {vocab_size} ids but model.text.pretrained ({path}) embeds only "
                         f"{arch['vocab_size']}: set data.tokenizer to the checkpoint's vocabulary")
    out = ml_collections.ConfigDict(cfg.to_dict())
    for k, v in arch.items():
        if k != "vocab_size":
            out[k] = v
    return out, arch["vocab_size"]


def pretrained_arch(spec: str, *, what: str, vocab_size: int) -> dict:
    """The architecture fields of a BERT-family checkpoint (``spec``: a path or a packaged name such as
    ``minilm``), checked to embed every id of a tokenizer with ``vocab_size`` ids."""
    from fastslow_jax.models import weights

    path = weights.resolve(spec, what=what)
    arch = weights.bert_text_config(path)
    if vocab_size > arch["vocab_size"]:
        raise ValueError(f"the tokenizer has {vocab_size} ids but {what} ({path}) embeds only "
                         f"{arch['vocab_size']}: set data.tokenizer to the checkpoint's vocabulary")
    return arch


def build_text_tower(cfg: ml_collections.ConfigDict, *, vocab_size: int, dtype=None, remat: bool = False,
                     rngs: nnx.Rngs) -> nnx.Module:
    """``model.text.name``: ``bert`` (TextEncoder) or ``clip`` (CLIP's causal text transformer).
    ``remat`` (BERT layers only) recomputes each layer's activations in the backward pass."""
    cfg, vocab_size = tower_config(cfg, vocab_size)
    if cfg.get("name", "bert") == "clip":
        from fastslow_jax.models.clip import CLIPTextTower

        return CLIPTextTower(cfg, vocab_size=vocab_size, dtype=dtype, rngs=rngs)
    return TextEncoder(cfg, vocab_size=vocab_size, dtype=dtype, remat=remat, rngs=rngs)
