"""GPU efficiency check: the real train steps of every task at realistic size, and Slow re-ranking.

For each task (fast, slow, distill) it builds the run with ``train.loop.setup`` (the same mesh,
shardings and jitted step as ``fastslow train``), feeds synthetic batches that live on the devices
(so the input pipeline is not measured), and prints examples/s, the step time and the model FLOPs
utilisation: FLOPs of one compiled step from XLA's cost analysis / step time / the chips' peak.
Then Slow re-ranking (the evaluator's ``SlowScorer.rerank_scores``, visual features cached) gives
(query, candidate) pairs/s.

Realistic size (default): ResNet-50 at 224 px, BERT-base text tower (12 x 768, 12 heads, 3072 MLP,
30,522-token vocab, 64 tokens), Slow decoders 768 wide with 12 heads, batch 256, bf16 compute with
float32 master weights. ``--smoke``: the tiny configs on whatever device (CPU included), a few
steps, to check that the script runs end to end.

  bash bench/gpu_check.sh                   # on a GPU machine; about 5 minutes on one H100
  python bench/gpu_check.py --smoke         # anywhere, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fastslow_jax import config as config_lib  # noqa: E402
from fastslow_jax import parallel  # noqa: E402
from fastslow_jax.checkpoint import Checkpointer  # noqa: E402
from fastslow_jax.train import loop  # noqa: E402

# dense bf16 peak per chip, FLOP/s (vendor data sheets; H100/H200 SXM without sparsity)
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L4": 121e12,
             "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v4": 275e12, "TPU v6": 918e12}

REALISTIC = [
    "model.dtype=bfloat16", "model.vision.name=resnet50", "train.batch_size=256", "data.max_len=64",
    "eval.batch_size=256", "eval.slow_pair_budget=4096",
]
FAST_TOWERS = ["model.embed_dim=256", "model.text.width=768", "model.text.depth=12", "model.text.num_heads=12",
               "model.text.mlp_dim=3072", "model.text.max_len=64"]
SLOW_TOWERS = ["model.slow.width=768", "model.slow.fpn_width=256", "model.slow.num_heads=12",
               "model.slow.mlp_dim=3072", "model.slow.max_len=64"]


def chip_peak(device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    kind = device.device_kind
    for name, peak in PEAK_BF16.items():  # longest names first where they overlap (H100 PCIe before H100)
        if name in kind:
            return peak
    return None


def write_vocab(path: str, size: int) -> str:
    """A BERT-sized WordPiece vocab ([PAD]=0, specials, then words w0, w1, ...)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(specials + [f"w{i}" for i in range(size - len(specials))]) + "\n")
    return path


