"""``fastslow bench retrieval`` and ``fastslow bench serve``.

``bench serve`` (``serve`` below) is a loopback load test of the HTTP server: see its docstring.
``bench retrieval``: time per query against gallery size N (a table, JSON and a PNG plot).

Rows per N (ms per query; batched = ``--queries`` queries at once, single = one query per call):

* ``slow_exhaustive``: Slow scores the query against every image (visual keys/values cached), with
  the real Slow model. Measured up to ``--slow-max`` images (the 1,000 real test images' caches are
  cycled to make N pairs); beyond, the measured per-pair cost times N, labelled ``extrapolated``.
* ``exact_jnp``: exact top-k over blocks of rows (``ann.exact_topk``: ``parallel.sharded_top_k`` per block), batched; ``faiss_flat``: faiss
  ``IndexFlatIP``, batched (the reference an exact search has to match).
* ``scann``: the index ``fastslow index`` would build for N (``ann.scann_params``), batched and
  single-query; ``recall@10`` against the exact top 10.
* ``faiss_ivf``: ``IndexIVFFlat`` (sqrt(N) lists), ``nprobe`` doubled until its recall@10 is at least
  ScaNN's (equal recall), batched.
* ``scann+slow K``: one query end to end as the server runs it: text tower + single-query ScaNN +
  Slow scoring of the top K (cached keys/values of real images; the candidates' ids are taken modulo
  the real gallery, which does not change the cost).

Galleries are synthetic clustered unit vectors of the model's embedding dimension (one 1M-point
mixture of Gaussians; smaller N are its prefixes); queries are fresh draws from the same mixture.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastslow_jax.serving import ann

log = logging.getLogger(__name__)


def clustered(n: int, dim: int, *, clusters: int = 2000, spread: float = 1.0, seed: int = 0,
              sample_seed: int = 1) -> np.ndarray:
    """n unit vectors from a mixture of ``clusters`` Gaussians around random unit centres (``seed``
    fixes the centres, ``sample_seed`` the draws)."""
    centres = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(sample_seed)
    out = np.empty((n, dim), np.float32)
    assign = rng.integers(0, clusters, n)
    for s in range(0, n, 200_000):
        e = min(n, s + 200_000)
        x = centres[assign[s:e]] + (spread / math.sqrt(dim)) * rng.standard_normal((e - s, dim)).astype(np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _best_of(fn, reps: int = 2) -> float:
    """Best wall time (s) of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, truth)]))


