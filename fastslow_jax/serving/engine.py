"""Gallery indexes and query-time search: Fast embeds and retrieves (ScaNN), Slow re-ranks the top K.

An index directory (``fastslow index``) holds:

* ``manifest.json``: format, model (workdir, fingerprint, which runs embed and re-rank), the Fast
  run's config, embedding dimension, image shapes (the Fast run's and the Slow run's: each reads the
  images at its own training size), counts, whether Slow visual tokens are stored;
* ``items.json``: per gallery item its id and image path (relative to the index for images copied
  from a dataset, absolute for ``--images DIR``);
* ``embeddings.npy``, ``ann.json``, ``scann/``: the ANN index (``fastslow_jax.serving.ann``);
* ``visual.npz`` (optional): the Slow cross-attention keys/values of every item in bfloat16;
  without it the candidates' visual features are recomputed from their images at query time;
* ``images/``: the images of a dataset gallery, as PNG.

The model *fingerprint* is a SHA-256 of the embedding tower's (and Slow's) parameters and configs:
an index is only ever searched with the model that made it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fastslow_jax import config as config_lib
from fastslow_jax import parallel
from fastslow_jax import workdir as workdir_lib
from fastslow_jax.data.gallery import IMAGE_EXTENSIONS, ImageFiles, load_image
from fastslow_jax.data.pipeline import EvalSplit, get_builder, image_options
from fastslow_jax.retrieval.evaluate import FastScorer, SlowScorer, combine_scores, rerank_normalize
from fastslow_jax.serving.ann import AnnIndex

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
RERANK_CHUNK = 10  # Slow scores a query's candidates in rows of this many (K padded up to a multiple)
MAX_RERANK = 100
MAX_K = 100
ANN_K = max(MAX_K, MAX_RERANK)  # the ANN search always returns this many (fixed shapes; k is a prefix)
DEFAULT_MAX_BATCH = 16


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The row counts a batch of up to ``max_batch`` is padded to: powers of two, then ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"the batch size must be at least 1, got {max_batch}")
    out = [1]
    while out[-1] * 2 < max_batch:
        out.append(out[-1] * 2)
    return tuple(sorted(set(out + [int(max_batch)])))


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``n`` rows (``n`` itself above the largest)."""
    return next((b for b in buckets if b >= n), n)


# --------------------------------------------------------------------------------------------- models
@dataclasses.dataclass
class Models:
    """The Fast embedding tower and (optionally) the Slow re-ranker of a run or pipeline workdir."""
    workdir: str
    fast_run: Any
    fast_state: Any
    tower: str | None  # "student" for a distillation run, None for a Fast run
    fast_name: str  # e.g. "distill (student)"
    slow_run: Any = None
    slow_state: Any = None
    slow_name: str | None = None

    def fast_model(self):
        m = self.fast_run.model(self.fast_state)
        return getattr(m, self.tower) if self.tower else m

    def describe(self) -> dict:
        return {"workdir": self.workdir, "fast": self.fast_name, "slow": self.slow_name}


def load_models(workdir: str, devices=None) -> Models:
    """A Fast or distillation run (no re-ranker), or a pipeline workdir: the distilled Fast tower (or
    the plain Fast run when there is no distill/) embeds, and slow/ re-ranks."""
    devices = devices or jax.devices()[:1]
    workdir = os.path.abspath(workdir)
    if workdir_lib.is_pipeline(workdir):
        fast_dir = workdir_lib.embedding_run(workdir)
        if fast_dir is None:
            raise FileNotFoundError(f"pipeline workdir {workdir} holds neither distill/ nor fast/ to embed with")
        run, state = workdir_lib.load_run(os.path.join(workdir, fast_dir), devices=devices)
        tower = "student" if run.config.task == "distill" else None
        models = Models(workdir, run, state, tower, f"{fast_dir}" + (" (student)" if tower else ""))
        if workdir_lib.is_run(os.path.join(workdir, "slow")):
            models.slow_run, models.slow_state = workdir_lib.load_run(os.path.join(workdir, "slow"), devices=devices)
            models.slow_name = "slow"
        return models
    run, state = workdir_lib.load_run(workdir, devices=devices)
    if run.config.task == "slow":
        raise ValueError(f"{workdir} is a Slow run; index with a Fast or distillation run, or with a pipeline "
                         f"workdir holding fast/ (or distill/) and slow/")
    tower = "student" if run.config.task == "distill" else None
    return Models(workdir, run, state, tower, "." + (" (student)" if tower else ""))


