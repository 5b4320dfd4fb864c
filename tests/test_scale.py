"""Scale-out: every task under data / FSDP / model-parallel meshes matches one device; gradient
accumulation, rematerialisation and bf16 compute; sharded top-k; two jax.distributed processes
resumed by one."""
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from fastslow_jax import parallel
from fastslow_jax.data import pipeline
from fastslow_jax.train import loop
from tests.conftest import REPO, tiny_config

MESHES = {"data8": ["mesh.data=8"], "fsdp": ["mesh.data=2", "mesh.fsdp=4"], "model": ["mesh.data=2", "mesh.model=4"]}
# (embed=32, mlp=64) kernel of a transformer MLP under each mesh: FSDP shards the embed rows over fsdp,
# tensor parallelism the mlp columns over model; data parallelism replicates it
MLP_SPEC = {"data8": P(None, None), "fsdp": P("fsdp", None), "model": P(None, "model")}


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]


def _mlp_kernel(tree, task):
    root = {"fast": lambda t: t["text"]["layers"][0], "slow": lambda t: t["fwd"]["layers"][0],
            "distill": lambda t: t["student"]["text"]["layers"][0]}[task](tree)
    return root["mlp"]["intermediate"]["kernel"]


def _adam_state_of_mlp(opt_state, task):
    """The one Adam state whose moments hold the MLP kernel (a plain chain has one Adam state; optax's
    multi_transform, under optim.lr_mult, has one per group, the others holding masked placeholders)."""
    import optax

    found = [leaf for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(leaf, optax.ScaleByAdamState) and hasattr(_mlp_kernel(leaf.mu, task), "sharding")]
    assert len(found) == 1, f"{len(found)} Adam states hold the MLP kernel"
    return found[0]


def _first_batch(cfg):
    return next(pipeline.train_iterator(pipeline.train_dataset(cfg, pipeline.make_tokenizer(cfg.data))))


def _initial_state(cfg):
    """The task's freshly initialised state on one device (with the teacher loaded, for distill)."""
    run = loop.setup(cfg, jax.devices()[:1])
    return run.warm_start(run.init_state())


def _train_steps(cfg, state, batch, steps=2, devices=None):
    """``steps`` jitted train steps of ``cfg`` on its mesh over ``devices`` (default all), from a copy of
    ``state`` placed on the run's shardings. Returns (run, final state, per-step metrics)."""
    run = loop.setup(cfg, devices)
    state = jax.device_put(jax.tree.map(jnp.copy, state), run.state_sharding)  # the step donates its input
    step = loop.make_train_step(run)
    batch = parallel.host_to_global(batch, run.batch_sharding)
    metrics = []
    for _ in range(steps):
        state, m = step(state, batch, jax.random.key(cfg.seed + 2))
        metrics.append({k: float(v) for k, v in m.items()})
    return run, state, metrics


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("teacher") / "slow")
    loop.train(tiny_config("shapes_slow.py", overrides=["train.steps=1"]), wd, progress=False,
               devices=jax.devices()[:1])
    return wd


