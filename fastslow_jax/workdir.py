"""What a workdir is: a training run (``config.json`` + ``checkpoints/``), or a *pipeline workdir*
(as ``launch/demo.sh`` writes: runs in ``fast/``, ``slow/``, ``slow_lastmap/``, ``distill/``; ``baseline/``
as ``launch/emoji.sh`` adds: a Fast run that is only scored, never re-ranked).

The one place that knows it, for ``fastslow eval``, ``index``, ``search`` and ``serve``: which runs a
pipeline holds, which of them embeds a gallery, and how a run is loaded when the teacher workdir a
distillation run recorded was relative to another working directory.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from fastslow_jax.retrieval import evaluate
from fastslow_jax.train.run import Run, load_trained

PIPELINE_RUNS = ("fast", "slow", "slow_lastmap", "distill", "baseline")  # baseline: a Fast run, a row alone
EMBEDDING_RUNS = ("distill", "fast")  # the gallery is embedded by the distilled Fast tower, else plain Fast


def is_run(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "config.json"))


def is_pipeline(workdir: str) -> bool:
    """A pipeline workdir holds no config.json itself, and runs in fast/, slow/, distill/, ..."""
    return not is_run(workdir) and any(is_run(os.path.join(workdir, r)) for r in PIPELINE_RUNS)


def relocated(pipeline: str, run_dir: str) -> list[str]:
    """Overrides for a distillation run whose recorded teacher workdir is relative to another working
    directory (the demo writes ``runs/demo/slow``): the pipeline's own run of that name. The teacher's
    weights come from the distillation checkpoint; its workdir is read for the architecture only."""
    path = os.path.join(pipeline, run_dir, "config.json")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    teacher = (cfg.get("distill") or {}).get("teacher_workdir") or ""
    if cfg.get("task") != "distill" or not teacher or is_run(teacher):
        return []
    local = os.path.join(pipeline, os.path.basename(os.path.normpath(teacher)))
    return [f"distill.teacher_workdir={local}"] if is_run(local) else []


def load_run(workdir: str, overrides: Sequence[str] = (), devices=None) -> tuple[Run, Any]:
    """``load_trained`` of one run, with its teacher relocated next to it when needed (``relocated``)."""
    workdir = os.path.normpath(workdir)
    fix = relocated(os.path.dirname(workdir), os.path.basename(workdir))
    return load_trained(workdir, [*fix, *overrides], devices)


def load_pipeline(workdir: str, overrides: Sequence[str] = (), devices=None) -> dict[str, tuple[Run, Any]]:
    """Every run of a pipeline workdir, by name (``PIPELINE_RUNS``)."""
    runs = {name: load_run(os.path.join(workdir, name), overrides, devices)
            for name in PIPELINE_RUNS if is_run(os.path.join(workdir, name))}
    if "fast" not in runs and "distill" not in runs and "slow" not in runs:
        raise FileNotFoundError(f"{workdir} holds none of the runs {PIPELINE_RUNS}")
    return runs


def evaluate_pipeline(workdir: str, split_name: str | None = None, overrides: Sequence[str] = (),
                      progress=print) -> list[dict]:
    """The whole table of a pipeline workdir (``retrieval.evaluate.evaluate_pipeline``); ``overrides``
    apply to every run (e.g. ``eval.limit=300``)."""
    return evaluate.evaluate_pipeline(load_pipeline(workdir, overrides), split_name, progress)


def embedding_run(workdir: str) -> str | None:
    """The sub-run of a pipeline workdir that embeds galleries (``EMBEDDING_RUNS``), or None."""
    return next((n for n in EMBEDDING_RUNS if is_run(os.path.join(workdir, n))), None)
