"""The one training loop. A task supplies the model and the loss; ``train.run`` builds the run
(mesh, shardings, warm starts); everything else lives here.

* The step is a pure function ``(state, batch, rng) -> (state, metrics)``, jitted once with
  explicit in/out shardings and the state donated.
* State = ``{"step", "params", "rest", "opt"}``: model parameters, the model's other variables
  (e.g. BatchNorm statistics) and the optax state, all sharded from logical-axis metadata.
* Orbax checkpoints hold the state and the data iterator position; rerunning on the same workdir
  resumes (same data order, same per-step RNG), so a killed run ends like an uninterrupted one.
* Metrics go to ``metrics.jsonl`` and TensorBoard; a progress bar shows examples/s and ETA; a
  non-finite loss stops the run naming the step, before any checkpoint of the bad state is written.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from tqdm import tqdm

from fastslow_jax import config as config_lib
from fastslow_jax import parallel
from fastslow_jax.checkpoint import Checkpointer
from fastslow_jax.data import pipeline
from fastslow_jax.retrieval.evaluate import Evaluator
# the run object lives one layer down (below the loop, above the tasks); loop.setup / loop.load_trained stay
from fastslow_jax.train.run import Run, check_text_tokenizer, get_task, load_trained, setup  # noqa: F401

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


def make_train_step(run: Run):
    """The jitted step. ``train.grad_accum`` = A > 1 splits each batch into A micro-batches (rows
    a, a+A, a+2A, ... so every micro-batch stays spread over all devices), runs them one after the
    other (``lax.scan``, carrying e.g. BatchNorm statistics) and applies the mean of their gradients
    once: the loss is the mean of the micro-batch losses (for InfoNCE, negatives come from the
    micro-batch). Activations are pinned by the rules table (``parallel.constrain``)."""
    graphdef, task, config, tx, schedule = run.graphdef, run.task, run.config, run.tx, run.schedule
    trainable, mesh, rules = run.trainable, run.mesh, run.rules
    accum = int(config.train.get("grad_accum", 1))

    def grads_of(params, rest, batch, step_rng):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest, copy=True)
            with parallel.activation_sharding(mesh, rules):
                loss, metrics = task.loss_fn(model, batch, step_rng, config)
            _, _, new_rest = nnx.split(model, trainable, ...)
            return loss, (metrics, new_rest)

        (_, (metrics, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, metrics, new_rest

    def train_step(state, batch, rng):
        step_rng = jax.random.fold_in(rng, state["step"])
        if accum == 1:
            grads, metrics, new_rest = grads_of(state["params"], state["rest"], batch, step_rng)
        else:
            micro_sh = NamedSharding(mesh, jax.sharding.PartitionSpec(None, *run.batch_sharding.spec))

            def split(x):  # [B, ...] -> [A, B/A, ...]; micro-batch a = rows a, a+A, ...
                x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(
                    x, NamedSharding(mesh, jax.sharding.PartitionSpec(*micro_sh.spec[:x.ndim])))

            def body(carry, xs):
                grad_sum, rest = carry
                a, micro = xs
                grads, metrics, rest = grads_of(state["params"], rest, micro, jax.random.fold_in(step_rng, a))
                return (jax.tree.map(jnp.add, grad_sum, grads), rest), metrics

            zeros = jax.tree.map(jnp.zeros_like, state["params"])
            (grad_sum, new_rest), metrics = jax.lax.scan(
                body, (zeros, state["rest"]), (jnp.arange(accum), jax.tree.map(split, batch)))
            grads = jax.tree.map(lambda g: g / accum, grad_sum)
            metrics = jax.tree.map(lambda m: m.mean(0), metrics)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]))
        return {"step": state["step"] + 1, "params": params, "rest": new_rest, "opt": opt}, metrics

    repl = parallel.replicated(run.mesh)
    return jax.jit(train_step, in_shardings=(run.state_sharding, run.batch_sharding, repl),
                   out_shardings=(run.state_sharding, repl), donate_argnums=(0,))


class MetricWriter:
    """metrics.jsonl + TensorBoard event files, written by process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for k, v in metrics.items():
            self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "config.json")
    text = config_lib.to_json(config)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() != text:
                log.warning("config differs from the one saved in %s; the new one replaces it", path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


RUN_PATH_FIELDS = ("model.vision_init", "distill.teacher_workdir", "distill.student_init")


def _absolute_run_paths(config: ml_collections.ConfigDict) -> None:
    """Record the other runs a run starts from as absolute paths, so that it loads from any directory."""
    for dotted in RUN_PATH_FIELDS:
        section, key = dotted.split(".")
        if section in config and key in config[section] and config[section][key]:
            path = os.path.expanduser(config[section][key])
            if os.path.isdir(path):
                config[section][key] = os.path.abspath(path)


def _check_finite(step: int, metrics: dict, ckpt: Checkpointer) -> dict[str, float]:
    """Raise TrainingDiverged if the loss or the gradient norm of ``step`` is not finite."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = [k for k in ("loss", "grad_norm") if not math.isfinite(values.get(k, 0.0))]
    if bad:
        what = " and ".join(f"{k} = {values[k]}" for k in bad)
        last = ckpt.latest_step()
        where = (f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None
                 else "no checkpoint had been written yet")
        raise TrainingDiverged(f"training diverged at step {step} ({what}); stopped before saving it, and {where}")
    return values


def train(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
          devices=None) -> dict[str, Any]:
    """Train (or resume) ``config`` in ``workdir``; returns the final validation metrics, if any."""
    check_text_tokenizer(config)  # before any work (setup checks again, for every other entry point)
    os.makedirs(workdir, exist_ok=True)
    _absolute_run_paths(config)
    parallel.prepare_once(lambda: pipeline.get_builder(config.data), "dataset")
    task = get_task(config.task)
    if hasattr(task, "prepare_config"):  # fields derived from the data (e.g. Slow's output vocabulary)
        task.prepare_config(config)
    _write_config(config, workdir)
    run = setup(config, devices)
    tcfg = config.train
    total = int(tcfg.steps)
    stop = min(total, int(tcfg.get("stop_after", 0)) or total)  # a time-sliced job: resume later to go on
    div = parallel.batch_divisor(run.mesh, run.rules) * int(tcfg.get("grad_accum", 1))
    if int(tcfg.get("grad_accum", 1)) < 1 or tcfg.batch_size % div:
        raise ValueError(f"train.batch_size {tcfg.batch_size} must be divisible by train.grad_accum "
                         f"({tcfg.get('grad_accum', 1)}, at least 1) times the "
                         f"{parallel.batch_divisor(run.mesh, run.rules)} devices the batch is split over")
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tcfg.keep_checkpoints)
    writer = MetricWriter(workdir)
    start, data_state = 0, None
    if ckpt.latest_step() is not None:
        state, data_state = ckpt.restore(run.abstract_state())
        start = int(state["step"])
        log.info("resumed from %s at step %d", ckpt.directory, start)
    else:
        state = run.warm_start(run.init_state())
    # per-example arrays the task adds to the data (e.g. a locked tower's features), from the initial state
    extras = run.task.data_extras(run, workdir, state) if hasattr(run.task, "data_extras") else None
    it = pipeline.train_iterator(pipeline.train_dataset(config, run.tokenizer, extras=extras))
    if data_state is not None:
        it.set_state(data_state)
    log.info("model %s: %s parameters; mesh %s", config.task, f"{_count_params(state['params']):,}",
             dict(run.mesh.shape))
    if start >= total:
        log.info("already trained to step %d of %d", start, total)
    rng = jax.random.key(config.seed + 2)
    step_fn = make_train_step(run)
    evaluator = None
    val_metrics: dict[str, Any] = {}

    bar = tqdm(total=total, initial=start, disable=not progress or jax.process_index() != 0,
               desc=f"train {config.task}", unit="step", dynamic_ncols=True, mininterval=1.0)
    pending, t_last, n_last = None, time.perf_counter(), start
    try:
        for step in range(start, stop):
            batch = parallel.host_to_global(next(it), run.batch_sharding)
            if step == start:
                t0 = time.perf_counter()
                step_fn = step_fn.lower(state, batch, rng).compile()
                log.info("compiled the train step in %.1f s", time.perf_counter() - t0)
                t_last = time.perf_counter()
            state, metrics = step_fn(state, batch, rng)
            if pending is not None:  # one step behind, so the host never stalls the device
                _check_finite(*pending, ckpt)
            pending = (step + 1, metrics)
            done = step + 1
            bar.update(1)
            if done % tcfg.log_every == 0 or done == stop:
                values = _check_finite(*pending, ckpt)
                now = time.perf_counter()
                values["examples_per_s"] = (done - n_last) * tcfg.batch_size / max(now - t_last, 1e-9)
                t_last, n_last = now, done
                writer.write(done, "train", values)
                bar.set_postfix(loss=f"{values['loss']:.3f}", ex_s=f"{values['examples_per_s']:.0f}")
            if done % tcfg.checkpoint_every == 0 or done == stop:
                _check_finite(*pending, ckpt)
                ckpt.save(done, state, it.get_state())
            if config.eval.every and (done % config.eval.every == 0 or done == total):
                if evaluator is None:
                    evaluator = Evaluator(run)
                row = evaluator.evaluate(state, config.data.val_split)
                val_metrics = row
                writer.write(done, "val", {k: v for k, v in row.items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
                bar.write(f"step {done}: {config.data.val_split} t2i R@1 {row['t2i_r1']:.1f}  "
                          f"R@5 {row['t2i_r5']:.1f}  R@10 {row['t2i_r10']:.1f}  (gallery {row['gallery']})")
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    return val_metrics
