import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fastslow_jax.models.slow import FPN, SlowModel, output_classes, position_embedding_2d, reverse_tokens
from tests.conftest import tiny_config

OUTPUT_IDS = (2, 3, 40, 41, 42, 43, 44, 50, 60)  # a compact output vocabulary (tokens 45..47, 70, 99: 'other')


def _model(levels=("P5", "P4", "P3"), output_ids=()):
    cfg = tiny_config("shapes_slow.py", overrides=[f"model.slow.levels={','.join(levels)}"])
    cfg.model.slow.output_ids = tuple(output_ids)
    return SlowModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))


IMAGES = jax.random.randint(jax.random.key(0), (3, 64, 64, 3), 0, 256).astype(jnp.uint8)
TOKENS = jnp.asarray([[2, 40, 50, 60, 70, 3, 0, 0], [2, 41, 3, 0, 0, 0, 0, 0], [2, 42, 43, 44, 45, 46, 47, 3]])


def test_reverse_tokens_keeps_padding_in_place():
    np.testing.assert_array_equal(reverse_tokens(jnp.asarray([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0]])),
                                  [[3, 6, 5, 2, 0, 0], [3, 7, 2, 0, 0, 0]])


def _one_position_at_a_time(model, dec, tokens, cache):
    """Sum of log p(token_{t+1} | tokens_{<=t}) with the decoder run on each prefix separately."""
    total = np.zeros(tokens.shape[0])
    n = np.asarray((tokens != 0).sum(1))
    for t in range(1, tokens.shape[1]):
        logp = model._decode(dec, tokens[:, : t + 1], cache, deterministic=True, rngs=None)[:, -1]
        total += np.where(t < n, np.asarray(logp), 0.0)
    return total


@pytest.mark.parametrize("output_ids", [(), OUTPUT_IDS], ids=["full_vocab", "compact_vocab"])
def test_score_is_the_sum_of_per_token_log_probs_computed_one_position_at_a_time(output_ids):
    model = _model(output_ids=output_ids)
    cache = model.visual_cache(IMAGES)
    want = (_one_position_at_a_time(model, model.fwd, TOKENS, cache["fwd"])
            + _one_position_at_a_time(model, model.bwd, reverse_tokens(TOKENS), cache["bwd"]))
    np.testing.assert_allclose(model.score(IMAGES, TOKENS), want, rtol=1e-5, atol=1e-4)
    assert np.all(want < 0)


def test_per_token_log_probs_are_normalised_and_padding_is_masked():
    model = _model()
    fwd, bwd = model.token_log_probs(TOKENS, model.visual_cache(IMAGES))
    assert fwd.shape == bwd.shape == (3, 7)
    targets = np.asarray(TOKENS[:, 1:]) != 0
    assert np.all(np.asarray(fwd)[~targets] == 0) and np.all(np.asarray(fwd)[targets] < 0)
    assert (np.asarray(bwd) < 0).sum() == targets.sum()  # both directions predict the same number of tokens


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_next_token_probabilities_sum_to_one_over_the_whole_vocabulary(direction):
    """After a fixed prefix, exp(log p) summed over every id of the 131-id vocabulary is 1 (each image).

    A target equal to ``pad_id`` is masked to 0, so id 0's probability is read in a second pass with
    ``pad_id`` moved to id 130; the prefix holds neither id, so both passes decode the same inputs."""
    model = _model()
    dec = getattr(model, direction)
    cache = model.visual_cache(IMAGES)[direction]
    vocab = 131
    prefix = [2, 40, 41]
    tokens = jnp.asarray([prefix + [t] for t in range(vocab)])  # [V, 4]: every possible next token

    def last_logp(image):
        kv = jax.tree.map(lambda x: x[image:image + 1], cache)
        return np.asarray(model._decode(dec, tokens, kv, deterministic=True, rngs=None))[:, -1]

    for image in range(IMAGES.shape[0]):
        logp = last_logp(image)  # ids 1..130 (id 0 = padding: masked to 0)
        model.pad_id = vocab - 1
        try:
            logp_pad = last_logp(image)  # id 0 now a real target; id 130 masked
        finally:
            model.pad_id = 0
        np.testing.assert_allclose(logp[1:-1], logp_pad[1:-1], rtol=1e-6, atol=1e-6)  # same inputs either way
        probs = np.concatenate([np.exp(logp_pad[:1]), np.exp(logp[1:])])
        assert np.all(probs > 0) and np.all(probs < 1)
        np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)


def test_future_tokens_do_not_change_earlier_predictions():
    model = _model()
    cache = model.visual_cache(IMAGES)
    changed = TOKENS.at[2, 6].set(99)
    a = model._decode(model.fwd, TOKENS, cache["fwd"], deterministic=True, rngs=None)
    b = model._decode(model.fwd, changed, cache["fwd"], deterministic=True, rngs=None)
    np.testing.assert_allclose(a[2, :5], b[2, :5], atol=1e-6)  # targets before position 6
    assert not np.allclose(a[2, 5:], b[2, 5:])


def test_all_pairs_scoring_with_cache_matches_pairwise_scoring():
    model = _model()
    cache = model.visual_cache(IMAGES)
    grid = np.asarray(model.score_with_cache(TOKENS[:, None], cache))  # [captions, images]
    for i in range(3):
        for j in range(3):
            one = model.score(IMAGES[j:j + 1], TOKENS[i:i + 1])
            np.testing.assert_allclose(grid[i, j], one[0], rtol=1e-5, atol=1e-4)
    # candidates gathered per query ([Q, K] leading dims) give the same numbers
    cand = jnp.asarray([[2, 0], [1, 1], [0, 2]])
    gathered = np.asarray(model.score_with_cache(TOKENS[:, None], jax.tree.map(lambda x: x[cand], cache)))
    np.testing.assert_allclose(gathered, np.take_along_axis(grid, np.asarray(cand), 1), rtol=1e-5, atol=1e-4)


