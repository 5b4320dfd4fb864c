"""Task ``fast``: the dual encoder trained with a (symmetric) InfoNCE loss over in-batch negatives.

* ``loss.multi_positive``: pairs whose captions are the same text, or that show the same image, are
  positives of each other, never negatives (the targets spread evenly over a row's positives).
* ``model.freeze_vision`` / ``model.freeze_text`` lock a tower (LiT): the optimizer skips it. A locked
  image tower also keeps its BatchNorm statistics, and its pooled features are computed once per training
  image (``LockedTowerFeatures``, cached under the data directory, keyed by the tower's weights and the
  data) and fed to the step instead of the images, so such a run costs about as much as its text side;
  a locked text tower's pooled states are cached per training caption the same way.
* ``optim.lr_mult``: per-tower learning-rate factors (see ``train.optim``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from fastslow_jax.data import pipeline
from fastslow_jax.models.fast import FastModel
from fastslow_jax.retrieval.evaluate import FastScorer

log = logging.getLogger(__name__)


def positive_mask(tokens: jax.Array, image_index: jax.Array | None = None) -> jax.Array:
    """[B, B] bool: caption i and image j are a positive pair when i == j, when caption i and caption j are
    the same token sequence, or (``image_index`` given) when rows i and j hold the same image."""
    b = tokens.shape[0]
    pos = (tokens[:, None, :] == tokens[None, :, :]).all(-1) | jnp.eye(b, dtype=bool)
    if image_index is not None:
        pos = pos | (image_index[:, None] == image_index[None, :])
    return pos


def infonce(text_emb: jax.Array, image_emb: jax.Array, scale: jax.Array, direction: str = "both",
            positives: jax.Array | None = None):
    """InfoNCE with in-batch negatives; row i of each input is a positive pair.

    ``direction``: ``t2i`` (each caption picks its image among the batch's images), ``i2t``, or
    ``both`` (the mean of the two). ``positives`` [B_text, B_image] bool (e.g. ``positive_mask``): every
    positive of a row shares its target mass evenly, and none is a negative; None = the diagonal only.
    Returns (loss, logits [B_text, B_image]).
    """
    logits = scale * (text_emb @ image_emb.T)
    if positives is None:
        labels = jnp.arange(logits.shape[0])
        t2i = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        i2t = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    else:
        pos = positives.astype(jnp.float32)
        t2i = optax.softmax_cross_entropy(logits, pos / pos.sum(1, keepdims=True)).mean()
        i2t = optax.softmax_cross_entropy(logits.T, pos.T / pos.T.sum(1, keepdims=True)).mean()
    if direction == "t2i":
        return t2i, logits
    if direction == "i2t":
        return i2t, logits
    if direction == "both":
        return 0.5 * (t2i + i2t), logits
    raise ValueError(f"unknown loss.direction {direction!r}; choose t2i, i2t or both")


def batch_positives(batch: dict, config: ml_collections.ConfigDict) -> jax.Array | None:
    """The positive mask of a training batch under ``loss.multi_positive`` (None: the diagonal only)."""
    if not config.loss.get("multi_positive", False):
        return None
    return positive_mask(batch["tokens"], batch.get("image_index"))


def in_batch_accuracy(logits: jax.Array, positives: jax.Array | None = None) -> jax.Array:
    """Fraction of captions whose top-scored image is a positive (the diagonal when ``positives`` is None)."""
    best = jnp.argmax(logits, axis=1)
    if positives is None:
        return (best == jnp.arange(logits.shape[0])).mean()
    return jnp.take_along_axis(positives, best[:, None], axis=1)[:, 0].mean()


def frozen_filter(config: ml_collections.ConfigDict, prefix: str = ""):
    """The nnx filter of the trainable variables under ``model.freeze_vision`` / ``model.freeze_text``
    (``prefix``: the Fast model's attribute inside a larger model, e.g. ``student``)."""
    parts = [nnx.Param] + ([nnx.PathContains(prefix)] if prefix else [])
    for key, sub in (("freeze_vision", "vision"), ("freeze_text", "text")):
        if config.model.get(key, False):
            parts.append(nnx.Not(nnx.PathContains(sub)))
    return nnx.All(*parts) if len(parts) > 1 else nnx.Param


class LockedTowerFeatures:
    """Data extras for locked towers: the pooled backbone features of every training image
    (``model.freeze_vision``; ``image_features`` then replaces ``image``, which is not even decoded) and the
    pooled text states of every training caption (``model.freeze_text``; ``text_features``).

    Computed once with the towers' weights and cached as ``<data_dir>/_features/<dataset>-<split>-<what>-<key>.npy``,
    where ``key`` hashes the tower's variables, its config, the image options / tokenizer and the split's
    identity, so a changed tower, resolution, tokenizer or dataset never reuses another's features."""

    def __init__(self, run, state, tower: str | None = None, progress: bool = True):
        config = run.config
        self.replaces_image = bool(config.model.get("freeze_vision", False))
        split = pipeline.EvalSplit(config.data, config.data.train_split)
        model = run.model(state)
        fast = getattr(model, tower) if tower else model
        scorer = FastScorer(run, tower)
        data_dir = os.path.expanduser(config.data.get("data_dir") or pipeline.DEFAULT_DATA_DIR)
        self._stem = os.path.join(data_dir, "_features", f"{config.data.name.replace('/', '_')}-{split.split}")
        ident = {"data": config.data.name, "split": split.split, "n": split.num_images,
                 "ids": [split.image_ids[0], split.image_ids[-1]] if split.num_images else []}
        self.image = self.text = None
        if self.replaces_image:
            pool = {} if (fast.pool_levels, fast.pool_sizes) == (("C5",), ()) else {  # the classic pool: no key
                "pool": [list(fast.pool_levels), list(fast.pool_sizes)]}
            key = _fingerprint(dict(ident, image=pipeline.image_options(config.data),
                                    vision=config.model.vision.to_dict(), **pool), fast.vision)
            self.image = self._cached("image", key, split.num_images,
                                      lambda: scorer.embed_images(state, split, features=True, progress=progress))
        if config.model.get("freeze_text", False):
            pool = {"pool": list(fast.text_pool_layers)} if fast.text_pool_layers else {}  # default: no key
            key = _fingerprint(dict(ident, captions=len(split.captions), tokenizer=config.data.tokenizer,
                                    max_len=config.data.max_len, text=config.model.text.to_dict(), **pool), fast.text)
            def text_features():  # each distinct caption once (labels and keywords repeat across images)
                unique, inverse = np.unique(np.asarray(split.captions, dtype=object).astype(str), return_inverse=True)
                return scorer.embed_texts(state, list(unique), features=True)[inverse]

            self.text = self._cached("text", key, len(split.captions), text_features)
            counts = np.bincount(split.caption_to_image, minlength=split.num_images)
            self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def _cached(self, what: str, key: str, rows: int, compute) -> np.ndarray:
        path = f"{self._stem}-{what}-{key}.npy"
        if os.path.exists(path):
            feats = np.load(path, mmap_mode="r")
            log.info("locked %s tower: %d cached feature rows from %s", what, len(feats), path)
        else:
            feats = np.asarray(compute(), np.float32)
            if jax.process_index() == 0:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp.npy"
                np.save(tmp, feats)
                os.replace(tmp, path)
                log.info("locked %s tower: %d feature rows cached in %s", what, len(feats), path)
        if len(feats) != rows:
            raise ValueError(f"{path} holds {len(feats)} feature rows where the split has {rows}; delete it to "
                             f"recompute")
        return feats

    def __call__(self, index: int, caption: int) -> dict:
        out = {}
        if self.image is not None:
            out["image_features"] = np.asarray(self.image[index])
        if self.text is not None:
            out["text_features"] = np.asarray(self.text[self.offsets[index] + caption])
        return out


def _fingerprint(ident: dict, module: nnx.Module) -> str:
    """A short hash of ``ident`` and every variable of ``module`` (names and values)."""
    h = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode())
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(nnx.state(module)), key=lambda x: str(x[0])):
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def text_embeddings(model: FastModel, batch: dict, rngs: nnx.Rngs) -> jax.Array:
    """g(y) of a training batch: from its tokens, or from a locked text tower's cached ``text_features``."""
    if "text_features" in batch:
        return model.embed_text_features(batch["text_features"])
    return model.encode_text(batch["tokens"], train=True, rngs=rngs)


