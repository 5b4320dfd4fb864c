"""Gallery indexes and query-time search: Fast embeds and retrieves (ScaNN), Slow re-ranks the top K.

An index directory (``fastslow index``) holds:

* ``manifest.json``: format, model (workdir, fingerprint, which runs embed and re-rank), the Fast
  run's config, embedding dimension, image shape, counts, whether Slow visual tokens are stored;
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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fastslow_jax import config as config_lib
from fastslow_jax import parallel
from fastslow_jax import workdir as workdir_lib
from fastslow_jax.data.gallery import IMAGE_EXTENSIONS, ImageFiles, load_image
from fastslow_jax.data.pipeline import EvalSplit, get_builder
from fastslow_jax.retrieval.evaluate import FastScorer, SlowScorer, combine_scores, rerank_normalize
from fastslow_jax.serving.ann import AnnIndex

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
RERANK_BUCKETS = (10, 20, 50, 100)  # K is padded up to one of these: few compiled shapes
MAX_RERANK = RERANK_BUCKETS[-1]
MAX_K = 100


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


def image_shape(run) -> tuple[int, int, int]:
    """The (H, W, 3) image shape the run was trained on (from its dataset's features)."""
    return tuple(int(d) for d in get_builder(run.config.data, prepare=False).info.features["image"].shape)


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
    else:
        gallery = ImageFiles.from_folder(images, shape)
        if limit:
            gallery = ImageFiles(gallery.paths[:limit], shape)
        ids = list(gallery.paths)
        source = f"images {os.path.abspath(images)}"
    keep = [i for i, x in enumerate(ids) if x not in known]
    if not keep:
        raise ValueError(f"{source} holds no images that are not in the index already" if ids
                         else f"{source} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if len(keep) < len(ids):
        gallery = gallery.subset(keep)
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
        cache = slow.gallery_cache(models.slow_state, _Progress(gallery, "slow visual tokens", progress))
        vpath = os.path.join(out, "visual.npz")
        if add:
            cache = jax.tree.map(lambda a, b: jnp.concatenate([a, b]),
                                 _load_visual(vpath, _abstract_cache(slow, models.slow_state, shape)), cache)
        _save_visual(vpath, cache)

    ann.save(out)
    all_items = old_items + items
    _write_json(os.path.join(out, "items.json"), all_items)
    sources = (manifest or {}).get("sources", []) + [{"source": source, "added": len(items)}]
    manifest = {"format": INDEX_FORMAT,
                "model": {**models.describe(), "fingerprint": fp},
                "config": json.loads(config_lib.to_json(models.fast_run.config)),
                "dim": int(emb.shape[1]), "image_shape": list(shape), "count": len(all_items),
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
    """Loads an index and its model once; ``search`` answers one text query (thread-safe)."""

    def __init__(self, index_dir: str, workdir: str | None = None, *, alpha: float | None = None, devices=None,
                 models: Models | None = None):
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
            like = _abstract_cache(self.slow, m.slow_state, self.shape)
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
        the rest keep their Fast order. Times are in milliseconds."""
        query = self.check(query, int(k), int(rerank))
        with self.lock:
            t0 = time.perf_counter()
            m = self.models
            tokens = m.fast_run.tokenizer([query])
            q = np.asarray(self._text_fn(m.fast_state["params"], m.fast_state["rest"], jnp.asarray(tokens)))
            t1 = time.perf_counter()
            ids, fast_scores = self.ann.search(q, max(k, rerank))
            ids, fast_scores = ids[0], fast_scores[0]
            t2 = time.perf_counter()
            slow_scores, alpha = None, None
            n_rr = min(rerank, len(ids))
            if n_rr:
                slow_scores = self._slow_scores(query, ids[:n_rr])
                alpha = self.alpha_for(n_rr)
                combined = combine_scores(slow_scores, fast_scores[:n_rr], alpha, self.rerank["normalize"])
                order = np.argsort(-combined, kind="stable")
                ids = np.concatenate([ids[:n_rr][order], ids[n_rr:]])
                fast_scores = np.concatenate([fast_scores[:n_rr][order], fast_scores[n_rr:]])
                slow_scores = slow_scores[order]
            t3 = time.perf_counter()
        results = []
        for r, (i, fs) in enumerate(zip(ids[:k], fast_scores[:k])):
            results.append({"rank": r + 1, "index": int(i), "id": self.items[int(i)]["id"],
                            "fast_score": float(fs),
                            "slow_score": float(slow_scores[r]) if slow_scores is not None and r < n_rr else None,
                            "image": f"/image/{int(i)}"})
        return {"query": query, "k": int(k), "rerank": n_rr, "alpha": alpha if n_rr else None,
                "results": results,
                "timings_ms": {"embed": 1e3 * (t1 - t0), "ann": 1e3 * (t2 - t1), "slow": 1e3 * (t3 - t2),
                               "total": 1e3 * (t3 - t0)},
                "index_size": len(self.items)}

    def _slow_scores(self, query: str, cand: np.ndarray) -> np.ndarray:
        """Slow scores of ``query`` against the candidates, in one jitted call of fixed shapes (K padded
        up to a bucket of RERANK_BUCKETS, tokens up to a length bucket)."""
        n = len(cand)
        kb = next(b for b in RERANK_BUCKETS if b >= n)
        padded = parallel.pad_rows(cand, kb)[None]
        tokens = self.models.slow_run.tokenizer([query])
        length = self.slow._bucket((tokens != 0).sum(), tokens.shape[1])
        tokens = tokens[:, :length]
        st = self.models.slow_state
        if self.cache is not None:
            out = self.slow.score_candidates(st, tokens, padded, cache=self.cache)
        else:
            imgs = np.stack([load_image(self.image_path(int(i)), self.shape) for i in padded[0]])[None]
            out = self.slow.score_candidates(st, tokens, padded, images=imgs)
        return np.asarray(out)[0, :n]

    def warm_up(self, k: int = 10, rerank: int = 10) -> None:
        """Compile the common shapes (every query length bucket) before the first real query."""
        max_len = self.models.fast_run.tokenizer.max_len
        for words in range(1, max_len, 16):
            query = " ".join(["a"] * words)
            self.search(query, k, 0)
            if self.can_rerank:
                self.search(query, k, min(rerank, len(self.items)))
