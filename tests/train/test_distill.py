import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastslow_jax.train.distill import distill_kl, zscore


def test_zscore_per_row():
    x = jnp.asarray([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]])
    z = np.asarray(zscore(x))
    np.testing.assert_allclose(z.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(z.std(1), 1, atol=1e-5)
    np.testing.assert_allclose(z[0], [-1.2247449, 0.0, 1.2247449], rtol=1e-5)


def test_kl_is_zero_when_student_matches_teacher_and_positive_otherwise():
    teacher = jnp.asarray([[-30.0, -35.0, -50.0], [-20.0, -10.0, -40.0]])
    tau_t, tau_s = 0.5, 0.1
    matching_student = zscore(teacher) / tau_t * tau_s  # same distribution after each temperature
    assert float(distill_kl(teacher, matching_student, tau_t, tau_s)) == pytest.approx(0.0, abs=1e-6)
    other = jnp.asarray([[0.1, 0.9, 0.0], [0.5, 0.2, 0.1]])
    kl = float(distill_kl(teacher, other, tau_t, tau_s))
    # hand check against numpy
    t = np.asarray(zscore(teacher)) / tau_t
    pt = np.exp(t) / np.exp(t).sum(1, keepdims=True)
    ps = np.exp(np.asarray(other) / tau_s)
    ps /= ps.sum(1, keepdims=True)
    assert kl == pytest.approx(float(np.mean((pt * np.log(pt / ps)).sum(1))), rel=1e-5)
    assert kl > 0.1


def test_kl_gradient_never_reaches_teacher_scores():
    teacher = jnp.asarray([[-30.0, -35.0, -50.0]])
    student = jnp.asarray([[0.1, 0.9, 0.0]])
    g_teacher = jax.grad(lambda t: distill_kl(t, student, 0.5, 0.1))(teacher)
    g_student = jax.grad(lambda s: distill_kl(teacher, s, 0.5, 0.1))(student)
    assert np.all(np.asarray(g_teacher) == 0)
    assert np.abs(np.asarray(g_student)).sum() > 0