def image_embeddings(model: FastModel, batch: dict, rngs: nnx.Rngs | None = None) -> jax.Array:
    """f(x) of a training batch: from its images, or from a locked tower's cached ``image_features``."""
    if "image_features" in batch:
        return model.embed_image_features(batch["image_features"], train=True, rngs=rngs)
    return model.encode_image(batch["image"], train=True, rngs=rngs)


class FastTask:
    name = "fast"

    def trainable(self, config: ml_collections.ConfigDict):
        """The nnx filter of the variables the optimizer updates (a locked tower's are left out)."""
        return frozen_filter(config)

    def build_model(self, config: ml_collections.ConfigDict, vocab_size: int, rngs: nnx.Rngs) -> FastModel:
        return FastModel(config.model, vocab_size=vocab_size, rngs=rngs)

    def initialize(self, run, state):
        """Start the towers from ``model.vision.pretrained`` / ``model.text.pretrained`` (checkpoint paths,
        or the names of weights shipped in pip packages: ``minilm``, ``efficientnet-lite0``..2)."""
        from fastslow_jax.models import weights

        cfg = run.config.model
        if not (cfg.vision.get("pretrained") or cfg.text.get("pretrained")):
            return state
        model = run.model(state)
        for line in weights.load_pretrained(model, cfg):
            print(f"[fastslow] {line}")
        return run.with_model(state, model)

    def data_extras(self, run, workdir: str, state):
        """Locked towers' cached features (``model.freeze_vision`` / ``model.freeze_text``), or nothing."""
        if not (run.config.model.get("freeze_vision", False) or run.config.model.get("freeze_text", False)):
            return None
        return LockedTowerFeatures(run, state)

    def loss_fn(self, model: FastModel, batch: dict, rng: jax.Array, config: ml_collections.ConfigDict):
        rngs = nnx.Rngs(dropout=rng)
        img = image_embeddings(model, batch, rngs)
        txt = text_embeddings(model, batch, rngs)
        scale = model.scale()
        pos = batch_positives(batch, config)
        loss, logits = infonce(txt, img, scale, config.loss.direction, pos)
        return loss, {"loss": loss, "temperature": 1.0 / scale, "batch_t2i_acc": in_batch_accuracy(logits, pos)}
