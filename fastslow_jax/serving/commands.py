"""The ``fastslow index | search | serve | bench`` subcommands (argument parsing lives in cli.py)."""
from __future__ import annotations

import json
import sys


def index(args) -> int:
    from fastslow_jax.serving import engine
    m = engine.build_index(args.workdir, args.out, dataset=args.dataset, images=args.images, limit=args.limit,
                           visual_tokens=args.visual_tokens, add=args.add, progress=not args.no_progress)
    print(f"index {args.out}: {m['count']} images (dimension {m['dim']}, {m['ann']['kind']}"
          f"{', %d in the delta segment' % m['delta_count'] if m['delta_count'] else ''}), model "
          f"{m['model']['fingerprint']} (embeds: {m['model']['fast']}, re-ranks: {m['model']['slow'] or 'none'}), "
          f"Slow visual tokens {'stored' if m['visual_tokens'] else 'recomputed at query time'}")
    return 0


def search(args) -> int:
    from fastslow_jax.serving import engine
    try:
        engine.check_query(args.query, args.k, args.rerank)
        eng = engine.SearchEngine(args.index, args.workdir, alpha=args.alpha)
        eng.check(args.query, args.k, args.rerank)
    except engine.QueryError as err:
        raise ValueError(str(err)) from None
    eng.search(args.query, args.k, args.rerank)  # compile (first call), then time a second one
    out = eng.search(args.query, args.k, args.rerank)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    t = out["timings_ms"]
    print(f"query: {out['query']!r}  ({out['index_size']} images"
          + (f"; Slow re-ranked the Fast top {out['rerank']}, alpha {out['alpha']:g}" if out["rerank"] else "") + ")")
    print(f"{'rank':>4}  {'fast':>7}  {'slow':>9}  id")
    for r in out["results"]:
        slow = "-" if r["slow_score"] is None else f"{r['slow_score']:.2f}"
        print(f"{r['rank']:>4}  {r['fast_score']:7.4f}  {slow:>9}  {r['id']}")
    print(f"time: text {t['embed']:.2f} ms, ScaNN {t['ann']:.2f} ms, Slow {t['slow']:.2f} ms, "
          f"total {t['total']:.2f} ms (after compilation)")
    return 0


def serve(args) -> int:
    from fastslow_jax.serving import batcher, engine, server
    batcher.check_settings(args.max_batch, args.max_wait_ms, args.queue_size, args.timeout)  # before loading
    eng = engine.SearchEngine(args.index, args.workdir, alpha=args.alpha, max_batch=args.max_batch)
    app = server.make_app(eng, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                          timeout_s=args.timeout)
    sock = server.bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shapes = eng.compiled_shapes()
    print(f"serving {args.index} ({len(eng.items)} images) on http://{host}:{port}/ (API: /docs); compiling "
          f"{len(shapes['text_rows']) + len(shapes['slow'])} shapes first: /readyz answers 200 when done; "
          f"Ctrl-C stops", flush=True)
    server.make_server(app).run(sockets=[sock])
    return 0


def bench(args) -> int:
    from fastslow_jax.serving import bench as bench_lib
    if args.bench == "retrieval":
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
        if not sizes or min(sizes) < 100:
            raise ValueError(f"--sizes {args.sizes!r}: give comma-separated gallery sizes of at least 100")
        bench_lib.retrieval(args.workdir, sizes, queries=args.queries, slow_max=args.slow_max, out=args.out)
    elif args.bench == "serve":
        try:
            clients = tuple(int(x) for x in args.clients.split(",") if x.strip())
            reranks = tuple(int(x) for x in args.rerank.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"--clients {args.clients!r} / --rerank {args.rerank!r}: give comma-separated integers") from None
        bench_lib.serve(args.index, args.workdir, clients=clients, reranks=reranks, seconds=args.seconds,
                        max_requests=args.max_requests, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                        queue_size=args.queue_size, overflow_queue=args.overflow_queue, out=args.out)
    return 0
