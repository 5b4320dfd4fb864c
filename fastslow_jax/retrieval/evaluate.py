"""Exact retrieval evaluation of a trained Fast model on a split.

Gallery images and all captions are embedded in fixed-size batches (one compiled shape; the last
batch is padded and the padding dropped). Scores are exact dot products (jnp matmul); the metric
maths is ``fastslow_jax.retrieval.metrics`` (pure numpy). ``ms_per_query`` is the measured wall time
per text query of: tokenised query -> text tower -> matmul against the precomputed gallery
embeddings -> top-k, in query batches of ``eval.batch_size``, after compilation.
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


class Evaluator:
    """Embeds splits with the Fast towers of a ``Run`` and scores them exactly."""

    def __init__(self, run):
        self.run = run
        self.batch_size = int(run.config.eval.batch_size)
        div = parallel.batch_divisor(run.mesh, run.rules)
        if self.batch_size % div:
            raise ValueError(f"eval.batch_size {self.batch_size} must be divisible by the {div} devices the batch "
                             f"is split over")
        graphdef, repl = run.graphdef, parallel.replicated(run.mesh)
        params_sh = (run.state_sharding["params"], run.state_sharding["rest"])

        def image_fn(params, rest, images):
            return nnx.merge(graphdef, params, rest).encode_image(images)

        def text_fn(params, rest, tokens):
            return nnx.merge(graphdef, params, rest).encode_text(tokens)

        self._image_fn = jax.jit(image_fn, in_shardings=(*params_sh, run.batch_sharding), out_shardings=repl)
        self._text_fn = jax.jit(text_fn, in_shardings=(*params_sh, run.batch_sharding), out_shardings=repl)
        self._topk_fn = jax.jit(lambda q, g, k: jax.lax.top_k(q @ g.T, k), static_argnums=2)
        self._splits: dict[str, EvalSplit] = {}

    def split(self, name: str) -> EvalSplit:
        if name not in self._splits:
            self._splits[name] = EvalSplit(self.run.config.data, name, limit=self.run.config.eval.get("limit") or None)
        return self._splits[name]

    def _global(self, batch: np.ndarray) -> jax.Array:
        n, pc, pi = len(batch), jax.process_count(), jax.process_index()
        rows = n // pc
        return parallel.host_to_global(batch[pi * rows:(pi + 1) * rows], self.run.batch_sharding)

    def embed_images(self, state, split: EvalSplit) -> np.ndarray:
        out = []
        for images, n in split.image_batches(self.batch_size):
            emb = self._image_fn(state["params"], state["rest"], self._global(images))
            out.append(np.asarray(emb)[:n])
        return np.concatenate(out)

    def embed_texts(self, state, texts: Sequence[str]) -> np.ndarray:
        return np.concatenate([np.asarray(e) for e in self._text_batches(state, texts)])

    def _text_batches(self, state, texts: Sequence[str]):
        tok = self.run.tokenizer
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            n = len(chunk)
            chunk += [chunk[0]] * (self.batch_size - n)
            yield self._text_fn(state["params"], state["rest"], self._global(tok(chunk)))[:n]

    def time_queries(self, state, texts: Sequence[str], gallery: np.ndarray, k: int = 10) -> float:
        """Milliseconds per query for text tower + exact search (gallery embeddings precomputed)."""
        g = jnp.asarray(gallery)
        k = min(k, len(gallery))
        warm = list(texts[: self.batch_size])
        jax.block_until_ready([self._topk_fn(e, g, k) for e in self._text_batches(state, warm)])
        t0 = time.perf_counter()
        jax.block_until_ready([self._topk_fn(e, g, k) for e in self._text_batches(state, texts)])
        return 1000.0 * (time.perf_counter() - t0) / max(len(texts), 1)

    def evaluate(self, state, split_name: str, *, timing: bool = False) -> dict[str, Any]:
        split = self.split(split_name)
        img = self.embed_images(state, split)
        txt = self.embed_texts(state, split.captions)
        scores = np.asarray(jax.jit(lambda a, b: a @ b.T)(txt, img))
        m = metrics_lib.retrieval_metrics(scores, split.caption_to_image, ks=tuple(self.run.config.eval.ks))
        row = {"dataset": self.run.config.data.name, "split": split_name, "method": "fast", "k": None,
               "gallery": int(split.num_images), "queries": int(len(split.captions)), **m,
               "ms_per_query": self.time_queries(state, split.captions, img) if timing else None}
        return row


def format_table(rows: Sequence[dict]) -> str:
    cols = [("method", "method", "{}"), ("k", "K", "{}"), ("gallery", "gallery", "{}"),
            ("t2i_r1", "t2i R@1", "{:.1f}"), ("t2i_r5", "R@5", "{:.1f}"), ("t2i_r10", "R@10", "{:.1f}"),
            ("t2i_medr", "medR", "{:.0f}"), ("i2t_r1", "i2t R@1", "{:.1f}"), ("i2t_r5", "R@5", "{:.1f}"),
            ("i2t_r10", "R@10", "{:.1f}"), ("i2t_medr", "medR", "{:.0f}"), ("ms_per_query", "ms/query", "{:.3f}")]
    fmt = lambda f, v: "-" if v is None else f.format(v)
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
