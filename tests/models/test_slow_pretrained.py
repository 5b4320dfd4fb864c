"""The Slow decoder started from the packaged MiniLM (model.slow.pretrained) and its tied output."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fastslow_jax.data.tokenizer import Tokenizer
from fastslow_jax.models import layers, weights
from fastslow_jax.models.slow import SlowModel
from fastslow_jax.models.text import TextEncoder, tower_config
from tests.conftest import tiny_config

weights.resolve("minilm")  # the packaged weights (launch/test.sh installs them); fails clearly if absent

TOKENIZER = Tokenizer("minilm", max_len=12)
IMAGES = jax.random.randint(jax.random.key(0), (2, 64, 64, 3), 0, 256).astype(jnp.uint8)


def _model(output_vocab="", output_ids=(), levels=("P5", "P4")):
    cfg = tiny_config("shapes_slow.py", overrides=[f"model.slow.levels={','.join(levels)}",
                                                   "model.slow.pretrained=minilm",
                                                   f"model.slow.output_vocab={output_vocab}"])
    cfg.model.slow.output_ids = tuple(output_ids)
    model = SlowModel(cfg.model, vocab_size=TOKENIZER.vocab_size, rngs=nnx.Rngs(0))
    weights.load_slow_decoder(model, "minilm")
    return model


def _minilm() -> TextEncoder:
    cfg = tiny_config("shapes_fast.py", overrides=["model.text.pretrained=minilm"]).model.text
    arch, vocab = tower_config(cfg, TOKENIZER.vocab_size)
    enc = TextEncoder(arch, vocab_size=vocab, rngs=nnx.Rngs(1))
    weights.load_text(enc, "bert", "minilm")
    return enc


def test_step0_decoder_is_the_pretrained_encoder_run_causally():
    model = _model(levels=("P5", "P4"))
    tokens = jnp.asarray(TOKENIZER(["a guide dog on a leash", "red apple"]))
    inputs = tokens[:, :-1]
    kv = model.visual_cache(IMAGES)
    enc = _minilm()
    length = inputs.shape[-1]
    mask = jnp.tril(jnp.ones((length, length), bool)) & (inputs != 0)[:, None, None, :]
    want = enc.embeddings(inputs)
    for layer in enc.layers[:2]:
        want = layer(want, mask=mask)
    for name in ("fwd", "bwd"):
        got = model.hidden_states(getattr(model, name), inputs, kv[name])
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
    # the images do change the decoder once a gate opens
    model.fwd.layers[0].cross_gate.set_value(jnp.asarray(0.5))
    moved = model.hidden_states(model.fwd, inputs, kv["fwd"])
    assert float(jnp.abs(moved - want).max()) > 1e-2


def _reference_log_probs(model, tokens, image_index=0):
    """Per-token log p of the forward direction, by hand: logits over the class ids + the caption's own."""
    kv = jax.tree.map(lambda x: x[image_index:image_index + 1], model.visual_cache(IMAGES))["fwd"]
    z = np.asarray(model.output(model.hidden_states(model.fwd, tokens[None, :-1], kv)))[0]
    emb = np.asarray(model.token_embed.word.embedding[...])
    bias = np.asarray(model.output.bias[...])
    ids = np.asarray(tokens)
    classes = sorted(set(np.asarray(model.class_ids[...]).tolist()) | set(ids[ids != 0].tolist()))
    out = []
    for t, target in enumerate(ids[1:]):
        if target == 0:
            out.append(0.0)
            continue
        logits = emb[classes] @ z[t] + bias[classes]
        out.append(float(emb[target] @ z[t] + bias[target] - np.log(np.exp(logits - logits.max()).sum())
                         - logits.max()))
    return np.asarray(out)


def test_unseen_word_piece_is_scored_with_its_own_embedding():
    seen = TOKENIZER(["a dog on a red leash", "an apple"])
    output_ids = tuple(int(i) for i in np.unique(seen) if i)
    model = _model("train+query", output_ids)
    tokens = jnp.asarray(TOKENIZER(["a guide dog"])[0])  # "guide" is in no training caption
    guide = int(tokens[2])
    assert guide not in output_ids and int(tokens[3]) in output_ids
    got = np.asarray(model._decode(model.fwd, tokens[None], jax.tree.map(lambda x: x[:1], model.visual_cache(IMAGES))
                                   ["fwd"], deterministic=True, rngs=None))[0]
    np.testing.assert_allclose(got, _reference_log_probs(model, tokens), atol=1e-4)
    # the unseen id's own embedding decides its score: change that row only (a random direction: LayerNorm
    # outputs sum to 0, so a constant shift would not move any logit)
    emb = model.token_embed.word.embedding
    emb.set_value(jnp.asarray(emb[...]).at[guide].add(jax.random.normal(jax.random.key(3), (emb.shape[-1],))))
    moved = np.asarray(model._decode(model.fwd, tokens[None], jax.tree.map(lambda x: x[:1], model.visual_cache(IMAGES))
                                     ["fwd"], deterministic=True, rngs=None))[0]
    assert abs(moved[1] - got[1]) > 1e-3  # "guide" is the target at position 1


def test_train_plus_query_classes_are_one_normalised_distribution():
    seen = TOKENIZER(["a dog on a red leash"])
    output_ids = tuple(int(i) for i in np.unique(seen) if i)
    model = _model("train+query", output_ids)
    tokens = jnp.asarray(TOKENIZER(["guide dog guide"]))  # an unseen id that occurs twice counts once
    kv = jax.tree.map(lambda x: x[:1], model.visual_cache(IMAGES))["fwd"]
    z = model.output(model.hidden_states(model.fwd, tokens[:, :-1], kv))
    ids = np.asarray(tokens[0])
    classes = sorted(set(output_ids) | set(ids[ids != 0].tolist()))
    assert len(classes) == len(output_ids) + 1
    # log p(c) at every position for every class c of the query's fixed class set: the probabilities sum to 1
    logp = np.stack([np.asarray(model._tied_log_probs(z, tokens, jnp.full(tokens[:, 1:].shape, c)))[0]
                     for c in classes])
    np.testing.assert_allclose(np.exp(logp).sum(0), 1.0, rtol=1e-5)
    # and an id outside it (neither a training id nor the query's) would get extra mass: it is not a class
    outside = next(i for i in range(1000, 30000) if i not in classes)
    extra = np.asarray(model._tied_log_probs(z, tokens, jnp.full(tokens[:, 1:].shape, outside)))[0]
    assert np.all(np.exp(logp).sum(0) + np.exp(extra) > 1.0 + 1e-7)


def test_train_plus_query_needs_a_pretrained_tied_decoder():
    cfg = tiny_config("shapes_slow.py", overrides=["model.slow.output_vocab=train+query"])
    cfg.model.slow.output_ids = (2, 3)
    with pytest.raises(ValueError, match="tied output of a pretrained decoder"):
        SlowModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))
