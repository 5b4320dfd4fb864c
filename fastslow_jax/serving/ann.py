"""Nearest-neighbour search over unit-norm embeddings by dot product: a ScaNN searcher plus a delta segment.

* Below ``BRUTE_FORCE_BELOW`` (about 20k) vectors ScaNN scores every vector exactly (brute force);
  above, it partitions into about sqrt(N) leaves (k-means tree), scores with asymmetric hashing
  (anisotropic, 2 dims per block) and re-orders the best candidates with exact dot products.
* Adding vectors does not rebuild: they go to a *delta segment* that is searched exactly (a matmul)
  and merged with ScaNN's results at query time. When the delta grows past ``COMPACT_FRACTION`` of
  the main segment (or on ``compact()``), the ScaNN searcher is rebuilt from the stored embeddings
  (no image is embedded again). ScaNN 1.4.2 has ``upsert`` only for searchers built with Python
  docids, which it serializes with pickle; we never write or load that pickle.
* ``exact_topk`` is the exact reference (``parallel.sharded_top_k`` over blocks of rows) used by the
  delta segment, the tests and the benchmark.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastslow_jax import parallel

BRUTE_FORCE_BELOW = 20_000
COMPACT_FRACTION = 0.1
ANN_FORMAT = 1


def scann_params(n: int, dim: int) -> dict[str, Any]:
    """ScaNN settings sized to ``n`` vectors (stored in the index manifest; search-time knobs included)."""
    if n < BRUTE_FORCE_BELOW:
        return {"kind": "brute_force"}
    leaves = max(2, int(round(math.sqrt(n))))
    return {"kind": "tree_ah", "num_leaves": leaves,
            "leaves_to_search": max(8, int(math.ceil(leaves * 0.1))),
            "training_sample_size": int(min(n, 100_000)),
            "dims_per_block": 2, "anisotropic_quantization_threshold": 0.2,
            "reorder": 200}


def build_searcher(db: np.ndarray, params: dict[str, Any], k: int = 10):
    import scann
    db = np.ascontiguousarray(db, dtype=np.float32)
    b = scann.scann_ops_pybind.builder(db, k, "dot_product")
    if params["kind"] == "brute_force":
        return b.score_brute_force().build()
    b = b.tree(num_leaves=params["num_leaves"], num_leaves_to_search=params["leaves_to_search"],
               training_sample_size=params["training_sample_size"])
    b = b.score_ah(params["dims_per_block"],
                   anisotropic_quantization_threshold=params["anisotropic_quantization_threshold"])
    return b.reorder(params["reorder"]).build()


def exact_topk(queries: np.ndarray, gallery: np.ndarray, k: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product: (indices [Q, k], scores [Q, k]), best first.

    The gallery is scanned in blocks of ``block`` rows, each block's top-k taken by the one exact
    top-k (``parallel.sharded_top_k``, here on one device) and merged with the running winners, so
    memory stays O(Q * block) for any gallery size. Ties go to the lower index."""
    mesh = _one_device_mesh()
    q = jax.device_put(np.asarray(queries, np.float32), parallel.replicated(mesh))
    n = len(gallery)
    k = min(int(k), n)
    best = None
    for start in range(0, n, block):
        g = np.asarray(gallery[start:start + block], np.float32)
        s, i = parallel.sharded_top_k(q, g, min(k, len(g)), mesh)
        best = (s, i + start) if best is None else _merge(*best, s, i + start, min(k, best[0].shape[1] + s.shape[1]))
    return np.asarray(best[1]), np.asarray(best[0])


@functools.lru_cache(maxsize=None)
def _one_device_mesh():
    return parallel.make_mesh({}, jax.devices()[:1])


@functools.partial(jax.jit, static_argnums=(4,))
def _merge(s1, i1, s2, i2, k):
    """The best ``k`` of two candidate lists (stable: the first list wins ties)."""
    top, pos = jax.lax.top_k(jnp.concatenate([s1, s2], 1), k)
    return top, jnp.take_along_axis(jnp.concatenate([i1, i2], 1), pos, 1)


