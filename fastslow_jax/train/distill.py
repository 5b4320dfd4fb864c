"""Task ``distill``: a frozen Slow teacher distilled into a Fast student.

For the captions i and images j of a distillation batch:
  p_T(j|i) = softmax_j(z_i(h(x_j, y_i)) / tau_T)    teacher: Slow log-likelihoods, z-scored per caption
  p_S(j|i) = softmax_j(s(x_j, y_i) / tau_S)         student: Fast cosine similarities (tau_S <= 0: the
                                                    student's own learned temperature, as in its InfoNCE)
  L = L_NCE(full batch) + lambda * KL(p_T || p_S)

The teacher is loaded from its training workdir (``distill.teacher_workdir``) when the run starts
and lives in the train state as non-trainable variables: the optimizer never sees it, and its
scores are wrapped in ``stop_gradient``. ``distill.mode``:
  * ``in_batch``: the teacher scores the first ``distill.batch_size`` captions against the first
    ``distill.batch_size`` images of every batch (B_d^2 teacher passes per step); with
    ``distill.in_batch_topm`` M > 0, each of those captions is scored against its own image and the
    M - 1 other images of the whole batch the student currently ranks highest (in-batch hard
    negatives; B_d * M teacher passes per step);
  * ``topm``: before training, the Fast run ``distill.student_init`` retrieves each training
    caption's top-M images (exact search over the train split) and the teacher scores them; the
    table is saved as ``WORKDIR/topm_M.npz`` (reused on resume). Each training example then carries
    its M candidate images and their teacher scores, and the KL runs over those M candidates
    (B * M extra student image embeddings per step, no teacher pass in the step).
The student may start from a trained Fast run (``distill.student_init``; required for ``topm``).
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from fastslow_jax import config as config_lib
from fastslow_jax.data import pipeline
from fastslow_jax.data.pipeline import EvalSplit
from fastslow_jax.models import layers, weights
from fastslow_jax.models.fast import FastModel
from fastslow_jax.models.slow import SlowModel
from fastslow_jax.retrieval.evaluate import FastScorer, SlowScorer
from fastslow_jax.train.fast import batch_positives, frozen_filter, in_batch_accuracy, infonce

log = logging.getLogger(__name__)
MODES = ("in_batch", "topm")


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
    def __init__(self, student: FastModel, teacher: SlowModel, teacher_image_size: int = 0):
        self.student = student
        self.teacher = teacher
        # the teacher's training resolution (its data.image_size; 0 = images as stored): batches prepared for
        # the student at another size are resized for the teacher (e.g. a 224 px student, a 128 px teacher)
        self.teacher_image_size = int(teacher_image_size)

    def teacher_images(self, images: jax.Array) -> jax.Array:
        """uint8 [B, (T,) H, W, 3] batch images as the teacher was trained on them (cubic, antialiased)."""
        size = self.teacher_image_size
        if not size or images.shape[-3:-1] == (size, size):
            return images
        return jnp.round(layers.resize_images(images, size)).astype(images.dtype)


def read_run_config(workdir: str, what: str) -> ml_collections.ConfigDict:
    path = os.path.join(os.path.expanduser(workdir), "config.json")
    if not workdir or not os.path.exists(path):
        raise FileNotFoundError(f"{what} {workdir!r} is not a training workdir (no config.json there)")
    with open(path, encoding="utf-8") as f:
        return config_lib.config_from_json(f.read())


class DistillTask:
    name = "distill"

    def trainable(self, config: ml_collections.ConfigDict):
        return frozen_filter(config, prefix="student")  # the teacher is frozen, and so is a locked student tower

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
                            SlowModel(tcfg.model, vocab_size=vocab_size, rngs=rngs),
                            teacher_image_size=pipeline.image_options(tcfg.data)[0])

    def initialize(self, run, state):
        """Load the teacher's (and optionally the student's) trained weights into a fresh state."""
        dcfg = run.config.distill
        model = run.model(state)
        run.load_submodule(model.teacher, dcfg.teacher_workdir, what="distill.teacher_workdir")
        if dcfg.student_init:
            scfg = read_run_config(dcfg.student_init, "distill.student_init")
            if scfg.task != "fast":
                raise ValueError(f"distill.student_init {dcfg.student_init!r} holds a {scfg.task!r} run, not 'fast'")
            run.load_submodule(model.student, dcfg.student_init, what="distill.student_init")
        else:  # a fresh student: its towers may start from pretrained weights
            for line in weights.load_pretrained(model.student, run.config.model):
                print(f"[fastslow] distill student {line}")
        return run.with_model(state, model)

    def data_extras(self, run, workdir: str, state):
        """For ``topm``: the per-example candidates and teacher scores (computed once, then loaded)."""
        dcfg = run.config.distill
        if dcfg.mode not in MODES:
            raise ValueError(f"unknown distill.mode {dcfg.mode!r}; choose one of {MODES}")
        if dcfg.mode != "topm":
            return None
        path = os.path.join(workdir, f"topm_{int(dcfg.topm)}.npz")
        if not os.path.exists(path):
            precompute_topm(run.config, path, run.load_trained)
        return TopMExtras(run.config, path)

    def loss_fn(self, model: DistillModel, batch: dict, rng: jax.Array, config: ml_collections.ConfigDict):
        dcfg = config.distill
        student, teacher = model.student, model.teacher
        rngs = nnx.Rngs(dropout=rng)
        img = student.encode_image(batch["image"], train=True, rngs=rngs)
        txt = student.encode_text(batch["tokens"], train=True, rngs=rngs)
        pos = batch_positives(batch, config)
        nce, logits = infonce(txt, img, student.scale(), config.loss.direction, pos)
        metrics = {"nce": nce, "batch_t2i_acc": in_batch_accuracy(logits, pos)}
        if dcfg.tau_student > 0:
            s_scale, s_tau = 1.0, float(dcfg.tau_student)
        else:  # the student's learned InfoNCE temperature (held fixed by the KL: only InfoNCE moves it)
            s_scale, s_tau = jax.lax.stop_gradient(student.scale()), 1.0
        if dcfg.weight == 0:  # plain InfoNCE (the control run for a distillation): skip the teacher entirely
            kl = jnp.zeros((), jnp.float32)
        elif dcfg.mode == "topm":  # teacher scores precomputed over each caption's top-M Fast candidates
            cand = batch["cand_images"]
            b, m = cand.shape[:2]
            cimg = student.encode_image(cand.reshape(b * m, *cand.shape[2:]), train=True, rngs=rngs).reshape(b, m, -1)
            h = batch["teacher_scores"]
            kl = distill_kl(h, jnp.einsum("be,bme->bm", txt, cimg) * s_scale, dcfg.tau_teacher, s_tau)
        elif int(dcfg.get("in_batch_topm", 0)) > 0:  # in-batch hard negatives
            # each of the first distill.batch_size captions against its own image and the student's
            # top-(M-1) other images of the whole batch; the teacher scores these B_d x M pairs
            b = batch["tokens"].shape[0]
            bd, m = min(int(dcfg.batch_size), b), min(int(dcfg.in_batch_topm), b)
            sims = txt[:bd] @ img.T  # [B_d, B]
            # positives (the caption's own image, and under loss.multi_positive its duplicates) are never negatives
            own = jnp.arange(b)[None] == jnp.arange(bd)[:, None]
            others = jnp.where(own if pos is None else pos[:bd], -jnp.inf, sims)
            _, hard = jax.lax.top_k(jax.lax.stop_gradient(others), m - 1)
            cand = jnp.concatenate([jnp.arange(bd)[:, None], hard], axis=1)  # [B_d, M], the positive first
            cache = jax.tree.map(lambda x: x[cand], teacher.visual_cache(model.teacher_images(batch["image"])))
            h = jax.lax.stop_gradient(teacher.score_with_cache(batch["tokens"][:bd, None], cache))  # [B_d, M]
            kl = distill_kl(h, jnp.take_along_axis(sims, cand, axis=1) * s_scale, dcfg.tau_teacher, s_tau)
            metrics["teacher_batch_acc"] = (jnp.argmax(h, axis=1) == 0).mean()
        else:  # in-batch: the teacher scores the first distill.batch_size captions x images
            bd = min(int(dcfg.batch_size), batch["tokens"].shape[0])
            cache = teacher.visual_cache(model.teacher_images(batch["image"][:bd]))
            h = jax.lax.stop_gradient(teacher.score_with_cache(batch["tokens"][:bd, None], cache))  # [caption, image]
            kl = distill_kl(h, (txt[:bd] @ img[:bd].T) * s_scale, dcfg.tau_teacher, s_tau)
            metrics["teacher_batch_acc"] = (jnp.argmax(h, axis=1) == jnp.arange(bd)).mean()
        loss = nce + dcfg.weight * kl
        return loss, {"loss": loss, "kl": kl, **metrics}


def precompute_topm(config: ml_collections.ConfigDict, path: str, load_trained) -> None:
    """Top-M Fast candidates of every training caption and their teacher scores, saved to ``path``.
    ``load_trained(workdir) -> (run, state)`` reads the trained runs (``Run.load_trained``)."""
    dcfg = config.distill
    if not dcfg.student_init:
        raise ValueError("distill.mode='topm' needs distill.student_init: the Fast run that retrieves the candidates")
    m = int(dcfg.topm)
    fast_run, fast_state = load_trained(dcfg.student_init)
    slow_run, slow_state = load_trained(dcfg.teacher_workdir)
    split = EvalSplit(config.data, config.data.train_split)
    log.info("top-M distillation: scoring %d training captions x %d candidates with the teacher",
             len(split.captions), m)
    fast = FastScorer(fast_run)
    candidates, _ = fast.search(fast_state, split.captions, fast.embed_images(fast_state, split), m)
    slow = SlowScorer(slow_run)
    teacher_split = split.with_image_options(slow_run.config.data)  # the teacher's own resolution
    scores, _ = slow.rerank_scores(slow_state, split.captions, candidates,
                                   cache=slow.gallery_cache(slow_state, teacher_split))
    counts = np.bincount(split.caption_to_image, minlength=split.num_images)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    tmp = path + ".tmp.npz"
    np.savez(tmp, candidates=candidates.astype(np.int32), scores=scores.astype(np.float32),
             offsets=offsets.astype(np.int64), counts=counts.astype(np.int64))
    os.replace(tmp, path)


class TopMExtras:
    """Per-example arrays for top-M distillation: the caption's M candidate images and teacher scores."""

    def __init__(self, config: ml_collections.ConfigDict, path: str):
        with np.load(path) as f:
            self.candidates, self.scores = f["candidates"], f["scores"]
            self.offsets, self.counts = f["offsets"], f["counts"]
        self.source = pipeline.split_source(config.data, config.data.train_split)
        if len(self.offsets) != len(self.source):
            raise ValueError(f"{path} was computed for {len(self.offsets)} training images, but the split has "
                             f"{len(self.source)}; delete it to recompute")
        options = pipeline.image_options(config.data)
        self._decode = lambda image: pipeline._decode_image(image, *options)

    def __call__(self, index: int, caption: int) -> dict:
        if caption >= self.counts[index]:
            raise ValueError(f"caption {caption} of training image {index} has no top-M entry")
        row = self.offsets[index] + caption
        cand = self.candidates[row]
        return {"cand_images": np.stack([self._decode(self.source[int(j)]["image"]) for j in cand]),
                "teacher_scores": self.scores[row]}
