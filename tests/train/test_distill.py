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


def _tiny_distill_model(batch_size=6):
    """A random-weight student and teacher from the tiny configs, and a real tiny batch of shapes."""
    from flax import nnx

    from tests.conftest import tiny_config
    from fastslow_jax.models.fast import FastModel
    from fastslow_jax.models.slow import SlowModel
    from fastslow_jax.train.distill import DistillModel

    cfg = tiny_config("shapes_distill.py")
    slow_cfg = tiny_config("shapes_slow.py")
    vocab = 131
    model = DistillModel(FastModel(cfg.model, vocab_size=vocab, rngs=nnx.Rngs(0)),
                         SlowModel(slow_cfg.model, vocab_size=vocab, rngs=nnx.Rngs(1)))
    # a random-init teacher barely looks at the image (its scores differ by ~1e-3 between images, the
    # size of float32 noise after z-scoring): amplify the cross-attention so that images matter
    for dec in (model.teacher.fwd, model.teacher.bwd):
        for layer in dec.layers:
            for lin in (layer.cross_attention.value, layer.cross_attention.out):
                lin.kernel[...] = lin.kernel[...] * 20.0
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, vocab, (batch_size, 12)).astype(np.int32)
    tokens[:, 0], tokens[:, -1] = 2, 3
    tokens[1, 8:] = 0  # a shorter caption
    batch = {"image": rng.integers(0, 255, (batch_size, 32, 32, 3)).astype(np.uint8), "tokens": tokens}
    return cfg, model, batch


def test_in_batch_hard_negatives_pick_the_students_hardest_and_score_them_with_the_teacher():
    from flax import nnx

    from fastslow_jax.train.distill import DistillTask

    cfg, model, batch = _tiny_distill_model()
    cfg.distill.weight, cfg.distill.batch_size, cfg.distill.tau_student = 1.0, 4, -1.0
    task, key = DistillTask(), jax.random.key(0)
    # independent reference: explicit (image, caption) pairs through the teacher's aligned-pair score,
    # the student's similarities and its learned scale
    img = model.student.encode_image(batch["image"], train=True)
    txt = model.student.encode_text(batch["tokens"], train=True)
    sims = np.asarray(txt[:4] @ img.T)
    scale = float(model.student.scale())
    teacher_score = nnx.jit(lambda t, images, tokens: t.score(images, tokens))
    for m in (6, 3):  # 6 = the whole batch (every image a candidate), 3 = the positive and the 2 hardest
        cfg.distill.in_batch_topm = m
        _, metrics = nnx.jit(lambda mdl, b: task.loss_fn(mdl, b, key, cfg))(model, batch)
        cand = []
        for i in range(4):
            others = [j for j in np.argsort(-sims[i], kind="stable") if j != i]
            cand.append([i] + others[: m - 1])
        cand = np.asarray(cand)
        h = np.asarray(teacher_score(model.teacher, batch["image"][cand.ravel()],
                                     np.repeat(batch["tokens"][:4], m, axis=0))).reshape(4, m)
        s = np.take_along_axis(sims, cand, axis=1) * scale
        want = float(distill_kl(jnp.asarray(h), jnp.asarray(s), float(cfg.distill.tau_teacher), 1.0))
        assert float(metrics["kl"]) == pytest.approx(want, rel=2e-3)
        assert want > 1e-3


def test_a_teacher_trained_at_another_resolution_scores_the_batch_at_its_own():
    # a 16 px teacher with a 32 px student batch: the teacher sees the images resized to 16 px. With images of
    # one colour each, the resized images are exactly the 16 px images of that colour (an independent reference)
    from flax import nnx

    from fastslow_jax.train.distill import DistillTask

    cfg, model, batch = _tiny_distill_model()
    colours = np.random.default_rng(1).integers(0, 255, (6, 1, 1, 3)).astype(np.uint8)
    batch["image"] = np.broadcast_to(colours, (6, 32, 32, 3)).copy()
    cfg.distill.weight, cfg.distill.batch_size, cfg.distill.tau_student, cfg.distill.in_batch_topm = 1.0, 4, -1.0, 0
    task, key = DistillTask(), jax.random.key(0)
    img = model.student.encode_image(batch["image"], train=True)
    txt = model.student.encode_text(batch["tokens"], train=True)
    s = np.asarray(txt[:4] @ img[:4].T) * float(model.student.scale())
    teacher_score = nnx.jit(lambda t, images, tokens: t.score(images, tokens))

    def want(size):  # every caption i against every image j, the images of the batch's colours at `size` px
        images = np.broadcast_to(colours[:4], (4, size, size, 3))
        h = np.asarray(teacher_score(model.teacher, np.tile(images, (4, 1, 1, 1)),
                                     np.repeat(batch["tokens"][:4], 4, axis=0))).reshape(4, 4)
        return float(distill_kl(jnp.asarray(h), jnp.asarray(s), float(cfg.distill.tau_teacher), 1.0))

    model.teacher_image_size = 16
    assert model.teacher_images(jnp.asarray(batch["image"])).shape == (6, 16, 16, 3)
    _, metrics = nnx.jit(lambda mdl, b: task.loss_fn(mdl, b, key, cfg))(model, batch)
    assert float(metrics["kl"]) == pytest.approx(want(16), rel=2e-3)
    assert abs(want(16) - want(32)) > 1e-3  # the resolution matters to this teacher
    for size in (0, 32):  # 0 (images as stored) or the batch's own size: the images pass through unchanged
        model.teacher_image_size = size
        x = jnp.asarray(batch["image"])
        assert model.teacher_images(x) is x