@pytest.mark.parametrize("task", ["fast", "slow", "distill"])
def test_task_under_each_mesh_matches_one_device_and_shards_as_specified(task, request):
    name = {"fast": "shapes_fast.py", "slow": "shapes_slow.py", "distill": "shapes_distill.py"}[task]
    extra = [f"distill.teacher_workdir={request.getfixturevalue('teacher')}"] if task == "distill" else []
    cfg = tiny_config(name, overrides=extra)
    state0, batch = _initial_state(cfg), _first_batch(cfg)
    _, _, ref = _train_steps(cfg, state0, batch, steps=3, devices=jax.devices()[:1])
    ref = [m["loss"] for m in ref]  # the warmup starts at lr 0: step 2 is the first to see an update
    assert len(ref) == 3 and all(np.isfinite(ref)) and ref[2] != ref[0]
    for mesh_name, mesh in MESHES.items():
        run, state, metrics = _train_steps(tiny_config(name, overrides=extra + mesh), state0, batch, steps=3)
        assert dict(run.mesh.shape) == {"data8": {"data": 8, "fsdp": 1, "model": 1},
                                        "fsdp": {"data": 2, "fsdp": 4, "model": 1},
                                        "model": {"data": 2, "fsdp": 1, "model": 4}}[mesh_name]
        # distill: the teacher's scores are z-scored and divided by tau_T, which magnifies the
        # summation-order differences of a sharded teacher pass (measured: 4e-4 relative)
        rtol = 1e-3 if task == "distill" else 2e-4
        np.testing.assert_allclose([m["loss"] for m in metrics], ref, rtol=rtol, atol=2e-5,
                                   err_msg=f"{task} {mesh_name}")
        kernel = _mlp_kernel(state["params"], task)
        assert kernel.shape == (32, 64) and kernel.sharding.spec == MLP_SPEC[mesh_name], (mesh_name, kernel.sharding)
        # the optimizer's moments are sharded like their parameter (FSDP shards optimizer state too)
        adam = _adam_state_of_mlp(state["opt"], task)  # under optim.lr_mult, the group that holds the kernel
        assert _mlp_kernel(adam.mu, task).sharding.spec == MLP_SPEC[mesh_name]
        assert _mlp_kernel(adam.nu, task).sharding.spec == MLP_SPEC[mesh_name]
        if mesh_name == "fsdp":  # each device holds a quarter of the rows
            assert kernel.addressable_shards[0].data.shape == (8, 64)


def test_every_matrix_parameter_has_logical_axes():
    from flax import nnx
    from fastslow_jax.models.slow import SlowModel
    from fastslow_jax.models.fast import FastModel
    cfg = tiny_config("shapes_slow.py")
    fcfg = tiny_config("shapes_fast.py")
    for model in (nnx.eval_shape(lambda: SlowModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))),
                  nnx.eval_shape(lambda: FastModel(fcfg.model, vocab_size=131, rngs=nnx.Rngs(0)))):
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            names, ndim = var.get_metadata().get("out_sharding"), var.get_value().ndim
            if ndim >= 2:
                assert names is not None and len(names) == ndim, path


def test_grad_accumulation_remat_and_bf16():
    one = jax.devices()[:1]
    fast = tiny_config("shapes_fast.py", overrides=["train.batch_size=8"])
    state0, batch = _initial_state(fast), _first_batch(fast)
    _, _, m_full = _train_steps(fast, state0, batch, steps=1, devices=one)
    # gradient accumulation: micro-batches are rows 0,2,4,6 and 1,3,5,7; the step's loss is their mean
    # (InfoNCE's negatives come from each micro-batch)
    _, s_acc, m_acc = _train_steps(tiny_config("shapes_fast.py", overrides=["train.batch_size=8", "train.grad_accum=2"]),
                                   state0, batch, steps=1, devices=one)
    half = tiny_config("shapes_fast.py", overrides=["train.batch_size=4"])
    run = loop.setup(half, one)
    step = loop.make_train_step(run)
    losses = []
    for i in (0, 1):
        state = jax.device_put(jax.tree.map(jnp.copy, state0), run.state_sharding)
        sub = parallel.host_to_global({k: v[i::2] for k, v in batch.items()}, run.batch_sharding)
        losses.append(float(step(state, sub, jax.random.key(half.seed + 2))[1]["loss"]))
    assert m_acc[0]["loss"] == pytest.approx(np.mean(losses), rel=1e-5) and losses[0] != losses[1]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(s_acc["params"]))
    # remat recomputes activations (the BERT layers): identical numbers
    _, _, m_remat = _train_steps(tiny_config("shapes_fast.py", overrides=["train.batch_size=8", "model.remat=True"]),
                                 state0, batch, steps=1, devices=one)
    assert m_remat[0]["loss"] == pytest.approx(m_full[0]["loss"], rel=1e-6)
    assert m_remat[0]["grad_norm"] == pytest.approx(m_full[0]["grad_norm"], rel=1e-5)
    # bf16 compute keeps float32 master weights and optimizer state, and is close to float32
    _, s_bf, m_bf = _train_steps(tiny_config("shapes_fast.py", overrides=["train.batch_size=8", "model.dtype=bfloat16"]),
                                 state0, batch, steps=1, devices=one)
    assert {x.dtype for x in jax.tree.leaves(s_bf["params"])} == {np.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(s_bf["opt"]) if x.ndim} == {np.dtype("float32")}
    assert m_bf[0]["loss"] == pytest.approx(m_full[0]["loss"], rel=2e-2) and m_bf[0]["loss"] != m_full[0]["loss"]


