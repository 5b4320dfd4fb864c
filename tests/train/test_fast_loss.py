import jax.numpy as jnp
import numpy as np
import pytest

from fastslow_jax.train.fast import in_batch_accuracy, infonce, positive_mask


def _reference(text, image, scale):
    """Symmetric InfoNCE written out with explicit loops."""
    logits = scale * text @ image.T
    n = len(logits)
    t2i = -np.mean([logits[i, i] - np.log(np.exp(logits[i]).sum()) for i in range(n)])
    i2t = -np.mean([logits[i, i] - np.log(np.exp(logits[:, i]).sum()) for i in range(n)])
    return t2i, i2t


def test_infonce_hand_computed_two_by_two():
    # text.image^T = [[1, 0], [0, 1]], scale 1: each direction's loss is log(1 + e^-1) ... per row:
    # -log(e^1 / (e^1 + e^0)) = log(1 + e^-1) = 0.31326
    eye = jnp.eye(2)
    loss, logits = infonce(eye, eye, jnp.asarray(1.0), "both")
    np.testing.assert_allclose(float(loss), np.log1p(np.exp(-1.0)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(logits), np.eye(2))


def test_infonce_matches_loop_reference_each_direction():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(5, 4)).astype(np.float32)
    image = rng.normal(size=(5, 4)).astype(np.float32)
    t2i, i2t = _reference(text, image, 3.0)
    for direction, want in (("t2i", t2i), ("i2t", i2t), ("both", 0.5 * (t2i + i2t))):
        got, _ = infonce(jnp.asarray(text), jnp.asarray(image), jnp.asarray(3.0), direction)
        np.testing.assert_allclose(float(got), want, rtol=1e-5)
    assert abs(t2i - i2t) > 1e-3  # the two directions really differ on this input


def test_infonce_unknown_direction():
    with pytest.raises(ValueError, match="loss.direction"):
        infonce(jnp.eye(2), jnp.eye(2), jnp.asarray(1.0), "sideways")


def test_in_batch_accuracy():
    logits = jnp.asarray([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
    assert float(in_batch_accuracy(logits)) == pytest.approx(2 / 3)


def test_positive_mask_same_text_or_same_image():
    tokens = jnp.asarray([[101, 7, 102, 0], [101, 7, 102, 0], [101, 8, 102, 0], [101, 9, 102, 0]])
    image_index = jnp.asarray([10, 11, 12, 10])  # rows 0 and 3: two captions of one image
    want = np.array([[1, 1, 0, 1],
                     [1, 1, 0, 0],
                     [0, 0, 1, 0],
                     [1, 0, 0, 1]], bool)
    np.testing.assert_array_equal(np.asarray(positive_mask(tokens, image_index)), want)
    np.testing.assert_array_equal(np.asarray(positive_mask(tokens)), want & ~np.array(
        [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], bool))


def test_multi_positive_infonce_hand_computed():
    # text [[1, 0], [1, 0], [0, 1]] (captions 0 and 1 are the same text), image [[2, 0], [1, 0], [0, 1]], scale 1:
    # logits = [[2, 1, 0], [2, 1, 0], [0, 0, 1]]; positives: {0, 1} x {0, 1} and (2, 2).
    # t2i: rows 0, 1: lse(2, 1, 0) - (2 + 1) / 2; row 2: lse(0, 0, 1) - 1
    # i2t: column 0: lse(2, 2, 0) - 2; column 1: lse(1, 1, 0) - 1; column 2: lse(0, 0, 1) - 1
    text = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    image = jnp.asarray([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pos = jnp.asarray([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
    e = np.e
    t2i = (2 * (np.log(e ** 2 + e + 1) - 1.5) + np.log(2 + e) - 1) / 3
    i2t = (np.log(2 * e ** 2 + 1) - 2 + np.log(2 * e + 1) - 1 + np.log(2 + e) - 1) / 3
    for direction, want in (("t2i", t2i), ("i2t", i2t), ("both", (t2i + i2t) / 2)):
        loss, _ = infonce(text, image, jnp.asarray(1.0), direction, pos)
        np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    single, _ = infonce(text, image, jnp.asarray(1.0), "t2i")  # caption 1's duplicate image counted as a negative
    np.testing.assert_allclose(float(single), (np.log(e ** 2 + e + 1) - 2 + np.log(e ** 2 + e + 1) - 1
                                               + np.log(2 + e) - 1) / 3, rtol=1e-6)


def test_multi_positive_with_distinct_pairs_is_plain_infonce():
    rng = np.random.default_rng(1)
    text = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    image = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    for direction in ("t2i", "i2t", "both"):
        plain, _ = infonce(text, image, jnp.asarray(2.0), direction)
        multi, _ = infonce(text, image, jnp.asarray(2.0), direction, jnp.eye(6, dtype=bool))
        np.testing.assert_allclose(float(multi), float(plain), rtol=1e-6)


def test_in_batch_accuracy_counts_any_positive():
    logits = jnp.asarray([[1.0, 3.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
    pos = jnp.asarray([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
    assert float(in_batch_accuracy(logits, pos)) == pytest.approx(2 / 3)  # row 0's best is its duplicate
