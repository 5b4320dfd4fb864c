"""Task ``fast``: the dual encoder trained with a (symmetric) InfoNCE loss over in-batch negatives."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from fastslow_jax.models.fast import FastModel


def infonce(text_emb: jax.Array, image_emb: jax.Array, scale: jax.Array, direction: str = "both"):
    """InfoNCE with in-batch negatives; row i of each input is a positive pair.

    ``direction``: ``t2i`` (each caption picks its image among the batch's images), ``i2t``, or
    ``both`` (the mean of the two). Returns (loss, logits [B_text, B_image]).
    """
    logits = scale * (text_emb @ image_emb.T)
    labels = jnp.arange(logits.shape[0])
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    if direction == "t2i":
        return t2i, logits
    if direction == "i2t":
        return i2t, logits
    if direction == "both":
        return 0.5 * (t2i + i2t), logits
    raise ValueError(f"unknown loss.direction {direction!r}; choose t2i, i2t or both")


def in_batch_accuracy(logits: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, axis=1) == jnp.arange(logits.shape[0])).mean()


class FastTask:
    name = "fast"

    def trainable(self, config: ml_collections.ConfigDict):
        """The nnx filter of the variables the optimizer updates."""
        return nnx.Param

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

    def loss_fn(self, model: FastModel, batch: dict, rng: jax.Array, config: ml_collections.ConfigDict):
        rngs = nnx.Rngs(dropout=rng)
        img = model.encode_image(batch["image"], train=True)
        txt = model.encode_text(batch["tokens"], train=True, rngs=rngs)
        scale = model.scale()
        loss, logits = infonce(txt, img, scale, config.loss.direction)
        return loss, {"loss": loss, "temperature": 1.0 / scale, "batch_t2i_acc": in_batch_accuracy(logits)}