def test_sharded_top_k_equals_single_device_with_ties():
    rng = np.random.default_rng(0)
    gallery = rng.integers(-2, 3, size=(45, 6)).astype(np.float32)  # small integers: many exact ties
    queries = rng.integers(-2, 3, size=(7, 6)).astype(np.float32)
    scores = queries @ gallery.T
    for shape in ({"data": 8}, {"data": 2, "fsdp": 2, "model": 2}):
        mesh = parallel.make_mesh(shape)
        for k in (1, 10, 45):
            s, i = parallel.sharded_top_k(queries, gallery, k, mesh)
            # reference: numpy's stable sort (highest score first, ties by lower gallery index)
            ref_i = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            np.testing.assert_array_equal(np.asarray(i), ref_i)
            np.testing.assert_array_equal(np.asarray(s), np.take_along_axis(scores, ref_i, 1))
            single = jax.lax.top_k(jax.device_put(scores, jax.devices()[0]), k)[1]
            np.testing.assert_array_equal(np.asarray(i), np.asarray(single))  # identical to one device
    with pytest.raises(ValueError, match="0 < k <= gallery size"):
        parallel.sharded_top_k(queries, gallery, 46, mesh)


def test_initialize_distributed_reads_the_environment():
    assert parallel.initialize_distributed(env={}) == "single process"
    assert parallel.initialize_distributed(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) == "single process"
    assert "off" in parallel.initialize_distributed(env={"FASTSLOW_DISTRIBUTED": "off", "SLURM_JOB_ID": "7",
                                                         "SLURM_NTASKS": "4"})
    with pytest.raises(ValueError, match="without the number of processes"):
        parallel.initialize_distributed(env={"FASTSLOW_COORDINATOR": "127.0.0.1:1234"})
    with pytest.raises(ValueError, match="process id 2 is not in"):
        parallel.initialize_distributed("127.0.0.1:1234", 2, 2, env={})
    with pytest.raises(ValueError, match="FASTSLOW_DISTRIBUTED='gpu' is not one of"):
        parallel.initialize_distributed(env={"FASTSLOW_DISTRIBUTED": "gpu"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_checkpoint_then_one_process_resumes(tmp_path):
    """2 jax.distributed processes (2 CPU devices each: a 4-device global mesh) train 4 of 8 steps and
    checkpoint; 1 process with 1 device resumes to step 8 and ends with an uninterrupted run's params."""
    args = ["--config", os.path.join(REPO, "configs", "shapes_fast.py:tiny"), "--no-progress",
            "--config.train.steps=8", "--config.train.checkpoint_every=4", "--config.train.log_every=1"]
    wd = str(tmp_path / "multi")
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "fastslow_jax.cli", "train", "--workdir", wd, *args,
                               "--config.train.stop_after=4", "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "process 0 of 2" in outs[0] and "mesh {'data': 4" in outs[0]
    assert "mesh {'data'" not in outs[1]  # process 1 logs warnings only
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4"]
    env1 = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    resumed = subprocess.run([sys.executable, "-m", "fastslow_jax.cli", "train", "--workdir", wd, *args],
                             cwd=REPO, env=env1, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at step 4" in resumed.stderr
    straight = str(tmp_path / "straight")
    cfg = tiny_config(overrides=["train.steps=8", "train.checkpoint_every=4", "train.log_every=1"])
    loop.train(cfg, straight, progress=False, devices=jax.devices()[:1])
    np.testing.assert_allclose(_losses(wd), _losses(straight), rtol=2e-4, atol=2e-5)
    a = jax.tree.map(np.asarray, loop.load_trained(wd, devices=jax.devices()[:1])[1]["params"])
    b = jax.tree.map(np.asarray, loop.load_trained(straight, devices=jax.devices()[:1])[1]["params"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
