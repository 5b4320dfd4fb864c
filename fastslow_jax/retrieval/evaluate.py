"""Retrieval evaluation: Fast (exact), Slow (exhaustive), Fast -> Slow re-ranking, and the table.

* Fast: gallery images and captions are embedded in fixed-size batches (one compiled shape; the last
  batch padded and the padding dropped); scores are exact dot products.
* Slow: each gallery image's cross-attention keys/values are computed once (the *visual cache*);
  captions are scored against images in fixed-size tiles (query batches bucketed by length), so
  scoring never recompiles per query. ``visual="recomputed"`` instead recomputes the candidates'
  visual features for every query (no cache memory, more compute).
* Re-ranking: Fast top-K, then Slow scores the K candidates of a batch of queries in one jitted
  call; they are ordered by ``z(h) + alpha * z(s)`` (``rerank.normalize="zscore"``: each standardised
  over the query's K candidates; alpha = 0: Slow alone, alpha chosen per K on validation) and everything
  below K keeps its Fast order.
* ``ms_per_query`` is measured wall time per text query after compilation: Fast = text tower +
  matmul + top-k against precomputed gallery embeddings; Slow = scoring the query against the
  whole gallery; Fast+Slow = the Fast part plus re-scoring K candidates.
Metric maths lives in ``fastslow_jax.retrieval.metrics`` (pure numpy).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fastslow_jax import parallel
from fastslow_jax.data.pipeline import EvalSplit
from fastslow_jax.retrieval import metrics as metrics_lib

log = logging.getLogger(__name__)

ROW_KEYS = ("dataset", "split", "method", "k", "gallery", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5",
            "i2t_r10", "ms_per_query")


def load_split(config, split: str) -> EvalSplit:
    return EvalSplit(config.data, split, limit=config.eval.get("limit") or None,
                     queries_per_image=config.eval.get("queries_per_image") or None)


def _row(config, split: EvalSplit, method: str, scores: np.ndarray | None, *, ms: float | None, k=None,
         t2i_ranks: np.ndarray | None = None, **extra) -> dict[str, Any]:
    """A table row; from a full score matrix (t2i and i2t) or from t2i ranks alone (re-ranking)."""
    ks = tuple(config.eval.ks)
    if scores is not None:
        m = metrics_lib.retrieval_metrics(scores, split.caption_to_image, ks=ks)
    else:
        m = {f"t2i_r{kk}": metrics_lib.recall_at_k(t2i_ranks, kk) for kk in ks}
        m.update(t2i_medr=metrics_lib.median_rank(t2i_ranks), t2i_meanr=metrics_lib.mean_rank(t2i_ranks))
        m.update({f"i2t_r{kk}": None for kk in ks}, i2t_medr=None, i2t_meanr=None)
    return {"dataset": config.data.name, "split": split.split, "method": method, "k": k,
            "gallery": int(split.num_images), "queries": int(len(split.captions)), **m, "ms_per_query": ms, **extra}


class _Sharded:
    """Shared plumbing: a Run's mesh and batch sharding for fixed-size host batches."""

    def __init__(self, run):
        self.run = run
        self.batch_size = int(run.config.eval.batch_size)
        div = parallel.batch_divisor(run.mesh, run.rules)
        if self.batch_size % div:
            raise ValueError(f"eval.batch_size {self.batch_size} must be divisible by the {div} devices the batch "
                             f"is split over")
        self.params_sh = (run.state_sharding["params"], run.state_sharding["rest"])
        self.repl = parallel.replicated(run.mesh)

    def _global(self, batch: np.ndarray) -> jax.Array:
        rows = len(batch) // jax.process_count()
        pi = jax.process_index()
        return parallel.host_to_global(batch[pi * rows:(pi + 1) * rows], self.run.batch_sharding)


