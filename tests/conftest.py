"""Test set-up: 8 fake CPU devices, no network, datasets built into a per-session temp dir."""
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("datasets"))
    os.environ["FASTSLOW_DATA_DIR"] = d
    return d


@pytest.fixture(scope="session")
def repo_root():
    return REPO


def tiny_config(name: str = "shapes_fast.py", overrides=(), data_dir: str | None = None):
    from fastslow_jax import config as config_lib
    cfg = config_lib.load_config(os.path.join(CONFIGS, f"{name}:tiny"), overrides)
    if data_dir:
        cfg.data.data_dir = data_dir
    return cfg


def run_cli(args, env_extra=None, timeout=300):
    """Run the fastslow CLI in a fresh process (for kill/resume tests and real command lines)."""
    import subprocess
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "fastslow_jax.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A tiny pipeline workdir trained once per session: fast/, slow/ (backbone from fast, compact output
    vocabulary), distill/."""
    import jax
    from fastslow_jax.train import loop
    devices = jax.devices()[:1]
    wd = str(tmp_path_factory.mktemp("pipeline"))
    loop.train(tiny_config("shapes_fast.py"), os.path.join(wd, "fast"), progress=False, devices=devices)
    # the Slow run predicts only its training captions' ids (+ 'other'): every pipeline path (eval, re-ranking,
    # distillation, serving) runs the compact output vocabulary; the model tests cover the full one
    loop.train(tiny_config("shapes_slow.py", [f"model.vision_init={wd}/fast", "model.slow.output_vocab=train"]),
               os.path.join(wd, "slow"),
               progress=False, devices=devices)
    loop.train(tiny_config("shapes_distill.py", [f"distill.teacher_workdir={wd}/slow",
                                                 f"distill.student_init={wd}/fast", "train.steps=6"]),
               os.path.join(wd, "distill"), progress=False, devices=devices)
    return wd