def test_level_schedule_decides_the_visual_tokens_each_layer_attends():
    fine, last = _model(("P5", "P4", "P3")), _model(("P5", "P5", "P5"))
    fine_kv = fine.visual_cache(IMAGES)["fwd"]
    last_kv = last.visual_cache(IMAGES)["fwd"]
    assert [k.shape[1] for k, _ in fine_kv] == [4, 16, 64]  # 2x2, 4x4, 8x8 maps of a 64 px image
    assert [k.shape[1] for k, _ in last_kv] == [4, 4, 4]
    with pytest.raises(ValueError, match="model.slow.levels"):
        _model(("P6",))


def test_fpn_upsamples_and_adds():
    fpn = FPN({"C3": 4, "C4": 4, "C5": 4}, 4, rngs=nnx.Rngs(0))
    feats = {"C3": jnp.zeros((1, 8, 8, 4)), "C4": jnp.zeros((1, 4, 4, 4)), "C5": jnp.ones((1, 2, 2, 4))}
    out = fpn(feats)
    assert {k: v.shape for k, v in out.items()} == {"P3": (1, 8, 8, 4), "P4": (1, 4, 4, 4), "P5": (1, 2, 2, 4)}
    # with zero C3/C4, P3's pre-smoothing map is the lateral biases plus P5 broadcast over each 4x4 block
    lat5 = fpn.lateral["C5"](feats["C5"])
    pre3 = fpn.lateral["C3"](feats["C3"]) + jnp.repeat(jnp.repeat(
        fpn.lateral["C4"](feats["C4"]) + jnp.repeat(jnp.repeat(lat5, 2, 1), 2, 2), 2, 1), 2, 2)
    np.testing.assert_allclose(out["P3"], fpn.smooth["P3"](pre3), rtol=1e-6)


def test_position_embedding_distinguishes_cells():
    e = np.asarray(position_embedding_2d(4, 4, 32))
    assert e.shape == (16, 32)
    d = np.linalg.norm(e[:, None] - e[None], axis=-1)
    assert (d + np.eye(16)).min() > 0.1


def test_output_classes_map_listed_ids_in_order_and_the_rest_to_other():
    table, n = output_classes((5, 2, 9), 12)
    np.testing.assert_array_equal(table, [3, 3, 1, 3, 3, 0, 3, 3, 3, 2, 3, 3])  # class 3 = 'other'
    assert n == 128  # 4 classes, padded to a multiple of 128
    assert output_classes((), 12) == (None, 12)
    for bad in ((0, 5), (5, 5), (12,)):
        with pytest.raises(ValueError, match="output_ids"):
            output_classes(bad, 12)


def test_compact_output_vocabulary_is_a_normalised_distribution_with_one_other_class():
    """The next-token distribution after a prefix sums to 1 over the listed ids plus 'other', and every
    unlisted id gets the same log-probability: that of 'other'."""
    model = _model(output_ids=OUTPUT_IDS)
    cache = jax.tree.map(lambda x: x[:1], model.visual_cache(IMAGES))
    unlisted = [45, 70, 99]
    tokens = jnp.asarray([[2, 40, 41, t] for t in list(OUTPUT_IDS) + unlisted])  # every listed id, then 3 others
    logp = np.asarray(model._decode(model.fwd, tokens, cache["fwd"], deterministic=True, rngs=None))[:, -1]
    np.testing.assert_allclose(logp[-3:], logp[-1], rtol=1e-6)  # unlisted ids: one class
    np.testing.assert_allclose(np.exp(logp[:-2]).sum(), 1.0, rtol=1e-5)  # listed classes + 'other' once
    assert model.output.kernel.shape[-1] == 128


def test_output_vocab_train_without_resolved_ids_is_a_clear_error():
    cfg = tiny_config("shapes_slow.py", overrides=["model.slow.output_vocab=train"])
    with pytest.raises(ValueError, match="output_ids"):
        SlowModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))


def test_token_dropout_hides_input_words_in_training_only():
    model = _model()
    cache = model.visual_cache(IMAGES)["fwd"]
    inputs = TOKENS[:, :-1]
    want_eval = np.asarray(model.hidden_states(model.fwd, inputs, cache))
    model.token_dropout = 0.5
    np.testing.assert_array_equal(np.asarray(model.hidden_states(model.fwd, inputs, cache)), want_eval)
    got = np.asarray(model.hidden_states(model.fwd, inputs, cache, deterministic=False, rngs=nnx.Rngs(dropout=7)))
    # the same draw by hand: a hidden word is an id whose embedding row is zero (130 is unused by TOKENS)
    keep = np.array(jax.random.bernoulli(nnx.Rngs(dropout=7).dropout(), 0.5, inputs.shape))
    keep[:, 0] = True  # the first token (BOS) is always seen
    assert 0 < (~keep).sum() < keep.size - 3
    model.token_embed.embedding[...] = model.token_embed.embedding[...].at[130].set(0.0)
    hidden = jnp.where(jnp.asarray(keep) | (inputs == 0), inputs, 130)
    want = np.asarray(model.hidden_states(model.fwd, hidden, cache))
    valid = np.asarray(inputs) != 0
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-5)
    assert np.abs(got[valid] - want_eval[valid]).max() > 1e-2  # and it is not the eval pass