class AnnIndex:
    """Embeddings [N, E] = a main segment (searched by ScaNN) followed by a delta segment (exact)."""

    def __init__(self, embeddings: np.ndarray, main_count: int, params: dict[str, Any], searcher=None):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.main_count = int(main_count)
        self.params = dict(params)
        self.searcher = searcher
        if self.searcher is None and self.main_count:
            self.searcher = build_searcher(self.embeddings[: self.main_count], self.params)

    @classmethod
    def build(cls, embeddings: np.ndarray, params: dict[str, Any] | None = None) -> "AnnIndex":
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or not len(embeddings):
            raise ValueError(f"embeddings must be a non-empty [N, E] array, got shape {embeddings.shape}")
        return cls(embeddings, len(embeddings), params or scann_params(*embeddings.shape))

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def delta_count(self) -> int:
        return len(self.embeddings) - self.main_count

    def add(self, embeddings: np.ndarray) -> bool:
        """Append vectors (they get the next ids); returns True when this triggered a compaction."""
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"new embeddings have shape {embeddings.shape}; the index holds dimension "
                             f"{self.embeddings.shape[1]}")
        self.embeddings = np.concatenate([self.embeddings, embeddings])
        if self.delta_count > COMPACT_FRACTION * self.main_count:
            self.compact()
            return True
        return False

    def compact(self) -> None:
        """Rebuild the ScaNN searcher over all stored embeddings (sized anew); the delta becomes empty."""
        self.params = scann_params(*self.embeddings.shape)
        self.main_count = len(self.embeddings)
        self.searcher = build_searcher(self.embeddings, self.params)

    def search(self, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None,
               reorder: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids [Q, k'], scores [Q, k']) best first, k' = min(k, N); ScaNN on the main segment merged
        with an exact search of the delta segment."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        k = min(int(k), len(self))
        parts_i, parts_s = [], []
        if self.main_count:
            km = min(k, self.main_count)
            kw = {}
            if self.params["kind"] != "brute_force":
                kw = {"leaves_to_search": leaves_to_search or self.params["leaves_to_search"],
                      "pre_reorder_num_neighbors": max(km, reorder or self.params["reorder"])}
            if len(queries) == 1:
                i, s = self.searcher.search(queries[0], final_num_neighbors=km, **kw)
                i, s = np.asarray(i)[None], np.asarray(s)[None]
            else:
                i, s = self.searcher.search_batched_parallel(queries, final_num_neighbors=km, **kw)
            parts_i.append(np.asarray(i, np.int64))
            parts_s.append(np.asarray(s, np.float32))
        if self.delta_count:
            i, s = exact_topk(queries, self.embeddings[self.main_count:], min(k, self.delta_count))
            parts_i.append(np.asarray(i, np.int64) + self.main_count)
            parts_s.append(s)
        ids, scores = np.concatenate(parts_i, 1), np.concatenate(parts_s, 1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)

    # ----------------------------------------------------------------------------- storage
    def save(self, path: str) -> None:
        """Writes ``path``/embeddings.npy, ann.json and scann/ (ScaNN's own files; no pickle)."""
        os.makedirs(path, exist_ok=True)
        np.save(os.path.join(path, "embeddings.npy"), self.embeddings)
        sdir = os.path.join(path, "scann")
        if os.path.isdir(sdir):
            shutil.rmtree(sdir)
        os.makedirs(sdir)
        if self.searcher is not None:
            self.searcher.serialize(sdir, relative_path=True)
        with open(os.path.join(path, "ann.json"), "w", encoding="utf-8") as f:
            json.dump({"format": ANN_FORMAT, "main_count": self.main_count, "count": len(self),
                       "dim": int(self.embeddings.shape[1]), "params": self.params}, f, indent=2)

    @classmethod
    def load(cls, path: str) -> "AnnIndex":
        meta_path = os.path.join(path, "ann.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{path} holds no ann.json: is it an index written by `fastslow index`?")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        emb = np.load(os.path.join(path, "embeddings.npy"), allow_pickle=False)
        if emb.shape != (meta["count"], meta["dim"]):
            raise ValueError(f"{path}/embeddings.npy has shape {emb.shape}, ann.json says "
                             f"({meta['count']}, {meta['dim']})")
        sdir = os.path.join(path, "scann")
        if os.path.exists(os.path.join(sdir, "scann_docids.pkl")):
            raise ValueError(f"{sdir} holds scann_docids.pkl; refusing to unpickle it (this index was not "
                             f"written by fastslow)")
        searcher = None
        if meta["main_count"]:
            import scann
            searcher = scann.scann_ops_pybind.load_searcher(sdir)
        return cls(emb, meta["main_count"], meta["params"], searcher)
