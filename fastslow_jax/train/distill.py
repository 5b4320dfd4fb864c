"""Task ``distill``: a frozen Slow teacher distilled into a Fast student.

For the captions i and images j of a distillation batch:
  p_T(j|i) = softmax_j(z_i(h(x_j, y_i)) / tau_T)    teacher: Slow log-likelihoods, z-scored per caption
  p_S(j|i) = softmax_j(s(x_j, y_i) / tau_S)         student: Fast cosine similarities
  L = L_NCE(full batch) + lambda * KL(p_T || p_S)

The teacher is loaded from its training workdir (``distill.teacher_workdir``) when the run starts
and lives in the train state as non-trainable variables: the optimizer never sees it, and its
scores are wrapped in ``stop_gradient``. ``distill.mode``:
  * ``in_batch``: the teacher scores the first ``distill.batch_size`` captions against the first
    ``distill.batch_size`` images of every batch (B_d^2 teacher passes per step);
  * ``topm``: the teacher scores each caption's top-M Fast candidates offline
    (``fastslow_jax.train.distill.precompute_topm``); not wired into the loop yet (see README).
The student may start from a trained Fast run (``distill.student_init``).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from fastslow_jax import config as config_lib
from fastslow_jax.models.fast import FastModel
from fastslow_jax.models.slow import SlowModel
from fastslow_jax.train.fast import in_batch_accuracy, infonce


def zscore(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
    mean = x.mean(axis, keepdims=True)
    std = x.std(axis, keepdims=True)
    return (x - mean) / (std + eps)


def distill_kl(teacher_scores: jax.Array, student_scores: jax.Array, tau_t: float, tau_s: float) -> jax.Array:
    """Mean over rows of KL(p_T || p_S); teacher scores are z-scored per row and never differentiated."""
    t = jax.lax.stop_gradient(zscore(teacher_scores.astype(jnp.float32)))
    log_pt = jax.nn.log_softmax(t / tau_t, axis=-1)
    log_ps = jax.nn.log_softmax(student_scores.astype(jnp.float32) / tau_s, axis=-1)
    return (jnp.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean()


class DistillModel(nnx.Module):
    def __init__(self, student: FastModel, teacher: SlowModel):
        self.student = student
        self.teacher = teacher


def read_run_config(workdir: str, what: str) -> ml_collections.ConfigDict:
    path = os.path.join(os.path.expanduser(workdir), "config.json")
    if not workdir or not os.path.exists(path):
        raise FileNotFoundError(f"{what} {workdir!r} is not a training workdir (no config.json there)")
    with open(path, encoding="utf-8") as f:
        return config_lib.config_from_json(f.read())


class DistillTask:
    name = "distill"

    def trainable(self, config: ml_collections.ConfigDict):
        return nnx.All(nnx.Param, nnx.PathContains("student"))  # the teacher is frozen

    def build_model(self, config: ml_collections.ConfigDict, vocab_size: int, rngs: nnx.Rngs) -> DistillModel:
        tcfg = read_run_config(config.distill.teacher_workdir, "distill.teacher_workdir")
        if tcfg.task != "slow":
            raise ValueError(f"distill.teacher_workdir {config.distill.teacher_workdir!r} holds a "
                             f"{tcfg.task!r} run; the teacher must be a 'slow' run")
        for key in ("tokenizer", "max_len"):
            if tcfg.data[key] != config.data[key]:
                raise ValueError(f"the teacher was trained with data.{key}={tcfg.data[key]!r} but this run uses "
                                 f"{config.data[key]!r}; they must match")
        return DistillModel(FastModel(config.model, vocab_size=vocab_size, rngs=rngs),
                            SlowModel(tcfg.model, vocab_size=vocab_size, rngs=rngs))

    def initialize(self, run, state):
        """Load the teacher's (and optionally the student's) trained weights into a fresh state."""
        from fastslow_jax.train import loop

        dcfg = run.config.distill
        devices = run.mesh.devices.ravel().tolist()
        model = run.model(state)
        loop.load_submodule(model.teacher, dcfg.teacher_workdir, what="distill.teacher_workdir", devices=devices)
        if dcfg.student_init:
            scfg = read_run_config(dcfg.student_init, "distill.student_init")
            if scfg.task != "fast":
                raise ValueError(f"distill.student_init {dcfg.student_init!r} holds a {scfg.task!r} run, not 'fast'")
            loop.load_submodule(model.student, dcfg.student_init, what="distill.student_init", devices=devices)
        _, params, rest = run.split(model)
        state = dict(state, params=params, rest=rest, opt=run.tx.init(params))
        return jax.device_put(state, run.state_sharding)

    def loss_fn(self, model: DistillModel, batch: dict, rng: jax.Array, config: ml_collections.ConfigDict):
        dcfg = config.distill
        student, teacher = model.student, model.teacher
        img = student.encode_image(batch["image"], train=True)
        txt = student.encode_text(batch["tokens"], train=True, rngs=nnx.Rngs(dropout=rng))
        nce, logits = infonce(txt, img, student.scale(), config.loss.direction)
        bd = min(int(dcfg.batch_size), batch["tokens"].shape[0])
        if dcfg.mode != "in_batch":
            raise ValueError(f"distill.mode {dcfg.mode!r} is not supported by the training loop; use 'in_batch'")
        cache = teacher.visual_cache(batch["image"][:bd])
        h = jax.lax.stop_gradient(teacher.score_with_cache(batch["tokens"][:bd, None], cache))  # [captions, images]
        kl = distill_kl(h, txt[:bd] @ img[:bd].T, dcfg.tau_teacher, dcfg.tau_student)
        loss = nce + dcfg.weight * kl
        teacher_acc = (jnp.argmax(h, axis=1) == jnp.arange(bd)).mean()
        return loss, {"loss": loss, "nce": nce, "kl": kl, "batch_t2i_acc": in_batch_accuracy(logits),
                      "teacher_batch_acc": teacher_acc}