class FastScorer(_Sharded):
    """Embeds splits with the Fast towers of a Run (a Fast model, or a distillation student)."""

    def __init__(self, run, tower: str | None = None):
        super().__init__(run)
        graphdef = run.graphdef

        def get(model):
            return getattr(model, tower) if tower else model

        def image_fn(params, rest, images):
            return get(nnx.merge(graphdef, params, rest)).encode_image(images)

        def text_fn(params, rest, tokens):
            return get(nnx.merge(graphdef, params, rest)).encode_text(tokens)

        def features_fn(params, rest, images):
            return get(nnx.merge(graphdef, params, rest)).image_features(images)

        sh = (*self.params_sh, run.batch_sharding)
        self._image_fn = jax.jit(image_fn, in_shardings=sh, out_shardings=self.repl)
        self._text_fn = jax.jit(text_fn, in_shardings=sh, out_shardings=self.repl)
        self._features_fn = jax.jit(features_fn, in_shardings=sh, out_shardings=self.repl)

        def text_features_fn(params, rest, tokens):
            return get(nnx.merge(graphdef, params, rest)).text_features(tokens)

        self._text_features_fn = jax.jit(text_features_fn, in_shardings=sh, out_shardings=self.repl)

    def embed_images(self, state, split: EvalSplit, *, features: bool = False, progress: bool = False) -> np.ndarray:
        """f(x) of every image of ``split`` [N, E]; ``features``: the pooled backbone features before the
        projection instead [N, C] (what a locked image tower's cache holds)."""
        from tqdm import tqdm

        fn = self._features_fn if features else self._image_fn
        out = []
        bar = tqdm(total=split.num_images,
                   desc=f"image {'features' if features else 'embeddings'} {getattr(split, 'split', '')}".rstrip(),
                   unit="img", disable=not progress or jax.process_index() != 0, mininterval=2.0)
        for images, n in split.image_batches(self.batch_size):
            out.append(np.asarray(fn(state["params"], state["rest"], self._global(images)))[:n])
            bar.update(n)
        bar.close()
        return np.concatenate(out)

    def embed_texts(self, state, texts: Sequence[str], *, features: bool = False) -> np.ndarray:
        """g(y) of ``texts`` [Q, E]; ``features``: the pooled text states before the projection [Q, width]."""
        return np.concatenate([np.asarray(e) for e in self._text_batches(state, texts, features=features)])

    def _text_batches(self, state, texts: Sequence[str], *, features: bool = False):
        tok = self.run.tokenizer
        fn = self._text_features_fn if features else self._text_fn
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            n = len(chunk)
            chunk = parallel.pad_rows(chunk, self.batch_size)
            yield fn(state["params"], state["rest"], self._global(tok(chunk)))[:n]

    def search(self, state, texts: Sequence[str], gallery: np.ndarray, k: int) -> tuple[np.ndarray, float]:
        """Exact top-k image indices [Q, k] for ``texts``, and the measured ms per query (after warm-up).

        The gallery's rows are split over every device of the mesh (and host); per-shard top-k lists
        are merged into the global one (``parallel.sharded_top_k``), identical to one device's."""
        mesh = self.run.mesh
        k = min(k, len(gallery))
        g = parallel.shard_rows(gallery, mesh)
        topk = lambda e: parallel.sharded_top_k(e, g, k, mesh, num_rows=len(gallery))
        warm = list(texts[: self.batch_size])
        jax.block_until_ready([topk(e) for e in self._text_batches(state, warm)])
        t0 = time.perf_counter()
        out = [topk(e) for e in self._text_batches(state, texts)]
        jax.block_until_ready(out)
        ms = 1000.0 * (time.perf_counter() - t0) / max(len(texts), 1)
        return np.concatenate([np.asarray(i) for _, i in out]), ms

    def evaluate(self, state, split: EvalSplit, method: str = "fast", *,
                 timing: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
        """(row, full score matrix [Q, N], gallery embeddings [N, E]) for exact Fast retrieval on ``split``."""
        img = self.embed_images(state, split)
        txt = self.embed_texts(state, split.captions)
        scores = np.asarray(jax.jit(lambda a, b: a @ b.T)(txt, img))
        ms = self.search(state, split.captions, img, 10)[1] if timing else None
        return _row(self.run.config, split, method, scores, ms=ms), scores, img


class SlowScorer(_Sharded):
    """Scores (caption, image) pairs with a Slow model of a Run, reusing per-image visual caches."""

    LENGTH_BUCKET = 16
    SHORT_BUCKET = 8

    def __init__(self, run, tower: str | None = None):
        super().__init__(run)
        graphdef = run.graphdef
        ecfg = run.config.eval
        self.query_tile = int(ecfg.slow_query_tile)
        self.image_tile = int(ecfg.slow_image_tile)
        self.pair_budget = int(ecfg.slow_pair_budget)

        def get(model):
            return getattr(model, tower) if tower else model

        def cache_fn(params, rest, images):
            return get(nnx.merge(graphdef, params, rest)).visual_cache(images)

        def score_fn(params, rest, tokens, cache):
            # tokens [Qt, 1, L] against cache leaves [Nt, ...] (a gallery tile) or [Qt, K, ...] (candidates)
            return get(nnx.merge(graphdef, params, rest)).score_with_cache(tokens, cache)

        def candidates_fn(params, rest, tokens, cache, cand):
            # tokens [Qb, 1, L] against each query's cached candidates cand [Qb, K] (gathered inside the jit;
            # the query-side work before the first cross-attention is shared by the K candidates)
            gathered = jax.tree.map(lambda x: x[cand], cache)
            return get(nnx.merge(graphdef, params, rest)).score_with_cache(tokens, gathered)

        def candidates_images_fn(params, rest, tokens, images):
            # recomputed visual features: tokens [Qb, 1, L], candidate images [Qb, K, H, W, 3]
            m = get(nnx.merge(graphdef, params, rest))
            qb, k = images.shape[:2]
            cache = m.visual_cache(images.reshape(qb * k, *images.shape[2:]))
            return m.score_with_cache(tokens, jax.tree.map(lambda x: x.reshape(qb, k, *x.shape[1:]), cache))

        self._cache_fn = jax.jit(cache_fn, in_shardings=(*self.params_sh, run.batch_sharding), out_shardings=self.repl)
        self._score_fn = jax.jit(score_fn)
        self._candidates_fn = jax.jit(candidates_fn)
        self._candidates_images_fn = jax.jit(candidates_images_fn)

    def gallery_cache(self, state, split: EvalSplit):
        return self._concat_caches(state, split.image_batches(self.batch_size))

    def images_cache(self, state, images: np.ndarray):
        """The visual cache of host images [N, H, W, 3] (any N; batches padded to eval.batch_size)."""
        def batches():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                yield parallel.pad_rows(chunk, self.batch_size), len(chunk)
        return self._concat_caches(state, batches())

    def _concat_caches(self, state, batches):
        parts = []
        for images, n in batches:
            c = self._cache_fn(state["params"], state["rest"], self._global(images))
            parts.append(jax.tree.map(lambda x: x[:n], c))
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)

    def _bucket(self, length: int, max_len: int) -> int:
        """Token length rounded up to SHORT_BUCKET when it fits, else to a multiple of LENGTH_BUCKET (few
        compiled shapes, little padding: short labels, e.g. emoji names of 7 tokens on average, are not padded
        to 16), never above max_len."""
        length = int(length)
        if length <= self.SHORT_BUCKET:
            return int(min(max_len, self.SHORT_BUCKET))
        return int(min(max_len, -(-length // self.LENGTH_BUCKET) * self.LENGTH_BUCKET))

    def _length_sorted_batches(self, texts: Sequence[str], batch: int):
        """Token batches [batch, L_bucket] (padded by repeating row 0), with the query indices they hold."""
        tokens = self.run.tokenizer(list(texts))
        lengths = (tokens != 0).sum(1)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            tok = tokens[idx, :self._bucket(lengths[idx].max(), tokens.shape[1])]
            yield idx, parallel.pad_rows(tok, batch)

    def exhaustive(self, state, split: EvalSplit, cache=None,
                   queries: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Slow scores of every caption (or of the captions ``queries`` indexes) against every image [Q, N],
        and ms per query (cache excluded)."""
        cache = self.gallery_cache(state, split) if cache is None else cache
        captions = split.captions if queries is None else [split.captions[i] for i in queries]
        n = split.num_images
        nt = min(self.image_tile, n)
        pad = (-n) % nt
        padded = jax.tree.map(lambda x: parallel.pad_rows(x, n + pad), cache)
        tiles = [jax.tree.map(lambda x: x[s:s + nt], padded) for s in range(0, n + pad, nt)]
        scores = np.zeros((len(captions), n), np.float32)
        p, r = state["params"], state["rest"]
        batches = list(self._length_sorted_batches(captions, self.query_tile))
        for tok in {b.shape[1]: b for _, b in batches}.values():  # compile every length bucket before timing
            jax.block_until_ready(self._score_fn(p, r, jnp.asarray(tok)[:, None], tiles[0]))
        t0 = time.perf_counter()
        for idx, tok in batches:
            tok = jnp.asarray(tok)[:, None]
            row = np.concatenate([np.asarray(self._score_fn(p, r, tok, t)) for t in tiles], axis=1)
            scores[idx] = row[: len(idx), :n]
        ms = 1000.0 * (time.perf_counter() - t0) / max(len(captions), 1)
        return scores, ms

    def rerank_scores(self, state, texts: Sequence[str], candidates: np.ndarray, cache=None,
                      split: EvalSplit | None = None) -> tuple[np.ndarray, float]:
        """Slow scores [Q, K] of each query's K candidate images, and ms per query.

        Queries are scored in batches of about ``eval.slow_pair_budget / K`` (ordered by caption
        length, one compiled shape per length bucket), each against its own K candidates. With
        ``cache`` (from ``gallery_cache``) the candidates' visual keys/values are gathered; without,
        their images are read from ``split`` and their visual features recomputed for every query."""
        q, k = candidates.shape
        budget = self.pair_budget if cache is not None else max(8, self.pair_budget // 8)
        qb = min(max(1, budget // k), -(-q // 8) * 8)  # small jobs are not padded to the full budget
        batches = list(self._length_sorted_batches(texts, qb))
        p, r = state["params"], state["rest"]

        def run(idx, tok):
            cand = parallel.pad_rows(candidates[idx], qb)
            tok = jnp.asarray(tok)[:, None]
            if cache is not None:
                return self._candidates_fn(p, r, tok, cache, jnp.asarray(cand))
            images = split.images(cand.reshape(-1))
            return self._candidates_images_fn(p, r, tok, jnp.asarray(images.reshape(*cand.shape, *images.shape[1:])))

        for idx, tok in {t.shape[1]: (i, t) for i, t in batches}.values():  # compile each length bucket first
            jax.block_until_ready(run(idx, tok))
        out = np.zeros((q, k), np.float32)
        t0 = time.perf_counter()
        for idx, tok in batches:
            out[idx] = np.asarray(run(idx, tok))[: len(idx)]
        return out, 1000.0 * (time.perf_counter() - t0) / max(q, 1)

    def score_candidates(self, state, tokens: np.ndarray, candidates: np.ndarray, *, cache=None,
                         images: np.ndarray | None = None) -> jax.Array:
        """One jitted call, no warm-up or timing: Slow scores [Qb, K] of token rows [Qb, L] against their
        candidates [Qb, K], gathered from ``cache`` (``gallery_cache``) or recomputed from ``images``
        [Qb, K, H, W, 3]. Callers fix the shapes (length buckets, padded K) to avoid recompiling."""
        p, r = state["params"], state["rest"]
        tok = jnp.asarray(tokens)[:, None]
        if cache is not None:
            return self._candidates_fn(p, r, tok, cache, jnp.asarray(candidates))
        return self._candidates_images_fn(p, r, tok, jnp.asarray(images))

    def evaluate(self, state, split: EvalSplit, method: str = "slow",
                 queries: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
        """(row, score matrix) for exhaustive Slow text->image retrieval (visual tokens cached), over every
        caption of ``split`` or over the captions ``queries`` indexes (``query_sample``), each against the
        whole gallery."""
        scores, ms = self.exhaustive(state, split, queries=queries)
        gt = split.caption_to_image if queries is None else split.caption_to_image[queries]
        ranks = metrics_lib.t2i_ranks(scores, gt)
        extra = {} if queries is None else {"queries": int(len(queries))}
        return _row(self.run.config, split, method, None, ms=ms, t2i_ranks=ranks, visual="cached", **extra), scores


def query_sample(config, split: EvalSplit) -> np.ndarray | None:
    """The captions exhaustive Slow scores when ``eval.slow_queries`` = n > 0 cuts the split's queries: n of
    them drawn without replacement by a fixed seed (sorted; the same for every run of the split), else None.
    Exhaustive Slow costs Q x N decoder passes, re-ranking Q x K: the sample bounds the first alone."""
    n, q = int(config.eval.get("slow_queries", 0) or 0), len(split.captions)
    if n < 0:
        raise ValueError(f"eval.slow_queries must be >= 0 (0 = every query), got {n}")
    if n == 0 or n >= q:
        return None
    return np.sort(np.random.default_rng(0).choice(q, size=n, replace=False))


NORMALIZE = ("zscore", "none")


def combine_scores(slow_scores, fast_scores, alpha: float, normalize: str = "zscore") -> np.ndarray:
    """The re-ranking order key of K candidates (last axis): ``slow + alpha * fast``.

    ``normalize="zscore"`` first puts both on one scale per query: each is standardised over the query's K
    candidates (minus its mean, over its standard deviation; a constant row becomes 0), so alpha weighs
    Fast against Slow the same way whatever the caption's length (Slow is a sum of token log-probabilities,
    tens of nats) or the tower's temperature. ``"none"``: the raw sum. alpha = 0 is Slow alone; a large
    alpha keeps Fast's order."""
    slow = np.asarray(slow_scores, np.float64)
    fast = np.asarray(fast_scores, np.float64)
    if normalize == "zscore":
        def z(x):
            sd = x.std(axis=-1, keepdims=True)
            return (x - x.mean(axis=-1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
        slow, fast = z(slow), z(fast)
    elif normalize != "none":
        raise ValueError(f"rerank.normalize must be one of {NORMALIZE}, got {normalize!r}")
    return slow + alpha * fast


def rerank_ranks(fast_scores: np.ndarray, candidates: np.ndarray, slow_scores: np.ndarray,
                 caption_to_image: np.ndarray, alpha: float, normalize: str = "zscore") -> np.ndarray:
    """0-based t2i ranks after re-ranking each query's top-K (``candidates``, best first) by
    ``combine_scores`` of Slow's and Fast's scores; the gallery below K keeps its Fast order (ties count
    against the model)."""
    q, k = candidates.shape
    fast_top = np.take_along_axis(fast_scores, candidates, axis=1)
    combined = combine_scores(slow_scores, fast_top, alpha, normalize)
    gt = caption_to_image
    in_top = candidates == gt[:, None]
    ranks = metrics_lib.t2i_ranks(fast_scores, gt)  # gt outside the top-K keeps its Fast rank (>= K)
    hit = in_top.any(1)
    gt_score = np.where(in_top, combined, -np.inf).max(1)
    others = np.where(in_top, -np.inf, combined)
    ranks[hit] = (others[hit] >= gt_score[hit, None]).sum(1)
    return ranks


def choose_alpha(fast_scores, candidates, slow_scores, caption_to_image, grid: Sequence[float],
                 normalize: str = "zscore") -> float:
    """The alpha of ``grid`` with the best R@1 (then mean rank) after re-ranking; ties -> the smaller alpha."""
    best = None
    for a in sorted(grid):
        ranks = rerank_ranks(fast_scores, candidates, slow_scores, caption_to_image, a, normalize)
        key = (-(ranks == 0).mean(), ranks.mean())
        if best is None or key < best[0]:
            best = (key, a)
    return best[1]


def rerank_normalize(config) -> str:
    """``rerank.normalize`` of a Slow run's config; runs from before the key existed used the raw sum."""
    norm = config.rerank.get("normalize", "none")
    if norm not in NORMALIZE:
        raise ValueError(f"rerank.normalize must be one of {NORMALIZE}, got {norm!r}")
    return norm


def format_table(rows: Sequence[dict]) -> str:
    cols = [("method", "method", "{}"), ("k", "K", "{}"), ("gallery", "gallery", "{}"), ("queries", "queries", "{}"),
            ("t2i_r1", "t2i R@1", "{:.1f}"), ("t2i_r5", "R@5", "{:.1f}"), ("t2i_r10", "R@10", "{:.1f}"),
            ("t2i_medr", "medR", "{:.1f}"), ("i2t_r1", "i2t R@1", "{:.1f}"), ("i2t_r5", "R@5", "{:.1f}"),
            ("i2t_r10", "R@10", "{:.1f}"), ("i2t_medr", "medR", "{:.1f}"), ("ms_per_query", "ms/query", "{:.3f}"),
            ("alpha", "alpha", "{:g}"), ("visual", "visual", "{}")]
    fmt = lambda f, v: "-" if v is None else f.format(v)
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in rows) or c[0] in ("k",)]
    table = [[h for _, h, _ in cols]] + [[fmt(f, r.get(key)) for key, _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table]
    title = f"{rows[0]['dataset']} / {rows[0]['split']}" if rows else ""
    return "\n".join([title, lines[0], "-" * len(lines[0]), *lines[1:]])


def write_rows(rows: Sequence[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(list(rows), f, indent=2)
    os.replace(tmp, path)


class Evaluator:
    """Evaluates one trained run on its splits: Fast runs (and distillation students) with exact Fast
    retrieval, Slow runs with exhaustive Slow retrieval. Splits and compiled functions are reused."""

    def __init__(self, run):
        self.run = run
        task = run.config.task
        self.scorer = SlowScorer(run) if task == "slow" else FastScorer(run, "student" if task == "distill" else None)
        self._splits: dict[str, EvalSplit] = {}

    def split(self, name: str) -> EvalSplit:
        if name not in self._splits:
            self._splits[name] = load_split(self.run.config, name)
        return self._splits[name]

    def evaluate(self, state, split_name: str, *, timing: bool = False) -> dict:
        split = self.split(split_name)
        if isinstance(self.scorer, SlowScorer):
            return self.scorer.evaluate(state, split, queries=query_sample(self.run.config, split))[0]
        return self.scorer.evaluate(state, split, timing=timing)[0]


def evaluate_pipeline(runs: dict, split_name: str | None = None, progress=print) -> list[dict]:
    """The full table for the runs of a pipeline workdir (``{"fast"|"slow"|"slow_lastmap"|"distill":
    (Run, state)}``, as ``workdir.load_pipeline`` reads them): baseline (a Fast run scored alone, e.g. a
    linear probe), fast, fast_distilled, slow, slow_lastmap, and fast(+distilled)+slow re-ranking for every K in
    the Slow run's ``rerank.ks``.

    All rows use the same gallery and queries (the ``eval.limit`` / ``eval.queries_per_image`` of the
    runs' configs), except that exhaustive Slow scores only a seeded sample of the queries when the Slow
    run's ``eval.slow_queries`` cuts them (the Fast rows are then repeated on that sample, as
    ``<method>@slow_queries``), and that with ``eval.fast_full_split`` the Fast rows are
    repeated on the whole split (their ``gallery`` and ``queries`` columns say so): Slow exhaustive
    costs Q x N decoder passes, Fast a matrix product, so the Fast comparison can afford 10x the
    queries. Re-ranking's alpha is chosen per K on the validation split unless ``rerank.alpha`` >= 0
    fixes it.
    """
    any_run = next(iter(runs.values()))[0]
    split_name = split_name or any_run.config.data.test_split
    rows: list[dict] = []
    scored = {}  # method -> (scorer, state, test scores [Q, N], gallery embeddings [N, E])
    split = load_split(any_run.config, split_name)
    for name, method in (("baseline", "baseline"), ("fast", "fast"), ("distill", "fast_distilled")):
        if name in runs:
            run, state = runs[name]  # a Fast run, or a distillation run (its student; weight 0 = the control)
            scorer = FastScorer(run, "student" if run.config.task == "distill" else None)
            row, scores, gallery = scorer.evaluate(state, split.with_image_options(run.config.data), method)
            rows.append(row)
            progress(f"{method}: t2i R@1 {row['t2i_r1']:.1f}")
            scored[method] = (scorer, state, scores, gallery)
    fast_like = {m: v for m, v in scored.items() if m != "baseline"}  # the baseline is a row of its own: not re-ranked
    full = _full_split(any_run.config, split_name, split) if any_run.config.eval.get("fast_full_split") else None
    if full is not None:  # the cheap Fast rows again on every image and caption of the split (less noise)
        for method, (scorer, state, _, _) in scored.items():
            row = scorer.evaluate(state, full.with_image_options(scorer.run.config.data), method)[0]
            rows.append(row)
            progress(f"{method} (whole split, {row['gallery']} images, {row['queries']} queries): "
                     f"t2i R@1 {row['t2i_r1']:.1f}")
    sample = query_sample(runs["slow"][0].config, split) if "slow" in runs else None
    if sample is not None:  # exhaustive Slow on a sample of the queries: the scored rows on the same sample
        for method, (scorer, _, scores, _) in scored.items():
            ranks = metrics_lib.t2i_ranks(scores[sample], split.caption_to_image[sample])
            rows.append(_row(any_run.config, split, f"{method}@slow_queries", None, ms=None, t2i_ranks=ranks,
                             queries=int(len(sample))))
            progress(f"{method} on the {len(sample)} queries of exhaustive Slow: t2i R@1 {rows[-1]['t2i_r1']:.1f}")
    for name in ("slow", "slow_lastmap"):
        if name in runs:
            run, state = runs[name]
            row, _ = SlowScorer(run).evaluate(state, split.with_image_options(run.config.data), name, queries=sample)
            rows.append(row)
            progress(f"{name}: t2i R@1 {row['t2i_r1']:.1f} ({row['ms_per_query']:.1f} ms/query, "
                     f"{row['queries']} queries)")
    if "slow" in runs and fast_like:
        rows += _rerank_rows(runs["slow"], fast_like, split, progress)
    return rows


def _full_split(config, split_name: str, split: EvalSplit) -> EvalSplit | None:
    """The whole split when ``eval.limit`` / ``eval.queries_per_image`` restrict ``split``; else None."""
    if not (config.eval.get("limit") or config.eval.get("queries_per_image")):
        return None  # nothing cut: no second read of the split
    full = EvalSplit(config.data, split_name)
    same = full.num_images == split.num_images and len(full.captions) == len(split.captions)
    return None if same else full


def _rerank_rows(slow_run_state, fast_like: dict, split: EvalSplit, progress) -> list[dict]:
    run, state = slow_run_state
    cfg = run.config
    split = split.with_image_options(cfg.data)  # Slow reads the images as it was trained on them
    ks = [k for k in cfg.rerank.ks if k <= split.num_images]
    slow = SlowScorer(run)
    cache = slow.gallery_cache(state, split)
    val = load_split(cfg, cfg.data.val_split) if cfg.rerank.alpha < 0 else None
    val_cache = slow.gallery_cache(state, val) if val is not None else None
    norm = rerank_normalize(cfg)
    rows = []
    for method, (scorer, fstate, scores, gallery) in fast_like.items():
        alphas = {k: float(cfg.rerank.alpha) for k in ks}
        if val is not None:  # choose alpha per K on validation, never on the test split
            _, vscores, _ = scorer.evaluate(fstate, val.with_image_options(scorer.run.config.data), timing=False)
            vcand = np.argsort(-vscores, axis=1, kind="stable")[:, : max(ks)]
            vslow, _ = slow.rerank_scores(state, val.captions, vcand, cache=val_cache)
            for k in ks:
                alphas[k] = choose_alpha(vscores, vcand[:, :k], vslow[:, :k], val.caption_to_image,
                                         tuple(cfg.rerank.alpha_grid), norm)
        cand_all, fast_ms = scorer.search(fstate, split.captions, gallery, max(ks))
        for k in ks:
            cand = cand_all[:, :k]
            slow_scores, slow_ms = slow.rerank_scores(state, split.captions, cand, cache=cache)
            ranks = rerank_ranks(scores, cand, slow_scores, split.caption_to_image, alphas[k], norm)
            rows.append(_row(cfg, split, f"{method}+slow", None, k=k, ms=fast_ms + slow_ms, t2i_ranks=ranks,
                             alpha=alphas[k], normalize=norm, visual="cached"))
            progress(f"{method}+slow K={k}: t2i R@1 {rows[-1]['t2i_r1']:.1f} ({fast_ms + slow_ms:.2f} ms/query)")
        if method == "fast" and cfg.rerank.recompute_k in ks:  # the no-cache alternative, for the speed record
            k = cfg.rerank.recompute_k
            cand = cand_all[:, :k]
            slow_scores, slow_ms = slow.rerank_scores(state, split.captions, cand, split=split)
            ranks = rerank_ranks(scores, cand, slow_scores, split.caption_to_image, alphas[k], norm)
            rows.append(_row(cfg, split, f"{method}+slow", None, k=k, ms=fast_ms + slow_ms, t2i_ranks=ranks,
                             alpha=alphas[k], normalize=norm, visual="recomputed"))
    return rows
