"""The run object: what the loop, the evaluators and the CLI share about one configured model.

``setup`` builds a ``Run`` (task, tokenizer, mesh, shardings, optimizer) from a config; ``load_trained``
restores a trained workdir; ``Run.warm_start`` is the one route by which a fresh state starts from
pretrained or trained weights; ``TASKS`` is the task registry. Above the tasks (which reach
``load_submodule`` / ``load_trained`` through the ``Run`` they are given), below the loop.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from fastslow_jax import config as config_lib
from fastslow_jax import parallel
from fastslow_jax.checkpoint import Checkpointer
from fastslow_jax.data import pipeline
from fastslow_jax.data.tokenizer import Tokenizer
from fastslow_jax.train.distill import DistillTask
from fastslow_jax.train.fast import FastTask
from fastslow_jax.train.optim import make_optimizer
from fastslow_jax.train.slow import SlowTask

log = logging.getLogger(__name__)

TASKS = {"fast": FastTask, "slow": SlowTask, "distill": DistillTask}


def get_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown config.task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]()


@dataclasses.dataclass
class Run:
    """Everything the loop, the evaluators and the CLI share about one configured model."""
    config: ml_collections.ConfigDict
    task: Any
    tokenizer: Tokenizer
    mesh: Mesh
    rules: dict
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: Callable
    state_sharding: Any
    batch_sharding: NamedSharding
    trainable: Any  # nnx filter: the variables the optimizer updates

    def model(self, state) -> nnx.Module:
        return nnx.merge(self.graphdef, state["params"], state["rest"])

    def split(self, model: nnx.Module):
        """(graphdef, trainable params, everything else) under the task's ``trainable`` filter."""
        return nnx.split(model, self.trainable, ...)

    def _init_fn(self):
        cfg, vocab, task, tx = self.config, self.tokenizer.vocab_size, self.task, self.tx

        def init():
            model = task.build_model(cfg, vocab, nnx.Rngs(cfg.seed))
            _, params, rest = nnx.split(model, self.trainable, ...)
            return {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest, "opt": tx.init(params)}

        return jax.jit(init, out_shardings=self.state_sharding)

    def with_model(self, state, model: nnx.Module):
        """``state`` with ``model``'s variables (e.g. after loading pretrained weights into it) and a fresh
        optimizer state, placed on the state shardings."""
        _, params, rest = self.split(model)
        return jax.device_put(dict(state, params=params, rest=rest, opt=self.tx.init(params)), self.state_sharding)

    def init_state(self):
        """A freshly initialised train state, created directly on its shardings."""
        with jax.set_mesh(self.mesh):
            return self._init_fn()()

    def abstract_state(self):
        """ShapeDtypeStructs (with shardings) of the train state: the target for restoring."""
        with jax.set_mesh(self.mesh):
            return jax.eval_shape(self._init_fn())

    def warm_start(self, state):
        """The one warm-start route of a fresh state: the task's ``initialize`` hook (pretrained towers,
        a trained backbone, a distillation teacher and student), then ``model.init_from`` (fine-tuning:
        the whole model from a finished run of the same architecture, e.g. CC3M). Every trained run is
        read by ``load_submodule`` (the hooks reach it through this object, not by importing upwards)."""
        if hasattr(self.task, "initialize"):
            state = self.task.initialize(self, state)
        init_from = self.config.model.get("init_from", "")
        if init_from:
            model = self.model(state)
            self.load_submodule(model, init_from, what="model.init_from")
            state = self.with_model(state, model)
            log.info("model initialised from %s", init_from)
        return state

    def load_submodule(self, target: nnx.Module, workdir: str, path: str = "", *, what: str) -> None:
        """``load_submodule`` on this run's devices (for the tasks' warm-start hooks)."""
        load_submodule(target, workdir, path, what=what, devices=self.mesh.devices.ravel().tolist())

    @staticmethod
    def load_trained(workdir: str, overrides=(), devices=None):
        """``load_trained``, reachable from the tasks below this module (e.g. top-M distillation's
        Fast retriever and teacher)."""
        return load_trained(workdir, overrides, devices)


def check_text_tokenizer(config: ml_collections.ConfigDict) -> None:
    """Refuse a text tower that ``data.tokenizer`` cannot feed. The only tokenizer is WordPiece with
    ``[PAD]`` = 0 (BERT ids); a CLIP text tower needs its checkpoint's own BPE ids, pad and end-of-text
    ids (it pools at the end-of-text token), so BERT ids would pass silently into CLIP's embedding table."""
    text = config.model.get("text")  # Slow models have no text tower of this kind
    if text is not None and text.get("name", "bert") == "clip":
        raise ValueError(
            "model.text.name='clip' cannot run end to end: data.tokenizer is a WordPiece tokenizer ([PAD]=0, "
            "BERT ids), not the CLIP checkpoint's own BPE tokenizer (its ids, pad and end-of-text token), so the "
            "CLIP text tower would read the wrong ids and pool at the wrong position; use model.text.name='bert' "
            "(e.g. model.text.pretrained=minilm), which pairs with any image tower, model.vision.name='clip_vit' "
            "included")


def setup(config: ml_collections.ConfigDict, devices=None) -> Run:
    """Build the task, tokenizer, mesh (over ``devices``, default all) and shardings for ``config``."""
    check_text_tokenizer(config)
    task = get_task(config.task)
    tokenizer = pipeline.make_tokenizer(config.data)
    mesh = parallel.make_mesh(config.mesh, devices)
    rules = dict(config.sharding_rules)
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    abstract_model = nnx.eval_shape(lambda: task.build_model(config, tokenizer.vocab_size, nnx.Rngs(config.seed)))
    trainable = task.trainable(config)
    graphdef, params, rest = nnx.split(abstract_model, trainable, ...)
    abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "rest": rest,
                      "opt": jax.eval_shape(tx.init, params)}
    state_sharding = parallel.state_shardings(abstract_state, rules, mesh)
    bsh = parallel.batch_sharding(mesh, rules)
    return Run(config, task, tokenizer, mesh, rules, graphdef, tx, schedule, state_sharding, bsh, trainable)


def load_submodule(target: nnx.Module, workdir: str, path: str = "", *, what: str, devices=None) -> None:
    """Overwrite ``target``'s variables with those of submodule ``path`` ("" = the whole model, or e.g.
    "vision") of the latest checkpoint in a training ``workdir``; shapes must match."""
    run, state = load_trained(workdir, devices=devices)
    source = run.model(state)
    for name in filter(None, path.split(".")):
        if not hasattr(source, name):
            raise ValueError(f"{what}: the run in {workdir} ({run.config.task}) has no submodule {path!r}")
        source = getattr(source, name)
    want = jax.tree.map(lambda x: x.shape, nnx.state(target))
    got = jax.tree.map(lambda x: x.shape, nnx.state(source))
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
        raise ValueError(f"{what}: {path or 'the model'} in {workdir} does not match this model's "
                         f"(different architecture or config)")
    nnx.update(target, nnx.state(source))


def load_trained(workdir: str, overrides=(), devices=None) -> tuple[Run, Any]:
    """The Run and the latest train state of a finished (or interrupted) run in ``workdir``."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} holds no config.json: is it a training workdir?")
    with open(path, encoding="utf-8") as f:
        config = config_lib.config_from_json(f.read())
    config_lib.apply_overrides(config, overrides)
    run = setup(config, devices)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        state, _ = ckpt.restore(run.abstract_state())
    finally:
        ckpt.close()
    return run, state
