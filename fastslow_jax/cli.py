"""The ``fastslow`` command.

  fastslow train --config configs/shapes_fast.py[:arg] --workdir DIR [--config.a.b=value ...]
  fastslow eval  --workdir DIR [--split test] [--output FILE.json] [--config.a.b=value ...]
  fastslow index --workdir DIR (--dataset NAME[:split] | --images DIR) --out INDEX [--visual-tokens] [--add]
  fastslow search INDEX "query" [--k 10] [--rerank K]
  fastslow serve INDEX [--host 127.0.0.1 --port 8000] [--max-batch 16 --max-wait-ms 2 --queue-size 64 --timeout 10]
  fastslow bench retrieval --workdir DIR [--sizes 1000,10000,100000,1000000] [--out bench]
  fastslow bench serve INDEX [--clients 1,16,64] [--rerank 0,10] [--seconds 4] [--out bench]
  fastslow data build NAME[/config] [--manual-dir DIR] [--data-dir DIR] [--force]

``train`` resumes from the latest checkpoint in DIR when there is one. ``eval`` reads the run's saved
config (DIR/config.json) and its latest checkpoint; ``--config.a.b=value`` overrides apply on top
(e.g. ``--config.eval.batch_size=64``). When DIR is a pipeline workdir (sub-runs fast/, slow/,
slow_lastmap/, distill/, as the demo writes), ``eval`` prints the whole table: Fast, distilled
Fast, Slow, the last-map ablation and Fast(+distilled)+Slow re-ranking for every K.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, RuntimeError, OSError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastslow", description="Fast and Slow text-to-visual retrieval in JAX.",
        epilog="Config fields are overridden with --config.a.b=value (e.g. --config.train.steps=100).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a model from a config",
                       description="Train a model; rerunning on the same workdir resumes from its last checkpoint.")
    t.add_argument("--config", required=True, help="config file, optionally with an argument: path.py[:arg]")
    t.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics, config.json)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    e = sub.add_parser("eval", help="evaluate a trained run (or a pipeline of runs) on a split",
                       description="Retrieval metrics of a trained run; for a pipeline workdir (fast/, slow/, "
                                   "slow_lastmap/, distill/) the whole Fast / Slow / re-ranking table.")
    e.add_argument("--workdir", required=True, help="a training run directory, or a pipeline workdir")
    e.add_argument("--config", default=None,
                   help="config file to use instead of WORKDIR/config.json (the checkpoint must match it)")
    e.add_argument("--split", default=None, help="split to evaluate (default: the config's data.test_split)")
    e.add_argument("--output", default=None, help="write the table as JSON rows to this file")
    for sp in (t, e):
        _add_distributed_args(sp)
    _serving_parsers(sub)
    _data_parsers(sub)
    return p


def _data_parsers(sub) -> None:
    d = sub.add_parser("data", help="prepare datasets", description="Prepare datasets (TFDS array_record).")
    dsub = d.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="build a dataset from local files, with a progress bar and a defect report",
                        description="Build NAME (shapes, jsonl, flickr30k, coco_karpathy, cc3m, vatex, emoji; NAME/config picks "
                                    "a config, e.g. jsonl/allow_absolute) from the files in --manual-dir. Broken "
                                    "rows are repaired or skipped, counted and reported at the end (also written "
                                    "to build_report.json next to the data).")
    b.add_argument("name", help="dataset name, optionally NAME/config")
    b.add_argument("--manual-dir", default=None, help="folder holding the dataset's files in their published layout")
    b.add_argument("--data-dir", default=None, help="where to write the prepared data (default: $FASTSLOW_DATA_DIR "
                                                    "or ~/.cache/fastslow_jax/datasets)")
    b.add_argument("--force", action="store_true", help="rebuild even if the dataset is already built")


ALPHA_HELP = ("order re-ranked results by z(slow) + alpha * z(fast), each z-scored over the K (default: the alpha "
              "the index stores for the nearest K, chosen on validation)")


def _serving_parsers(sub) -> None:
    i = sub.add_parser("index", help="embed a gallery with the Fast tower and build (or add to) a ScaNN index",
                       description="Embed a gallery (a dataset split or a folder of images) with the Fast image "
                                   "tower and write a ScaNN index (brute force below about 20k images, tree + "
                                   "asymmetric hashing + reordering above). With a pipeline workdir the distilled "
                                   "Fast tower embeds and its slow/ run re-ranks at search time.")
    i.add_argument("--workdir", required=True, help="a Fast or distillation run, or a pipeline workdir")
    g = i.add_mutually_exclusive_group(required=True)
    g.add_argument("--dataset", help="NAME[:split] of a built-in dataset (default split: the config's test split)")
    g.add_argument("--images", help="a folder of images (searched recursively: png, jpg, jpeg, webp, bmp, gif)")
    i.add_argument("--out", required=True, help="index directory to write (or to add to, with --add)")
    i.add_argument("--limit", type=int, default=0, help="index the first N images only (0 = all)")
    i.add_argument("--visual-tokens", action="store_true",
                   help="store the Slow visual keys/values (bf16) for re-ranking; otherwise recomputed per query")
    i.add_argument("--add", action="store_true",
                   help="add the images not yet in INDEX (a delta segment; no rebuild until it exceeds 10%%)")
    i.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    s = sub.add_parser("search", help="search an index from the command line",
                       description="Print the top results for a text query with Fast (and Slow) scores and the "
                                   "time spent in each stage.")
    s.add_argument("index", help="index directory written by `fastslow index`")
    s.add_argument("query", help="the text query")
    s.add_argument("--k", type=int, default=10, help="results to print (default 10)")
    s.add_argument("--rerank", type=int, default=0, help="re-rank the Fast top K with Slow (default 0: Fast only)")
    s.add_argument("--workdir", default=None, help="model workdir (default: the one recorded in the index)")
    s.add_argument("--alpha", type=float, default=None, help=ALPHA_HELP)
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    v = sub.add_parser("serve", help="serve a search page and a JSON API for an index",
                       description="Serve /api/search?q=&k=&rerank= and a search page on http://HOST:PORT/.")
    v.add_argument("index", help="index directory written by `fastslow index`")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    v.add_argument("--workdir", default=None, help="model workdir (default: the one recorded in the index)")
    v.add_argument("--alpha", type=float, default=None, help=ALPHA_HELP)
    v.add_argument("--max-batch", type=int, default=16,
                   help="most queries computed together (default 16; 1 = no batching)")
    v.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long a query waits for others to join its batch (default 2 ms)")
    v.add_argument("--queue-size", type=int, default=64,
                   help="most queries waiting; beyond, 503 with Retry-After (default 64)")
    v.add_argument("--timeout", type=float, default=10.0,
                   help="seconds a query may take, queue included, before a 504 (default 10)")

    b = sub.add_parser("bench", help="benchmarks", description="Benchmarks that print figures.")
    bsub = b.add_subparsers(dest="bench", required=True)
    r = bsub.add_parser("retrieval", help="time per query against gallery size: Slow, Fast exact, ScaNN, faiss",
                        description="Time per query against gallery size N: Slow exhaustive (measured up to "
                                    "--slow-max, extrapolated beyond), Fast exact (blocked jnp matmul + top-k, and "
                                    "faiss IndexFlatIP), Fast ScaNN, Fast ScaNN -> Slow (K=10, 50), ScaNN recall@10, "
                                    "faiss IVF at equal recall. Large galleries use synthetic clustered embeddings "
                                    "of the model's dimension; Slow costs come from the real model. Needs the "
                                    "`bench` extra (faiss-cpu, matplotlib).")
    r.add_argument("--workdir", required=True, help="a pipeline workdir (Fast/distilled and slow/ runs)")
    r.add_argument("--sizes", default="1000,10000,100000,1000000", help="comma-separated gallery sizes")
    r.add_argument("--queries", type=int, default=1000, help="queries for the batched ANN/exact timings")
    r.add_argument("--slow-max", type=int, default=10000, help="largest N at which Slow exhaustive is measured")
    r.add_argument("--out", default="bench", help="directory for retrieval.json and retrieval.png")
    sv = bsub.add_parser("serve", help="load test of the HTTP server on loopback: q/s and p50/p95/p99, batching on and off",
                         description="Start the server on 127.0.0.1 (in this process) and drive it with a load generator "
                                     "(its own process, keep-alive connections, bounded by --seconds and "
                                     "--max-requests per cell): q/s and p50/p95/p99 latency for every combination of "
                                     "--clients and --rerank, with batching on (--max-batch) and off (1), then 64 "
                                     "clients against a queue of --overflow-queue (503s, nothing hung or lost). "
                                     "Every answer is checked against the unbatched engine. Writes OUT/serve.json.")
    sv.add_argument("index", help="index directory written by `fastslow index`")
    sv.add_argument("--workdir", default=None, help="model workdir (default: the one recorded in the index)")
    sv.add_argument("--clients", default="1,16,64", help="comma-separated concurrent client counts (default 1,16,64)")
    sv.add_argument("--rerank", default="0,10", help="comma-separated re-ranking K (default 0,10)")
    sv.add_argument("--seconds", type=float, default=4.0, help="length of each cell (default 4 s, at most 60)")
    sv.add_argument("--max-requests", type=int, default=20000, help="most requests in each cell (default 20000)")
    sv.add_argument("--max-batch", type=int, default=16, help="batch size with batching on (default 16)")
    sv.add_argument("--max-wait-ms", type=float, default=2.0, help="batch wait with batching on (default 2 ms)")
    sv.add_argument("--queue-size", type=int, default=256, help="queue of the throughput cells (default 256)")
    sv.add_argument("--overflow-queue", type=int, default=8, help="queue of the overflow run (default 8)")
    sv.add_argument("--out", default="bench", help="directory for serve.json")


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "multi-host", "Several processes (one per host) run the same command on one global mesh. TPU VM pod "
        "slices and SLURM job steps are detected; elsewhere name the coordinator (or set FASTSLOW_COORDINATOR, "
        "FASTSLOW_NUM_PROCESSES, FASTSLOW_PROCESS_ID). FASTSLOW_DISTRIBUTED=tpu|slurm|off forces the choice.")
    g.add_argument("--coordinator", default=None, help="host:port of process 0's coordinator service")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes (with --coordinator)")
    g.add_argument("--process-id", type=int, default=None, help="this process's id, 0..N-1 (with --coordinator)")


def _start_distributed(args) -> None:
    """jax.distributed from the flags or the environment; processes other than 0 log warnings only."""
    import jax
    from fastslow_jax import parallel
    what = parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if jax.process_index() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger(__name__).info("%s", what)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("orbax", "jax._src", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)  # e.g. TFDS's "OpenCV is not installed" notice
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from fastslow_jax import config as config_lib

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        overrides, rest = config_lib.split_overrides(argv)
    except config_lib.ConfigError as err:
        print(f"fastslow: error: {err}", file=sys.stderr)
        return 2
    args = _parser().parse_args(rest)
    _setup_logging()
    try:
        if args.command in ("train", "eval"):  # the multi-host commands (their parsers carry the flags)
            _start_distributed(args)
        if args.command == "train":
            return _train(args, overrides)
        if args.command == "eval":
            return _eval(args, overrides)
        if args.command in ("index", "search", "serve", "bench"):
            from fastslow_jax.serving import commands
            return getattr(commands, args.command)(args)
        if args.command == "data":
            from fastslow_jax.data import build
            build.build(args.name, manual_dir=args.manual_dir, data_dir=args.data_dir, force=args.force)
            return 0
    except config_lib.ConfigError as err:
        print(f"fastslow: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastslow: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("FASTSLOW_DEBUG"):
            raise
        print(f"fastslow: error: {err}", file=sys.stderr)
        return 1
    return 0


def _train(args, overrides) -> int:
    from fastslow_jax import config as config_lib
    from fastslow_jax.train import loop

    config = config_lib.load_config(args.config, overrides)
    metrics = loop.train(config, args.workdir, progress=not args.no_progress)
    if metrics:
        print(f"final validation: t2i R@1 {metrics['t2i_r1']:.1f}  R@5 {metrics['t2i_r5']:.1f}  "
              f"R@10 {metrics['t2i_r10']:.1f}  (gallery {metrics['gallery']})")
    return 0


def _eval(args, overrides) -> int:
    from fastslow_jax import config as config_lib
    from fastslow_jax import workdir as workdir_lib
    from fastslow_jax.retrieval import evaluate

    if args.config:
        overrides = [*_config_as_overrides(config_lib.load_config(args.config)), *overrides]
    if workdir_lib.is_pipeline(args.workdir):
        rows = workdir_lib.evaluate_pipeline(args.workdir, args.split, overrides,
                                             progress=lambda m: print(f"[eval] {m}", file=sys.stderr, flush=True))
    else:
        run, state = workdir_lib.load_run(args.workdir, overrides)
        rows = [evaluate.Evaluator(run).evaluate(state, args.split or run.config.data.test_split, timing=True)]
    print(evaluate.format_table(rows))
    if args.output:
        evaluate.write_rows(rows, args.output)
        print(f"wrote {args.output}")
    return 0


def _config_as_overrides(config) -> list[str]:
    from fastslow_jax import config as config_lib
    import json
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in config_lib.flatten(config).items()]


if __name__ == "__main__":
    sys.exit(main())