def fingerprint(models: Models) -> str:
    """SHA-256 (first 16 hex digits) of the embedding tower's and Slow's parameters and configs."""
    h = hashlib.sha256()
    parts = [(models.fast_run.config, nnx.state(models.fast_model()))]
    if models.slow_run is not None:
        parts.append((models.slow_run.config, nnx.state(models.slow_run.model(models.slow_state))))
    for cfg, state in parts:
        h.update(config_lib.to_json(cfg.model).encode())
        for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(state), key=lambda t: jax.tree_util.keystr(t[0])):
            arr = np.asarray(leaf)
            h.update(jax.tree_util.keystr(path).encode())
            h.update(str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def image_shape(run) -> tuple[int, ...]:
    """The (H, W, 3) image shape the run was trained on: its dataset's stored shape, with H and W set to the
    run's ``data.image_size`` when that resizes the stored images (e.g. 64 px emoji upsampled to 224 px for
    a Fast run, to 128 px for a Slow run)."""
    stored = tuple(get_builder(run.config.data, prepare=False).info.features["image"].shape)
    size = image_options(run.config.data)[0]
    if size:
        stored = (*stored[:-3], size, size, stored[-1])
    return tuple(int(d) for d in stored)


# --------------------------------------------------------------------------------------------- galleries
class _Progress:
    """Wraps a gallery so that its image batches advance a tqdm bar."""

    def __init__(self, gallery, desc: str, enabled: bool):
        self.gallery, self.desc, self.enabled = gallery, desc, enabled
        self.num_images = gallery.num_images

    def image_batches(self, batch_size: int):
        from tqdm import tqdm
        with tqdm(total=self.num_images, desc=self.desc, unit="img", disable=not self.enabled) as bar:
            for batch, n in self.gallery.image_batches(batch_size):
                yield batch, n
                bar.update(n)


# --------------------------------------------------------------------------------------------- index files
def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_manifest(index_dir: str) -> dict:
    path = os.path.join(index_dir, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{index_dir} holds no manifest.json: is it an index written by `fastslow index`?")
    manifest = _read_json(path)
    if manifest.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}; this fastslow reads format {INDEX_FORMAT}")
    return manifest


def _save_visual(path: str, cache) -> None:
    leaves = [np.asarray(x.astype(jnp.bfloat16)).view(np.uint16) for x in jax.tree.leaves(cache)]
    tmp = path + ".tmp.npz"
    np.savez(tmp, *leaves)
    os.replace(tmp, path)


def _load_visual(path: str, like):
    """The stored bfloat16 visual cache, as the structure and dtypes of ``like`` (an abstract cache)."""
    with np.load(path, allow_pickle=False) as z:
        leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
    ref = jax.tree.leaves(like)
    if len(ref) != len(leaves):
        raise ValueError(f"{path} holds {len(leaves)} arrays; the Slow model's visual cache has {len(ref)}")
    out = [jnp.asarray(x.view(jnp.bfloat16)).astype(r.dtype) for x, r in zip(leaves, ref)]
    return jax.tree.unflatten(jax.tree.structure(like), out)


def _abstract_cache(slow_scorer, state, shape):
    images = jax.ShapeDtypeStruct((1, *shape), jnp.uint8)
    return jax.eval_shape(lambda p, r, x: slow_scorer.run.model({"params": p, "rest": r}).visual_cache(x),
                          state["params"], state["rest"], images)


def rerank_settings(models: Models) -> dict:
    """How this model's re-ranking combines Slow and Fast: ``{"normalize": ..., "alpha": {K: alpha}}``.

    alpha per K is the Slow run's ``rerank.alpha`` when fixed (>= 0, every K of ``rerank.ks``), else the ones
    the pipeline eval chose on validation (``WORKDIR/eval.json``, the rows of this embedding tower); none
    known: no entry (Slow alone)."""
    if models.slow_run is None:
        return {"normalize": "none", "alpha": {}}
    cfg = models.slow_run.config
    norm = rerank_normalize(cfg)
    if float(cfg.rerank.alpha) >= 0:
        return {"normalize": norm, "alpha": {str(k): float(cfg.rerank.alpha) for k in cfg.rerank.ks}}
    path = os.path.join(models.workdir, "eval.json")
    method = ("fast_distilled" if models.tower else "fast") + "+slow"
    alphas = {}
    if os.path.exists(path):
        for r in _read_json(path):
            if r.get("method") == method and r.get("alpha") is not None and r.get("k"):
                alphas[str(int(r["k"]))] = float(r["alpha"])
                norm = r.get("normalize", "none")  # the combination those alphas were chosen for
    return {"normalize": norm, "alpha": alphas}


def build_index(workdir: str, out: str, *, dataset: str | None = None, images: str | None = None,
                limit: int = 0, visual_tokens: bool = False, add: bool = False, progress: bool = True,
                devices=None, models: Models | None = None) -> dict:
    """Embed a gallery (a dataset split or a folder of images) and write, or add to, the index ``out``.

    Returns the manifest. With ``add``, ``out`` must exist and have been made by the same model; items
    already in it (same id) are skipped, new ones go to the ANN index's delta segment."""
    if (dataset is None) == (images is None):
        raise ValueError("give exactly one of --dataset NAME[:split] and --images DIR")
    exists = os.path.exists(os.path.join(out, "manifest.json"))
    if exists and not add:
        raise FileExistsError(f"{out} already holds an index; pass --add to add images to it, or choose a new --out")
    if add and not exists:
        raise FileNotFoundError(f"--add: {out} holds no index to add to")
    models = models or load_models(workdir, devices)
    fp = fingerprint(models)
    manifest = read_manifest(out) if add else None
    if manifest is not None and manifest["model"]["fingerprint"] != fp:
        raise ValueError(f"--add: {out} was made by model {manifest['model']['fingerprint']} "
                         f"({manifest['model']['workdir']}), but {models.workdir} holds model {fp}")
    shape = image_shape(models.fast_run)
    slow_shape = image_shape(models.slow_run) if models.slow_run is not None else shape
    if add:  # indexes from before slow_image_shape was stored computed Slow's tokens at the Fast shape
        slow_shape = tuple(manifest.get("slow_image_shape", manifest["image_shape"]))
    old_items = _read_json(os.path.join(out, "items.json")) if add else []
    known = {it["id"] for it in old_items}

    # the gallery to embed, as (ids, a gallery object, how to store each image)
    if dataset is not None:
        name, _, split_name = dataset.partition(":")
        data_cfg = config_lib.config_from_json(config_lib.to_json(models.fast_run.config.data))
        data_cfg.name = name or data_cfg.name
        split_name = split_name or data_cfg.test_split
        gallery = EvalSplit(data_cfg, split_name, limit=limit or None, queries_per_image=1)
        ids = [f"{data_cfg.name}:{split_name}:{i}" for i in gallery.image_ids]
        source = f"dataset {data_cfg.name}:{split_name}"
        # the same images as the Slow run reads them (its own size)
        slow_gallery = gallery if models.slow_run is None else gallery.with_image_options(models.slow_run.config.data)
    else:
        gallery = ImageFiles.from_folder(images, shape)
        if limit:
            gallery = ImageFiles(gallery.paths[:limit], shape)
        ids = list(gallery.paths)
        source = f"images {os.path.abspath(images)}"
        slow_gallery = ImageFiles(gallery.paths, slow_shape)
    keep = [i for i, x in enumerate(ids) if x not in known]
    if not keep:
        raise ValueError(f"{source} holds no images that are not in the index already" if ids
                         else f"{source} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if len(keep) < len(ids):
        gallery, slow_gallery = gallery.subset(keep), slow_gallery.subset(keep)
        ids = [ids[i] for i in keep]

    os.makedirs(out, exist_ok=True)
    fast = FastScorer(models.fast_run, models.tower)
    emb = fast.embed_images(models.fast_state, _Progress(gallery, "embedding", progress))

    # items: copy dataset images to out/images/ (served from there), keep folder images where they are
    items = []
    if dataset is not None:
        os.makedirs(os.path.join(out, "images"), exist_ok=True)
        from PIL import Image
        for j, (batch, n) in enumerate(gallery.image_batches(64)):
            for b in range(n):
                pos = len(old_items) + len(items)
                rel = os.path.join("images", f"{pos:08d}.png")
                Image.fromarray(batch[b]).save(os.path.join(out, rel))
                items.append({"id": ids[len(items)], "path": rel})
    else:
        items = [{"id": i, "path": i} for i in ids]

    if add:
        ann = AnnIndex.load(out)
        compacted = ann.add(emb)
    else:
        ann = AnnIndex.build(emb)
        compacted = False

    store_visual = manifest["visual_tokens"] if add else bool(visual_tokens and models.slow_run is not None)
    if visual_tokens and models.slow_run is None:
        log.warning("--visual-tokens: %s has no Slow run; nothing to store", workdir)
    if store_visual:
        slow = SlowScorer(models.slow_run)
        cache = slow.gallery_cache(models.slow_state, _Progress(slow_gallery, "slow visual tokens", progress))
        vpath = os.path.join(out, "visual.npz")
        if add:
            cache = jax.tree.map(lambda a, b: jnp.concatenate([a, b]),
                                 _load_visual(vpath, _abstract_cache(slow, models.slow_state, slow_shape)), cache)
        _save_visual(vpath, cache)

    ann.save(out)
    all_items = old_items + items
    _write_json(os.path.join(out, "items.json"), all_items)
    sources = (manifest or {}).get("sources", []) + [{"source": source, "added": len(items)}]
    manifest = {"format": INDEX_FORMAT,
                "model": {**models.describe(), "fingerprint": fp},
                "config": json.loads(config_lib.to_json(models.fast_run.config)),
                "dim": int(emb.shape[1]), "image_shape": list(shape), "slow_image_shape": list(slow_shape),
                "count": len(all_items),
                "main_count": ann.main_count, "delta_count": ann.delta_count, "ann": ann.params,
                "visual_tokens": store_visual, "rerank": rerank_settings(models), "sources": sources}
    _write_json(os.path.join(out, "manifest.json"), manifest)
    log.info("index %s: %d items (%d in the delta segment%s)", out, len(all_items), ann.delta_count,
             "; compacted" if compacted else "")
    return manifest


# --------------------------------------------------------------------------------------------- search
class QueryError(ValueError):
    """A bad query (empty, over-long, out-of-range parameters): the server answers 400 with the message."""


MAX_QUERY_CHARS = 500


def check_query(query: str, k: int, rerank: int) -> str:
    """The stripped query, or a QueryError saying what is wrong with it (no model needed)."""
    query = query.strip() if isinstance(query, str) else ""
    if not query:
        raise QueryError("the query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS} are allowed")
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
    if not 0 <= rerank <= MAX_RERANK:
        raise QueryError(f"rerank must be between 0 and {MAX_RERANK}, got {rerank}")
    return query


class SearchEngine:
    """Loads an index and its model once; ``search`` answers one text query, ``search_batch`` several
    at once (thread-safe; every call pads to the fixed shapes that ``warm_up`` compiles)."""

    def __init__(self, index_dir: str, workdir: str | None = None, *, alpha: float | None = None, devices=None,
                 models: Models | None = None, max_batch: int = DEFAULT_MAX_BATCH):
        self.max_batch = int(max_batch)
        self.batch_buckets = batch_buckets(self.max_batch)
        # Slow rows: up to max_batch queries, and one query's MAX_RERANK candidates, fit in one call
        self.row_buckets = batch_buckets(max(self.max_batch, MAX_RERANK // RERANK_CHUNK))
        self.index_dir = os.path.abspath(index_dir)
        self.manifest = read_manifest(index_dir)
        workdir = workdir or self.manifest["model"]["workdir"]
        self.models = models or load_models(workdir, devices)
        fp = fingerprint(self.models)
        want = self.manifest["model"]["fingerprint"]
        if fp != want:
            raise ValueError(f"index {index_dir} was made by model {want} ({self.manifest['model']['workdir']}), "
                             f"but {self.models.workdir} holds model {fp}; rebuild the index with `fastslow index`")
        self.items = _read_json(os.path.join(index_dir, "items.json"))
        self.ann = AnnIndex.load(index_dir)
        if len(self.items) != len(self.ann):
            raise ValueError(f"{index_dir}: items.json lists {len(self.items)} items, the ANN index {len(self.ann)}")
        self.shape = tuple(self.manifest["image_shape"])
        # Slow's input shape (its own training size); indexes from before the key: the Fast shape
        self.slow_shape = tuple(self.manifest.get("slow_image_shape", self.shape))
        self.lock = threading.Lock()
        m = self.models
        graphdef, tower = m.fast_run.graphdef, m.tower

        def text_fn(params, rest, tokens):
            model = nnx.merge(graphdef, params, rest)
            return (getattr(model, tower) if tower else model).encode_text(tokens)

        self._text_fn = jax.jit(text_fn)
        self.slow = SlowScorer(m.slow_run) if m.slow_run is not None else None
        self.cache = None
        if self.slow is not None and self.manifest.get("visual_tokens"):
            like = _abstract_cache(self.slow, m.slow_state, self.slow_shape)
            self.cache = _load_visual(os.path.join(index_dir, "visual.npz"), like)
        self.alpha = float(alpha) if alpha is not None else None  # None: per K, from the index
        self.rerank = self.manifest.get("rerank") or rerank_settings(self.models)  # indexes before it was stored

    def alpha_for(self, k: int) -> float:
        """Re-ranking's alpha for the Fast top ``k``: ``--alpha`` when given, else the one chosen on
        validation for the nearest K the index stores (the smaller on a tie), else 0 (Slow alone)."""
        if self.alpha is not None:
            return self.alpha
        stored = {int(kk): float(a) for kk, a in self.rerank["alpha"].items()}
        if not stored:
            return 0.0
        return stored[min(stored, key=lambda kk: (abs(kk - k), kk))]

    @property
    def can_rerank(self) -> bool:
        return self.slow is not None

    def image_path(self, item: int) -> str:
        path = self.items[item]["path"]
        return path if os.path.isabs(path) else os.path.join(self.index_dir, path)

    def check(self, query: str, k: int, rerank: int) -> str:
        query = check_query(query, k, rerank)
        if rerank and not self.can_rerank:
            raise QueryError(f"this index's model ({self.models.workdir}) has no Slow run to re-rank with; "
                             f"use rerank=0")
        return query

    def search(self, query: str, k: int = 10, rerank: int = 0) -> dict:
        """Top-k gallery items for ``query``; with ``rerank`` = K > 0 the Fast top K are re-ordered by
        ``combine_scores`` of Slow's and Fast's scores (z-scored over the K, alpha for K: ``alpha_for``) and
        the rest keep their Fast order. Times are in milliseconds.

        The unbatched path: ``search_batch`` of this one query (every shape padded to its bucket)."""
        return self.search_batch([(query, k, rerank)])[0]

    def search_batch(self, requests: Sequence[tuple[str, int, int]], queued_ms: Sequence[float] | None = None
                     ) -> list[dict]:
        """Answers (query, k, rerank) requests computed together: one text-tower call, one ANN search
        and the Slow scoring of every request that re-ranks together (``_slow_scores``: candidates in
        rows of RERANK_CHUNK, one call per token-length bucket present). Each answer equals ``search`` of
        its request alone (up to float rounding). Up to ``max_batch`` requests per step; more are done in steps.
        ``queued_ms``: per request, the time it waited before this call (reported in its timings)."""
        requests = [(self.check(q, int(k), int(r)), int(k), int(r)) for q, k, r in requests]
        queued_ms = list(queued_ms) if queued_ms is not None else [0.0] * len(requests)
        if len(queued_ms) != len(requests):
            raise ValueError(f"queued_ms has {len(queued_ms)} entries for {len(requests)} requests")
        out = []
        for s in range(0, len(requests), self.max_batch):
            out += self._search_step(requests[s:s + self.max_batch], queued_ms[s:s + self.max_batch])
        return out

    def _search_step(self, requests, queued_ms) -> list[dict]:
        n = len(requests)
        queries = [q for q, _, _ in requests]
        with self.lock:
            t0 = time.perf_counter()
            emb = self._embed_texts(queries)
            t1 = time.perf_counter()
            ids, fast_scores = self._ann_search(emb)
            t2 = time.perf_counter()
            n_rr = [min(r, ids.shape[1]) for _, _, r in requests]
            slow_scores = self._slow_scores([(queries[i], ids[i, :n_rr[i]]) for i in range(n) if n_rr[i]])
            t3 = time.perf_counter()
        answers, it = [], iter(slow_scores)
        for i, (query, k, _) in enumerate(requests):
            ids_i, fast_i, slow_i = ids[i], fast_scores[i], next(it) if n_rr[i] else None
            if n_rr[i]:
                ids_i, fast_i, slow_i = self._rerank(ids_i, fast_i, slow_i)
            results = [{"rank": r + 1, "index": int(j), "id": self.items[int(j)]["id"], "fast_score": float(fs),
                        "slow_score": float(slow_i[r]) if slow_i is not None and r < n_rr[i] else None,
                        "image": f"/image/{int(j)}"}
                       for r, (j, fs) in enumerate(zip(ids_i[:k], fast_i[:k]))]
            answers.append({
                "query": query, "k": k, "rerank": n_rr[i], "alpha": self.alpha_for(n_rr[i]) if n_rr[i] else None,
                "results": results,
                "timings_ms": {"queue": float(queued_ms[i]), "embed": 1e3 * (t1 - t0), "ann": 1e3 * (t2 - t1),
                               "slow": 1e3 * (t3 - t2), "total": float(queued_ms[i]) + 1e3 * (t3 - t0)},
                "batch": n, "index_size": len(self.items)})
        return answers

    def _rerank(self, ids: np.ndarray, fast_scores: np.ndarray, slow_scores: np.ndarray):
        """(ids, Fast scores, Slow scores) with the first len(slow_scores) candidates re-ordered by their
        combined score, best first (stable); the rest keep their Fast order."""
        n = len(slow_scores)
        combined = combine_scores(slow_scores, fast_scores[:n], self.alpha_for(n), self.rerank["normalize"])
        order = np.argsort(-combined, kind="stable")
        return (np.concatenate([ids[:n][order], ids[n:]]), np.concatenate([fast_scores[:n][order], fast_scores[n:]]),
                slow_scores[order])

    # ----------------------------------------------------------------------------- fixed-shape stages
    def _embed_texts(self, queries: Sequence[str]) -> np.ndarray:
        """Fast text embeddings [n, E]: one call, rows padded to a batch bucket."""
        m = self.models
        tokens = parallel.pad_rows(m.fast_run.tokenizer(list(queries)), bucket(len(queries), self.batch_buckets))
        emb = self._text_fn(m.fast_state["params"], m.fast_state["rest"], jnp.asarray(tokens))
        return np.asarray(emb)[:len(queries)]

    def _ann_search(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ANN top ANN_K (ids, scores) of each row: one search, rows padded to a batch bucket (the delta
        segment's exact search is jitted per row count); a smaller k is a prefix of it."""
        n = len(emb)
        ids, scores = self.ann.search(parallel.pad_rows(emb, bucket(n, self.batch_buckets)), ANN_K)
        return ids[:n], scores[:n]

    def _slow_scores(self, pairs: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """Slow scores of each (query, candidates) pair, in jitted calls of fixed shapes: one call per
        token-length bucket present (a short query does not pay for a long one's padding; one call when
        all are alike). Each query's candidates are cut into rows of RERANK_CHUNK (the last one padded by
        repeating its first candidate), each row carrying its query's tokens, and the rows are padded to
        a row bucket (more rows than the largest bucket: several calls)."""
        if not pairs:
            return []
        tokens = self.models.slow_run.tokenizer([q for q, _ in pairs])
        lengths = [self.slow._bucket(n, tokens.shape[1]) for n in (tokens != 0).sum(1)]
        out: list[list[np.ndarray]] = [[] for _ in pairs]
        for length in sorted(set(lengths)):
            row_tok, row_cand, owner = [], [], []
            for i, (_, cand) in enumerate(pairs):
                if lengths[i] != length:
                    continue
                for s in range(0, len(cand), RERANK_CHUNK):
                    row_tok.append(tokens[i, :length])
                    row_cand.append(parallel.pad_rows(np.asarray(cand[s:s + RERANK_CHUNK]), RERANK_CHUNK))
                    owner.append(i)
            for row, i in zip(self._score_rows(np.stack(row_tok), np.stack(row_cand)), owner):
                out[i].append(row)
        return [np.concatenate(rows)[:len(cand)] for rows, (_, cand) in zip(out, pairs)]

    def _score_rows(self, tokens: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Slow scores [R, RERANK_CHUNK] of token rows [R, L] against candidate rows [R, RERANK_CHUNK]."""
        st = self.models.slow_state
        top = self.row_buckets[-1]
        out = []
        for s in range(0, len(tokens), top):
            tok, cnd = tokens[s:s + top], cand[s:s + top]
            rb = bucket(len(tok), self.row_buckets)
            tok, cnd = parallel.pad_rows(tok, rb), parallel.pad_rows(cnd, rb)
            if self.cache is not None:
                res = self.slow.score_candidates(st, tok, cnd, cache=self.cache)
            else:
                imgs = {int(j): load_image(self.image_path(int(j)), self.slow_shape) for j in np.unique(cnd)}
                res = self.slow.score_candidates(st, tok, cnd, images=np.stack([[imgs[int(j)] for j in row]
                                                                               for row in cnd]))
            out.append(np.asarray(res)[:len(tokens[s:s + top])])
        return np.concatenate(out)

    def compiled_shapes(self) -> dict[str, list]:
        """Every input shape the search path can produce (what ``warm_up`` compiles)."""
        shapes = {"text_rows": list(self.batch_buckets), "ann_rows": list(self.batch_buckets), "slow": []}
        if self.can_rerank:
            max_len = self.models.slow_run.tokenizer.max_len
            lengths = sorted({self.slow._bucket(n, max_len) for n in range(1, max_len + 1)})
            shapes["slow"] = [(r, length) for r in self.row_buckets for length in lengths]
        return shapes

    def warm_up(self, progress=None) -> int:
        """Compile every shape of ``compiled_shapes`` (batch buckets of the text tower and the ANN search;
        row buckets x token-length buckets of Slow), so that no query compiles afterwards.
        ``progress(done, total)`` after each shape. Returns the number of shapes run."""
        shapes = self.compiled_shapes()
        steps = [("text", rows) for rows in shapes["text_rows"]] + [("slow", rl) for rl in shapes["slow"]]
        with self.lock:
            for done, (kind, arg) in enumerate(steps, 1):
                if kind == "text":
                    self._ann_search(self._embed_texts(["a"] * arg))
                else:
                    rows, length = arg
                    self._score_rows(np.ones((rows, length), np.int32), np.zeros((rows, RERANK_CHUNK), np.int64))
                if progress:
                    progress(done, len(steps))
        return len(steps)