def synthetic_batch(cfg, vocab_size: int, image_size: int, rng: np.random.Generator) -> dict:
    b, length = int(cfg.train.batch_size), int(cfg.data.max_len)
    images = rng.integers(0, 256, size=(b, image_size, image_size, 3), dtype=np.uint8)
    tokens = np.zeros((b, length), np.int32)
    for i, n in enumerate(rng.integers(length // 4, length - 2, size=b)):  # [CLS] words [SEP] pad
        tokens[i, 0], tokens[i, n + 1] = 2, 3
        tokens[i, 1:n + 1] = rng.integers(5, vocab_size, size=n)
    return {"image": images, "tokens": tokens}


def step_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def bench_task(cfg, workdir: str, steps: int, max_seconds: float, peak: float | None, image_size: int) -> dict:
    run = loop.setup(cfg)
    state = run.warm_start(run.init_state())
    batch = parallel.host_to_global(synthetic_batch(cfg, run.tokenizer.vocab_size, image_size,
                                                    np.random.default_rng(0)), run.batch_sharding)
    rng = jax.random.key(0)
    t0 = time.perf_counter()
    step = loop.make_train_step(run).lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    flops = step_flops(step)
    for _ in range(3):  # warm-up
        state, metrics = step(state, batch, rng)
    jax.block_until_ready(state)
    t0, done = time.perf_counter(), 0
    while done < steps:
        state, metrics = step(state, batch, rng)
        done += 1
        if done % 10 == 0:
            jax.block_until_ready(metrics)
            if time.perf_counter() - t0 > max_seconds:
                break
    jax.block_until_ready(state)
    dt = (time.perf_counter() - t0) / done
    n_dev = run.mesh.size
    row = {"task": cfg.task, "steps": done, "batch": int(cfg.train.batch_size), "compile_s": round(compile_s, 1),
           "step_ms": round(1000 * dt, 2), "examples_per_s": round(cfg.train.batch_size / dt, 1),
           "gflops_per_step": round(flops / 1e9, 2), "achieved_tflops_per_chip": round(flops / dt / 1e12, 1),
           "mfu": round(flops / dt / (peak * n_dev), 4) if peak else None,
           "loss": float(metrics["loss"]), "params": loop._count_params(state["params"])}
    if workdir:  # keep the trained state: the distillation teacher is this Slow model
        os.makedirs(workdir, exist_ok=True)
        loop._write_config(cfg, workdir)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
        ckpt.save(done, state)
        ckpt.close()
    return row, run, state


def bench_rerank(run, state, queries: int, k: int, image_size: int) -> dict:
    from fastslow_jax.retrieval.evaluate import SlowScorer
    scorer = SlowScorer(run)
    rng = np.random.default_rng(1)
    gallery = max(k, scorer.batch_size)
    images = rng.integers(0, 256, size=(gallery, image_size, image_size, 3), dtype=np.uint8)
    cache = scorer.images_cache(state, images)
    words = [f"w{i}" for i in range(5, 2000)] if run.tokenizer.vocab_size > 2000 else \
        ["a", "red", "circle", "left", "of", "blue", "square"]
    texts = [" ".join(rng.choice(words, size=rng.integers(6, 20))) for _ in range(queries)]
    candidates = np.stack([rng.choice(gallery, size=k, replace=False) for _ in range(queries)])
    scores, ms = scorer.rerank_scores(state, texts, candidates, cache=cache)
    assert np.isfinite(scores).all()
    return {"task": "slow_rerank", "queries": queries, "k": k, "ms_per_query": round(ms, 3),
            "pairs_per_s": round(k * 1000.0 / ms, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny configs and a few steps (runs on a CPU)")
    p.add_argument("--steps", type=int, default=300, help="timed steps per task (after 3 warm-up steps)")
    p.add_argument("--max-seconds", type=float, default=45.0, help="stop timing a task after this long")
    p.add_argument("--tasks", default="fast,slow,distill", help="comma-separated subset of fast,slow,distill")
    p.add_argument("--rerank-queries", type=int, default=2048)
    p.add_argument("--rerank-k", type=int, default=50)
    p.add_argument("--peak-tflops", type=float, default=None, help="the chip's peak (default: from its name)")
    p.add_argument("--output", default=None, help="also write the rows as JSON to this file")
    args = p.parse_args(argv)

    dev = jax.devices()[0]
    peak = chip_peak(dev, args.peak_tflops)
    print(f"[gpu_check] {jax.device_count()} x {dev.device_kind} ({dev.platform}); peak bf16 "
          f"{peak / 1e12 if peak else 'unknown'} TFLOP/s per chip; jax {jax.__version__}", flush=True)
    tmp = tempfile.mkdtemp(prefix="gpu_check_")
    if args.smoke:
        common, fast, slow, image_size = ["train.batch_size=16", "eval.batch_size=16"], [], [], 64
        steps, arg = min(args.steps, 5), "tiny"
        args.rerank_queries, args.rerank_k = min(args.rerank_queries, 16), min(args.rerank_k, 8)
    else:
        vocab = write_vocab(os.path.join(tmp, "vocab.txt"), 30522)
        common, fast, slow, image_size = REALISTIC + [f"data.tokenizer={vocab}"], FAST_TOWERS, SLOW_TOWERS, 224
        steps, arg = args.steps, ""
    load = lambda name, extra: config_lib.load_config(os.path.join(REPO, "configs", f"{name}:{arg}"),
                                                      ["eval.every=0", *common, *extra])
    rows, slow_run = [], None
    tasks = args.tasks.split(",")
    teacher_dir = os.path.join(tmp, "slow")
    for task in ("slow", "fast", "distill"):  # slow first: it is the distillation teacher
        if task not in tasks and not (task == "slow" and "distill" in tasks):
            continue
        if task == "fast":
            cfg = load("shapes_fast.py", fast)
        elif task == "slow":
            cfg = load("shapes_slow.py", slow)
        else:
            cfg = load("shapes_distill.py", fast + [f"distill.teacher_workdir={teacher_dir}"])
        t0 = time.perf_counter()
        row, run, state = bench_task(cfg, teacher_dir if task == "slow" else "", steps if task in tasks else 1,
                                     args.max_seconds, peak, image_size)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        if task in tasks:
            rows.append(row)
            print(f"[gpu_check] {json.dumps(row)}", flush=True)
        if task == "slow":
            slow_run, slow_state = run, state
    if slow_run is not None:
        t0 = time.perf_counter()
        row = bench_rerank(slow_run, slow_state, args.rerank_queries, args.rerank_k, image_size)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"[gpu_check] {json.dumps(row)}", flush=True)
    print("\n| task | steps | batch | step ms | examples/s | GFLOP/step | MFU |\n|---|---|---|---|---|---|---|")
    for r in rows:
        if r["task"] == "slow_rerank":
            print(f"| slow re-ranking | {r['queries']} queries x K={r['k']} | | {r['ms_per_query']} per query "
                  f"| {r['pairs_per_s']} pairs/s | | |")
        else:
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (peak unknown)"
            print(f"| {r['task']} | {r['steps']} | {r['batch']} | {r['step_ms']} | {r['examples_per_s']} "
                  f"| {r['gflops_per_step']} | {mfu} |")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"device": dev.device_kind, "devices": jax.device_count(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
