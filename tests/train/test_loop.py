import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastslow_jax.checkpoint import Checkpointer
from fastslow_jax.train import loop
from tests.conftest import REPO, tiny_config


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if r["split"] == "train"]


def _params(workdir):
    _, state = loop.load_trained(workdir, devices=jax.devices()[:1])
    return jax.tree.map(np.asarray, state["params"])


def test_tiny_training_learns_and_writes_its_notebook(tmp_path):
    cfg = tiny_config(overrides=["train.steps=60", "train.log_every=10", "eval.every=60"])
    wd = str(tmp_path / "run")
    val = loop.train(cfg, wd, progress=False, devices=jax.devices()[:1])
    losses = [l for _, l in _losses(wd)]
    assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.2
    assert set(os.listdir(wd)) >= {"config.json", "metrics.jsonl", "tensorboard", "checkpoints"}
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tensorboard")))
    assert Checkpointer(os.path.join(wd, "checkpoints")).latest_step() == 60
    assert val["gallery"] == 64 and 0.0 <= val["t2i_r1"] <= 100.0
    # rerunning a finished run resumes at its end and trains nothing more
    loop.train(cfg, wd, progress=False, devices=jax.devices()[:1])
    assert len(_losses(wd)) == 6


def test_eight_devices_match_one_device(tmp_path):
    overrides = ["train.steps=12", "train.log_every=1", "train.checkpoint_every=100"]
    one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
    loop.train(tiny_config(overrides=overrides), one, progress=False, devices=jax.devices()[:1])
    loop.train(tiny_config(overrides=overrides + ["mesh.data=8"]), eight, progress=False)
    l1, l8 = _losses(one), _losses(eight)
    assert [s for s, _ in l1] == list(range(1, 13))
    np.testing.assert_allclose([l for _, l in l8], [l for _, l in l1], rtol=2e-4, atol=2e-5)
    assert l1[-1][1] < l1[0][1]  # it did train


def _wait_for_checkpoint(proc, ckpt_dir, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return None
        steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
        if steps:
            return max(steps)
        time.sleep(0.02)
    return None


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path):
    steps, every = 600, 50
    args = ["--config", os.path.join(REPO, "configs", "shapes_fast.py:tiny"), f"--config.train.steps={steps}",
            f"--config.train.checkpoint_every={every}", "--config.train.log_every=50", "--no-progress"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "fastslow_jax.cli", "train", "--workdir", killed, *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = _wait_for_checkpoint(proc, os.path.join(killed, "checkpoints"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first is not None and first < steps, "the run finished before it could be killed"
    resumed = subprocess.run([sys.executable, "-m", "fastslow_jax.cli", "train", "--workdir", killed, *args],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    straight = str(tmp_path / "straight")
    ok = subprocess.run([sys.executable, "-m", "fastslow_jax.cli", "train", "--workdir", straight, *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    # the metrics logged after the resume point, and the final parameters, are those of the uninterrupted run
    straight_losses = dict(_losses(straight))
    killed_losses = _losses(killed)
    assert killed_losses and killed_losses[-1][0] == steps
    for step, loss in killed_losses:
        assert loss == pytest.approx(straight_losses[step], rel=1e-6, abs=1e-7), step
    a, b = _params(killed), _params(straight)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_divergence_stops_naming_the_step_and_keeps_a_finite_checkpoint(tmp_path, monkeypatch):
    """A NaN injected into the loss of step 6 (0-based step 5: the step RNG tells the jitted loss which
    step it is in) stops the run naming step 6, and the last checkpoint is exactly step 5, finite."""
    from fastslow_jax.train.fast import FastTask

    cfg = tiny_config(overrides=["train.checkpoint_every=1", "train.log_every=100", "train.steps=20"])
    bad_index = 5
    bad_key = jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed + 2), bad_index))
    clean = FastTask.loss_fn

    def poisoned(self, model, batch, rng, config):
        loss, metrics = clean(self, model, batch, rng, config)
        hit = jnp.all(jax.random.key_data(rng) == bad_key)
        loss = loss * jnp.where(hit, jnp.nan, 1.0)
        return loss, dict(metrics, loss=loss)

    monkeypatch.setattr(FastTask, "loss_fn", poisoned)
    wd = str(tmp_path / "nan")
    with pytest.raises(loop.TrainingDiverged, match=r"training diverged at step (\d+)") as err:
        loop.train(cfg, wd, progress=False, devices=jax.devices()[:1])
    bad_step = int(err.value.args[0].split("at step ")[1].split()[0])
    assert bad_step == bad_index + 1
    assert "loss = nan and grad_norm = nan" in str(err.value)
    last = Checkpointer(os.path.join(wd, "checkpoints")).latest_step()
    assert last == bad_step - 1
    assert f"the last good checkpoint is step {last}" in str(err.value)
    for leaf in jax.tree.leaves(_params(wd)):
        assert np.isfinite(leaf).all()
