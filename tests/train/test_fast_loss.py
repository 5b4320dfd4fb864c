import jax.numpy as jnp
import numpy as np
import pytest

from fastslow_jax.train.fast import in_batch_accuracy, infonce


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
