"""Task ``slow``: the bidirectional captioning loss (teacher forcing, padding masked).

loss = mean over real target tokens of -log p_fwd, plus the same for the right-to-left decoder,
halved: the two directions are weighted equally.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fastslow_jax.models.slow import SlowModel


def captioning_loss(fwd_logp: jax.Array, bwd_logp: jax.Array, tokens: jax.Array):
    """(loss, metrics) from per-token log-probs [B, L-1] of both directions; tokens [B, L] give the mask."""
    n = jnp.maximum((tokens[:, 1:] != 0).sum(), 1)
    nll_fwd = -fwd_logp.sum() / n
    nll_bwd = -bwd_logp.sum() / n  # both directions have the same number of targets
    loss = 0.5 * (nll_fwd + nll_bwd)
    return loss, {"loss": loss, "nll_fwd": nll_fwd, "nll_bwd": nll_bwd}


class SlowTask:
    name = "slow"

    def trainable(self, config: ml_collections.ConfigDict):
        """All parameters, or all but the vision backbone when ``model.freeze_vision`` (e.g. a backbone
        initialised from a trained Fast run with ``model.vision_init``)."""
        if config.model.get("freeze_vision"):
            return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("vision")))
        return nnx.Param

    def prepare_config(self, config: ml_collections.ConfigDict) -> None:
        """Resolve ``model.slow.output_vocab="train"``: fill ``model.slow.output_ids`` with the token ids of
        the training captions (deterministic, so a resumed run gets the same list). The list is saved in
        the run's config.json, so the model can be rebuilt, and its checkpoints read, without the data."""
        from fastslow_jax.data import pipeline

        scfg = config.model.slow
        if scfg.get("output_vocab", "") not in ("train", "train+query") or scfg.get("output_ids"):
            return
        tokenizer = pipeline.make_tokenizer(config.data)
        ids = pipeline.caption_token_ids(config.data, config.data.train_split, tokenizer)
        scfg.output_ids = ids
        rest = "+ 1 'other' class" if scfg.output_vocab == "train" else "(+ each query's own ids when scoring)"
        print(f"[fastslow] Slow output vocabulary: the {len(ids)} token ids of the {config.data.train_split} "
              f"captions {rest} (the tokenizer has {tokenizer.vocab_size})")

    def build_model(self, config: ml_collections.ConfigDict, vocab_size: int, rngs: nnx.Rngs) -> SlowModel:
        return SlowModel(config.model, vocab_size=vocab_size, rngs=rngs)

    def initialize(self, run, state):
        """Start the vision backbone from a trained run's (``model.vision_init``: a workdir), e.g. the
        Fast model's image tower, as the paper starts from an ImageNet backbone."""
        from fastslow_jax.models import weights

        init = run.config.model.get("vision_init")
        pretrained = run.config.model.vision.get("pretrained")
        decoder = run.config.model.slow.get("pretrained", "")
        if not init and not pretrained and not decoder:
            return state
        model = run.model(state)
        if decoder:
            print(f"[fastslow] caption decoder <- {weights.load_slow_decoder(model, decoder)}")
        if init:
            run.load_submodule(model.vision, init, "vision", what="model.vision_init")
        elif pretrained:  # an ImageNet (or other) checkpoint: model.vision.pretrained
            path = weights.load_vision(model.vision, run.config.model.vision.name, pretrained)
            print(f"[fastslow] vision <- {path}")
        return run.with_model(state, model)

    def loss_fn(self, model: SlowModel, batch: dict, rng: jax.Array, config: ml_collections.ConfigDict):
        cache = model.visual_cache(batch["image"], train=True)
        fwd, bwd = model.token_log_probs(batch["tokens"], cache, train=True, rngs=nnx.Rngs(dropout=rng))
        return captioning_loss(fwd, bwd, batch["tokens"])