def retrieval(workdir: str, sizes, *, queries: int = 1000, slow_max: int = 10000, out: str = "bench",
              progress=lambda m: print(f"[bench] {m}", flush=True)) -> list[dict]:
    try:
        import faiss
    except ImportError:
        raise RuntimeError("fastslow bench needs faiss-cpu and matplotlib: FASTSLOW_EXTRAS=bench bash "
                           "launch/_env.sh (or pip install -e '.[bench]' -c requirements/constraints.txt)") from None
    from fastslow_jax.retrieval.evaluate import SlowScorer, load_split
    from fastslow_jax.serving import engine

    models = engine.load_models(workdir)
    if models.slow_run is None:
        raise ValueError(f"{workdir} has no slow/ run: the benchmark needs a pipeline workdir (Fast and Slow)")
    threads = os.cpu_count()
    progress(f"model {models.workdir}: embeds with {models.fast_name}, re-ranks with slow; {threads} CPU threads")

    # ---------------------------------------------------------------- real-model costs (text tower, Slow)
    cfg = models.slow_run.config
    split = load_split(cfg, cfg.data.test_split)
    slow = SlowScorer(models.slow_run)
    st = models.slow_state
    cache = slow.gallery_cache(st, split)
    n_real = split.num_images
    captions = split.captions[: max(64, slow.query_tile)]
    fm = models
    graphdef, tower = fm.fast_run.graphdef, fm.tower
    from flax import nnx

    text_fn = jax.jit(lambda p, r, t: (getattr(nnx.merge(graphdef, p, r), tower) if tower
                                       else nnx.merge(graphdef, p, r)).encode_text(t))
    tok1 = jnp.asarray(fm.fast_run.tokenizer(captions[:1]))
    text_ms = 1e3 * _best_of(lambda: text_fn(fm.fast_state["params"], fm.fast_state["rest"], tok1).block_until_ready(), 5)
    progress(f"text tower: {text_ms:.2f} ms per query")

    # Slow exhaustive: query_tile captions against image tiles of the real cache, cycled to N pairs
    nt = slow.image_tile
    tiles = [jax.tree.map(lambda x: x[s:s + nt], cache) for s in range(0, n_real - nt + 1, nt)]
    qtok = next(iter(slow._length_sorted_batches(captions[: slow.query_tile], slow.query_tile)))[1]
    qtok = jnp.asarray(qtok)[:, None]

    def slow_exhaustive(n):
        outs = [slow._score_fn(st["params"], st["rest"], qtok, tiles[t % len(tiles)]) for t in range(-(-n // nt))]
        jax.block_until_ready(outs)

    slow_pair_ms = None
    slow_rows = {}
    for n in sorted(sizes):
        if n <= slow_max:
            sec = _best_of(lambda: slow_exhaustive(n), 1)
            slow_rows[n] = (1e3 * sec / slow.query_tile, "measured")
            slow_pair_ms = 1e3 * sec / slow.query_tile / (-(-n // nt) * nt)
            progress(f"slow exhaustive N={n}: {slow_rows[n][0]:.1f} ms per query (measured)")
    if slow_pair_ms is None:
        raise ValueError(f"--slow-max {slow_max} is below every size; Slow needs at least one measured N")
    for n in sizes:
        slow_rows.setdefault(n, (slow_pair_ms * n, "extrapolated"))

    # Slow scoring of K candidates for one query (fixed shapes as in the server)
    stok = models.slow_run.tokenizer(captions[:1])
    stok = stok[:, : slow._bucket((stok != 0).sum(), stok.shape[1])]

    def slow_k(cands):
        return slow.score_candidates(st, stok, cands[None] % n_real, cache=cache).block_until_ready()

    # ---------------------------------------------------------------- synthetic galleries
    dim = int(text_fn(fm.fast_state["params"], fm.fast_state["rest"], tok1).shape[-1])
    nmax = max(sizes)
    t0 = time.perf_counter()
    data = clustered(nmax, dim)
    qs = clustered(queries, dim, sample_seed=7)  # fresh draws from the same mixture
    progress(f"synthetic gallery {nmax} x {dim} in {time.perf_counter() - t0:.1f} s")

    rows = []
    for n in sorted(sizes):
        db = data[:n]
        row = {"N": n, "dim": dim, "queries": queries, "threads": threads, "text_ms": text_ms,
               "slow_exhaustive_ms": slow_rows[n][0], "slow_exhaustive": slow_rows[n][1]}
        # exact: ann.exact_topk (parallel.sharded_top_k over blocks), and faiss IndexFlatIP
        truth = None

        def run_exact():
            nonlocal truth
            truth = ann.exact_topk(qs, db, 10)[0]
        row["exact_jnp_ms"] = 1e3 * _best_of(run_exact) / queries
        flat = faiss.IndexFlatIP(dim)
        flat.add(db)
        row["faiss_flat_ms"] = 1e3 * _best_of(lambda: flat.search(qs, 10)) / queries
        _, fi = flat.search(qs, 10)
        row["exact_agreement@10"] = recall_at(fi, truth)
        del flat
        # ScaNN, as `fastslow index` builds it
        t0 = time.perf_counter()
        index = ann.AnnIndex.build(db)
        row["scann_build_s"] = time.perf_counter() - t0
        row["scann"] = index.params["kind"]
        ids = None

        def run_scann():
            nonlocal ids
            ids = index.search(qs, 10)[0]
        row["scann_ms"] = 1e3 * _best_of(run_scann) / queries
        row["scann_recall@10"] = recall_at(ids, truth)
        row["scann_speedup_vs_exact"] = min(row["exact_jnp_ms"], row["faiss_flat_ms"]) / row["scann_ms"]
        single = qs[:200]
        row["scann_1q_ms"] = 1e3 * _best_of(lambda: [index.search(q[None], 50) for q in single], 3) / len(single)
        for k in (10, 50):
            cands = [index.search(q[None], k)[0][0] for q in single[:20]]
            row[f"slow_k{k}_ms"] = 1e3 * _best_of(lambda: [slow_k(c) for c in cands], 3) / len(cands)
            row[f"scann_slow_k{k}_ms"] = text_ms + row["scann_1q_ms"] + row[f"slow_k{k}_ms"]
        del index
        # faiss IVF at equal recall
        nlist = max(1, int(round(math.sqrt(n))))
        quant = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quant, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        t0 = time.perf_counter()
        train = db if n <= 100_000 else db[np.random.default_rng(0).choice(n, 100_000, replace=False)]
        ivf.train(train)
        ivf.add(db)
        row["faiss_ivf_build_s"] = time.perf_counter() - t0
        nprobe = 1
        while True:
            ivf.nprobe = nprobe
            _, ii = ivf.search(qs, 10)
            rec = recall_at(ii, truth)
            if rec >= row["scann_recall@10"] or nprobe >= nlist:
                break
            nprobe = min(nlist, nprobe * 2)
        row.update({"faiss_ivf_nlist": nlist, "faiss_ivf_nprobe": nprobe, "faiss_ivf_recall@10": rec,
                    "faiss_ivf_ms": 1e3 * _best_of(lambda: ivf.search(qs, 10)) / queries})
        del ivf, quant
        rows.append(row)
        progress(f"N={n}: exact {row['exact_jnp_ms']:.4f} ms/q (faiss flat {row['faiss_flat_ms']:.4f}), ScaNN "
                 f"{row['scann_ms']:.4f} ms/q recall@10 {row['scann_recall@10']:.3f} "
                 f"({row['scann_speedup_vs_exact']:.1f}x exact), IVF nprobe {nprobe} {row['faiss_ivf_ms']:.4f} ms/q "
                 f"recall {rec:.3f}; ScaNN->Slow K=10 {row['scann_slow_k10_ms']:.2f} ms")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "retrieval.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    print(format_table(rows))
    plot(rows, os.path.join(out, "retrieval.png"))
    print(f"wrote {out}/retrieval.json and {out}/retrieval.png")
    return rows


def format_table(rows) -> str:
    cols = [("N", "N", "{}"), ("slow_exhaustive_ms", "Slow exh. ms", "{:.1f}"), ("slow_exhaustive", "", "{}"),
            ("exact_jnp_ms", "exact jnp ms", "{:.4f}"), ("faiss_flat_ms", "faiss flat ms", "{:.4f}"),
            ("scann_ms", "ScaNN ms", "{:.4f}"), ("scann", "", "{}"), ("scann_recall@10", "R@10", "{:.3f}"),
            ("scann_speedup_vs_exact", "x exact", "{:.1f}"), ("faiss_ivf_ms", "IVF ms", "{:.4f}"),
            ("faiss_ivf_recall@10", "IVF R@10", "{:.3f}"), ("faiss_ivf_nprobe", "nprobe", "{}"),
            ("scann_1q_ms", "ScaNN 1q ms", "{:.3f}"), ("scann_slow_k10_ms", "ScaNN->Slow10 ms", "{:.2f}"),
            ("scann_slow_k50_ms", "ScaNN->Slow50 ms", "{:.2f}")]
    table = [[h for _, h, _ in cols]] + [[f.format(r[k]) for k, _, f in cols] for r in rows]
    widths = [max(len(x[i]) for x in table) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(x, widths)) for x in table]
    note = ("ms per query; exact/ScaNN/IVF batched over the queries; ScaNN 1q and ScaNN->Slow one query per call "
            "(text tower + ScaNN + Slow on K cached candidates)")
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], note])


def plot(rows, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["N"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    meas = [(r["N"], r["slow_exhaustive_ms"]) for r in rows if r["slow_exhaustive"] == "measured"]
    extra = [(r["N"], r["slow_exhaustive_ms"]) for r in rows if r["slow_exhaustive"] != "measured"]
    if meas:
        ax.plot(*zip(*meas), "o-", color="tab:red", label="Slow exhaustive (measured)")
    if extra:
        ax.plot(*zip(*(meas[-1:] + extra)), "o--", color="tab:red", alpha=0.6, label="Slow exhaustive (extrapolated)")
    for key, label, style in (("exact_jnp_ms", "Fast exact (jnp, batched)", "s-"),
                              ("faiss_flat_ms", "faiss IndexFlatIP (batched)", "x:"),
                              ("scann_ms", "Fast ScaNN (batched)", "^-"),
                              ("faiss_ivf_ms", "faiss IVF, equal recall (batched)", "v:"),
                              ("scann_1q_ms", "Fast ScaNN (one query)", "^--"),
                              ("scann_slow_k10_ms", "Fast ScaNN -> Slow K=10 (one query)", "D-"),
                              ("scann_slow_k50_ms", "Fast ScaNN -> Slow K=50 (one query)", "D--")):
        ax.plot(ns, [r[key] for r in rows], style, label=label)
    for r in rows:
        ax.annotate(f"R@10 {r['scann_recall@10']:.2f}", (r["N"], r["scann_ms"]), textcoords="offset points",
                    xytext=(4, -12), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size N")
    ax.set_ylabel("ms per query")
    ax.set_title(f"text->image retrieval time vs gallery size ({rows[0]['threads']} CPU threads, dim {rows[0]['dim']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- serving load
def _percentile(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _same_answer(got, want, atol_fast: float = 1e-4, atol_slow: float = 2e-3) -> bool:
    """A served answer (loadgen.answer_key, rounded) against the unbatched engine's (exact)."""
    if [g[0] for g in got] != [w[0] for w in want]:
        return False
    for g, w in zip(got, want):
        if abs(g[1] - w[1]) > atol_fast or (g[2] is None) != (w[2] is None):
            return False
        if g[2] is not None and abs(g[2] - w[2]) > atol_slow:
            return False
    return True


class _LoopbackServer:
    """``server.make_app`` on uvicorn in a thread, bound to 127.0.0.1 on a free port, until closed."""

    def __init__(self, eng, **settings):
        import threading
        import urllib.error
        import urllib.request

        from fastslow_jax.serving import server
        self.app = server.make_app(eng, **settings)
        sock = server.bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server = server.make_server(self.app, graceful_s=10)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.perf_counter() + 600
        while time.perf_counter() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=10) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError("the benchmark's server did not become ready within 600 s")

    @property
    def batcher(self):
        return self.app.state.batcher

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _load(port: int, clients: int, seconds: float, max_requests: int, rerank: int) -> dict:
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "fastslow_jax.serving.loadgen", "--port", str(port), "--clients", str(clients),
           "--seconds", str(seconds), "--max-requests", str(max_requests), "--rerank", str(rerank),
           "--request-timeout", "30"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if r.returncode != 0:
        raise RuntimeError(f"the load generator failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)


def serve(index: str, workdir: str | None = None, *, clients=(1, 16, 64), reranks=(0, 10), seconds: float = 4.0,
          max_requests: int = 20000, max_batch: int = 16, max_wait_ms: float = 2.0, queue_size: int = 256,
          overflow_queue: int = 8, out: str = "bench", eng=None,
          progress=lambda m: print(f"[bench] {m}", flush=True)) -> dict:
    """``fastslow bench serve``: QPS and latency percentiles of the HTTP server on loopback for every
    (batching on / off, rerank, clients) cell, then an overflow run (64 clients, a queue of
    ``overflow_queue``); every served answer is checked against the unbatched engine. Writes
    ``out``/serve.json and prints a table. ``eng``: an already loaded SearchEngine of ``index``."""
    from fastslow_jax.serving import engine

    if seconds <= 0 or seconds > 60:
        raise ValueError(f"--seconds must be in (0, 60] (each cell's bound), got {seconds}")
    if not clients or min(clients) < 1 or max(clients) > 256:
        raise ValueError(f"--clients must be counts between 1 and 256, got {clients}")
    if not reranks or min(reranks) < 0 or max(reranks) > engine.MAX_RERANK:
        raise ValueError(f"--rerank must be values between 0 and {engine.MAX_RERANK}, got {reranks}")
    eng = eng or engine.SearchEngine(index, workdir, max_batch=max_batch)
    if eng.max_batch < max_batch:
        raise ValueError(f"the engine compiles batches of up to {eng.max_batch}, less than --max-batch {max_batch}")
    if any(reranks) and not eng.can_rerank:
        raise ValueError(f"{index}: its model has no Slow run, so --rerank must be 0")
    compiles = [0]

    def count_compiles(event, _secs, **_kw):
        compiles[0] += event == "/jax/core/compile/backend_compile_duration"
    jax.monitoring.register_event_duration_secs_listener(count_compiles)
    try:
        return _serve(eng, index, compiles, clients, reranks, seconds, max_requests, max_batch, max_wait_ms,
                      queue_size, overflow_queue, out, progress)
    finally:
        jax.monitoring.unregister_event_duration_listener(count_compiles)


def _serve(eng, index, compiles, clients, reranks, seconds, max_requests, max_batch, max_wait_ms, queue_size,
           overflow_queue, out, progress) -> dict:
    from fastslow_jax.serving import loadgen
    threads = os.cpu_count()
    t0 = time.perf_counter()
    n_shapes = eng.warm_up()
    warm_s = time.perf_counter() - t0
    progress(f"index {index}: {len(eng.items)} images; compiled {n_shapes} shapes in {warm_s:.1f} s; {threads} CPU threads")
    refs = {(q, rr): loadgen.answer_key(eng.search(q, 10, rr)) for q in loadgen.QUERIES for rr in reranks}
    refs = {key: [[i, f, s] for i, f, s in v] for key, v in refs.items()}
    after_warm = compiles[0]

    def summarize(res: dict, batcher, before: dict, **cell) -> dict:
        lat = np.asarray(res["latency_s"]) * 1e3
        status = np.asarray(res["status"])
        ok = lat[status == 200]
        busy = lat[status == 503]
        sizes = {b: n - before.get(b, 0) for b, n in batcher.batch_sizes.items() if n - before.get(b, 0)}
        mismatches = sum(not _same_answer(a, refs[(q, res["rerank"])])
                         for q, seen in res["answers"].items() for a in seen)
        row = {**cell, "clients": res["clients"], "rerank": res["rerank"], "seconds": res["elapsed_s"],
               "requests": int(len(status)), "ok": int(len(ok)), "qps": len(ok) / res["elapsed_s"],
               "p50_ms": _percentile(ok, 50), "p95_ms": _percentile(ok, 95), "p99_ms": _percentile(ok, 99),
               "max_ms": float(lat.max()) if len(lat) else None,
               "busy_503": int(len(busy)), "busy_p99_ms": _percentile(busy, 99), "retry_after": res["retry_after"],
               "other_status": sorted({int(s) for s in status if s not in (200, 503, 0, -1)}),
               "hung": int((status == 0).sum()), "connection_errors": int((status == -1).sum()),
               "mean_batch": (sum(b * n for b, n in sizes.items()) / sum(sizes.values())) if sizes else None,
               "distinct_answers": sum(len(v) for v in res["answers"].values()), "mismatches": int(mismatches)}
        progress(f"{'batching' if cell['batching'] else 'no batching'} (max {cell['max_batch']}, queue "
                 f"{cell['queue_size']}) rerank {row['rerank']:>2} clients {row['clients']:>2}: {row['qps']:.0f} q/s, "
                 f"p50 {row['p50_ms'] or 0:.1f} p99 {row['p99_ms'] or 0:.1f} ms, 503s {row['busy_503']}, hung "
                 f"{row['hung']}, mismatches {row['mismatches']}")
        return row

    rows = []
    # both servers up at once (one engine, its lock between them); the cells of a pair run back to back,
    # so that batching on and off see the same machine (this CPU may be shared)
    servers = {True: _LoopbackServer(eng, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size),
               False: _LoopbackServer(eng, max_batch=1, max_wait_ms=0.0, queue_size=queue_size)}
    try:
        for rr in reranks:
            for c in clients:
                for batching in (True, False):
                    srv = servers[batching]
                    before = dict(srv.batcher.batch_sizes)
                    res = _load(srv.port, c, seconds, max_requests, rr)
                    rows.append(summarize(res, srv.batcher, before, batching=batching,
                                          max_batch=max_batch if batching else 1, queue_size=queue_size, overflow=False))
    finally:
        for srv in servers.values():
            srv.close()
    srv = _LoopbackServer(eng, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=overflow_queue)
    try:  # overflow: 64 clients against a small queue
        before = dict(srv.batcher.batch_sizes)
        res = _load(srv.port, 64, seconds, max_requests, max(reranks))
        rows.append(summarize(res, srv.batcher, before, batching=True, max_batch=max_batch, queue_size=overflow_queue,
                              overflow=True))
    finally:
        srv.close()
    report = {"index": os.path.abspath(index), "images": len(eng.items), "threads": threads,
              "warm_up_s": warm_s, "shapes": n_shapes, "compiles_after_warm_up": compiles[0] - after_warm,
              "max_wait_ms": max_wait_ms, "rows": rows}
    ratio = _speedup(rows, 16, 10)
    if ratio is not None:
        report["speedup_16_clients_rerank_10"] = ratio
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "serve.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(format_serve_table(report))
    print(f"wrote {out}/serve.json")
    return report


def _speedup(rows, clients: int, rerank: int) -> float | None:
    pick = {r["batching"]: r for r in rows if r["clients"] == clients and r["rerank"] == rerank and not r["overflow"]}
    if True in pick and False in pick and pick[False]["qps"] > 0:
        return pick[True]["qps"] / pick[False]["qps"]
    return None


def format_serve_table(report: dict) -> str:
    head = ["batching", "queue", "rerank", "clients", "q/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "batch",
            "503s", "503 p99 ms", "hung", "lost", "mismatch"]

    def f(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)
    table = [head] + [[f"on ({r['max_batch']})" if r["batching"] else "off", str(r["queue_size"]), str(r["rerank"]),
                       str(r["clients"]), f(r["qps"], "{:.0f}"), f(r["p50_ms"]), f(r["p95_ms"]), f(r["p99_ms"]),
                       f(r["max_ms"]), f(r["mean_batch"]), str(r["busy_503"]), f(r["busy_p99_ms"]), str(r["hung"]),
                       str(r["connection_errors"] + len(r["other_status"])), str(r["mismatches"])]
                      for r in report["rows"]]
    widths = [max(len(x[i]) for x in table) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(x, widths)) for x in table]
    notes = [f"loopback HTTP, k=10; {report['images']} images, {report['threads']} CPU threads; latencies of answered "
             f"(200) requests; batch = mean queries per engine call; lost = connection errors and statuses other "
             f"than 200/503; mismatch = answers differing from the unbatched engine's",
             f"warm-up: {report['shapes']} shapes in {report['warm_up_s']:.1f} s; compilations after warm-up: "
             f"{report['compiles_after_warm_up']}"]
    if "speedup_16_clients_rerank_10" in report:
        notes.append(f"16 clients, rerank 10: batching gives {report['speedup_16_clients_rerank_10']:.2f}x the q/s of no batching")
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], *notes])
