"""Retrieval metrics in pure numpy: ranks, recall@K, median and mean rank.

Setting: Q captions (queries for text->image, "t2i") and N images (queries for image->text,
"i2t"); each caption describes exactly one image (``caption_to_image[q]`` in ``[0, N)``), and an
image may have any number of captions. ``scores[q, n]`` is the similarity of caption q and image n
(higher is better); Fast and Slow scores alike.

Ranks are 0-based (0 = the ground truth is first). Ties are counted *pessimistically*: a
ground-truth item is placed after every other item with an equal score, so a model that outputs a
constant gets the worst rank, never a lucky 0 (with optimistic or index-order tie breaking, a
collapsed model scores R@1 = 100%).

* t2i: rank(q) = #{images n' != gt(q) : s[q, n'] >= s[q, gt(q)]}.
* i2t: the image's rank is the position of its *first* ground-truth caption when all Q captions
  are sorted by ``scores[:, n]`` (as in the Karpathy / VSE++ evaluation code: min over the gt
  captions of their positions). Other captions of the same image never count against it, so for
  each gt caption c: rank(c) = #{captions c' not of image n : s[c', n] >= s[c, n]}, and the image's
  rank is the min over c, i.e. the count above the best-scoring gt caption.

Reported numbers follow the usual conventions: recall@K in percent (fraction of ranks < K), median
and mean rank 1-based (``np.median(ranks + 1)``).

Memory: the full score matrix is taken as given (Q * N up to ~1e8 is fine) and the work is done in
blocks of captions, so temporaries stay around ``_BLOCK_ELEMENTS`` elements whatever Q is. For
galleries too large for a full matrix, compute top-K indices with an index and use
`ranks_from_topk`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "t2i_ranks",
    "i2t_ranks",
    "ranks_from_topk",
    "recall_at_k",
    "median_rank",
    "mean_rank",
    "retrieval_metrics",
]

# Temporaries per block: about this many elements (bool / int64) at a time.
_BLOCK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _as_scores(scores) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(
            f"scores must be a 2-D [captions, images] array, got shape {scores.shape}"
        )
    kind = scores.dtype.kind
    if kind not in "fiu":
        if "float" in scores.dtype.name:  # bfloat16 / float8 from ml_dtypes (JAX arrays).
            scores = scores.astype(np.float32)
        else:
            raise ValueError(
                f"scores must hold real numbers (float or int), got dtype {scores.dtype}"
            )
    if scores.shape[1] == 0:
        raise ValueError("scores has no images (shape [Q, 0]); ranks need at least one image")
    return scores


def _as_caption_to_image(caption_to_image, num_captions: int, num_images: int | None) -> np.ndarray:
    c2i = np.asarray(caption_to_image)
    if c2i.ndim != 1:
        raise ValueError(
            f"caption_to_image must be a 1-D array of image indices, got shape {c2i.shape}"
        )
    if c2i.size and c2i.dtype.kind not in "iu":
        raise ValueError(
            f"caption_to_image must hold integer image indices, got dtype {c2i.dtype}"
        )
    c2i = c2i.astype(np.int64, copy=False)
    if c2i.shape[0] != num_captions:
        raise ValueError(
            f"caption_to_image has {c2i.shape[0]} entries but there are {num_captions} captions "
            "(rows of scores / topk_indices); they must match"
        )
    bad_mask = c2i < 0
    if num_images is not None:
        bad_mask |= c2i >= num_images
    if bad_mask.any():
        bad = int(np.flatnonzero(bad_mask)[0])
        bound = f"[0, {num_images})" if num_images is not None else "[0, inf)"
        raise ValueError(
            f"caption_to_image[{bad}] = {int(c2i[bad])} is not an image index in {bound}"
        )
    return c2i


def _check_finite_block(block: np.ndarray, row_offset: int) -> None:
    if block.dtype.kind == "f":
        nan = np.isnan(block)
        if nan.any():
            q, n = np.argwhere(nan)[0]
            raise ValueError(
                f"scores contains NaN (first at caption {row_offset + int(q)}, image {int(n)}); "
                "ranks are undefined"
            )


def _block_rows(num_columns: int, block_size: int | None) -> int:
    if block_size is not None:
        if int(block_size) < 1:
            raise ValueError(f"block_size must be a positive number of captions, got {block_size}")
        return int(block_size)
    return max(1, _BLOCK_ELEMENTS // max(1, num_columns))


def _as_ranks(ranks) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1:
        raise ValueError(f"ranks must be a 1-D array, got shape {ranks.shape}")
    if ranks.size == 0:
        raise ValueError("ranks is empty; metrics need at least one query")
    if ranks.dtype.kind not in "iu":
        raise ValueError(f"ranks must be integers (0-based), got dtype {ranks.dtype}")
    if ranks.min() < 0:
        raise ValueError(f"ranks must be 0-based and non-negative, got minimum {int(ranks.min())}")
    return ranks


# ----------------------------------------------------------------------------------------------
# Ranks
# ----------------------------------------------------------------------------------------------


def t2i_ranks(scores, caption_to_image, *, block_size: int | None = None) -> np.ndarray:
    """0-based rank of each caption's ground-truth image among the N images (pessimistic ties).

    Args:
      scores: [Q, N] similarities, higher is better.
      caption_to_image: [Q] ints in [0, N), the image each caption describes.
      block_size: captions per block (default: about 4M score elements per block).

    Returns:
      int64 [Q]: rank[q] = #{n != gt : scores[q, n] >= scores[q, gt]}.

    Raises:
      ValueError: bad shapes / dtypes / indices, or NaN scores.
    """
    scores = _as_scores(scores)
    q_total, n_images = scores.shape
    c2i = _as_caption_to_image(caption_to_image, q_total, n_images)
    ranks = np.empty(q_total, dtype=np.int64)
    step = _block_rows(n_images, block_size)
    for start in range(0, q_total, step):
        block = scores[start:start + step]
        _check_finite_block(block, start)
        gt = block[np.arange(block.shape[0]), c2i[start:start + step]]
        # The ground truth itself is always >= itself: subtract it once.
        ranks[start:start + step] = np.count_nonzero(block >= gt[:, None], axis=1) - 1
    return ranks


def i2t_ranks(scores, caption_to_image, *, block_size: int | None = None) -> np.ndarray:
    """0-based rank of each image's best ground-truth caption among the Q captions.

    For image n with ground-truth captions G(n) (``caption_to_image == n``):
    rank[n] = min over c in G(n) of #{c' not in G(n) : scores[c', n] >= scores[c, n]}
            = #{c' not in G(n) : scores[c', n] >= max over c in G(n) of scores[c, n]},
    i.e. the position of the first gt caption in the sorted list, ties against it pessimistic and
    other gt captions not counted. See the module docstring.

    Args:
      scores: [Q, N] similarities, higher is better.
      caption_to_image: [Q] ints in [0, N); every image needs at least one caption.
      block_size: captions per block (default: about 4M score elements per block).

    Returns:
      int64 [N] ranks.

    Raises:
      ValueError: bad shapes / dtypes / indices, NaN scores, or an image with no caption.
    """
    scores = _as_scores(scores)
    q_total, n_images = scores.shape
    c2i = _as_caption_to_image(caption_to_image, q_total, n_images)
    counts_per_image = np.bincount(c2i, minlength=n_images)
    if (counts_per_image == 0).any():
        missing = np.flatnonzero(counts_per_image == 0)
        raise ValueError(
            f"{missing.size} image(s) have no caption in caption_to_image (first: image "
            f"{int(missing[0])}); image->text ranks need at least one ground-truth caption per image"
        )
    step = _block_rows(n_images, block_size)

    # Pass 1: the best ground-truth score of each image (every image has one, checked above).
    lowest = -np.inf if scores.dtype.kind == "f" else np.iinfo(scores.dtype).min
    best = np.full(n_images, lowest, dtype=scores.dtype)
    for start in range(0, q_total, step):
        block = scores[start:start + step]
        _check_finite_block(block, start)
        idx = c2i[start:start + step]
        np.maximum.at(best, idx, block[np.arange(block.shape[0]), idx])

    # Pass 2: per image, count non-gt captions scoring >= that best score.
    ranks = np.zeros(n_images, dtype=np.int64)
    for start in range(0, q_total, step):
        block = scores[start:start + step]
        hits = block >= best[None, :]
        hits[np.arange(block.shape[0]), c2i[start:start + step]] = False  # Own gt never counts.
        ranks += np.count_nonzero(hits, axis=0)
    return ranks


def ranks_from_topk(topk_indices, caption_to_image, *, num_images: int | None = None) -> np.ndarray:
    """0-based rank of each caption's gt image in its top-K list, or K when it is not there.

    For galleries too big for a full score matrix: ``topk_indices`` [Q, K] are image indices,
    best first, as returned by an index. A rank of K means "not in the top K", so only recall@k
    for k <= K is exact, and median / mean rank computed from these ranks are lower bounds when
    some ranks equal K. Ties are whatever order the index returned (no pessimistic rule is
    possible without scores). Negative entries (padding from an index that found fewer than K
    neighbours) never match.

    Args:
      topk_indices: [Q, K] integer image indices.
      caption_to_image: [Q] ints, the gt image of each caption.
      num_images: if given, indices are also checked to be < num_images.

    Returns:
      int64 [Q] ranks in [0, K].
    """
    topk = np.asarray(topk_indices)
    if topk.ndim != 2:
        raise ValueError(
            f"topk_indices must be a 2-D [captions, K] array, got shape {topk.shape}"
        )
    if topk.size and topk.dtype.kind not in "iu":
        raise ValueError(f"topk_indices must hold integer image indices, got dtype {topk.dtype}")
    if num_images is not None and topk.size and int(topk.max()) >= num_images:
        q, k = np.argwhere(topk >= num_images)[0]
        raise ValueError(
            f"topk_indices[{int(q)}, {int(k)}] = {int(topk[q, k])} is not an image index in "
            f"[0, {num_images})"
        )
    q_total, k_total = topk.shape
    c2i = _as_caption_to_image(caption_to_image, q_total, num_images)
    if k_total == 0:
        return np.zeros(q_total, dtype=np.int64)  # K = 0: nothing is ever in the top K.
    hit = topk == c2i[:, None]
    return np.where(hit.any(axis=1), np.argmax(hit, axis=1), k_total).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------


def recall_at_k(ranks, k: int) -> float:
    """Percentage of queries whose 0-based rank is < k (R@k), in [0, 100]."""
    ranks = _as_ranks(ranks)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return float(100.0 * np.count_nonzero(ranks < k) / ranks.size)


def median_rank(ranks) -> float:
    """Median 1-based rank (MedR): ``np.median(ranks + 1)``."""
    ranks = _as_ranks(ranks)
    return float(np.median(ranks + 1))


def mean_rank(ranks) -> float:
    """Mean 1-based rank (MnR): ``np.mean(ranks + 1)``."""
    ranks = _as_ranks(ranks)
    return float(np.mean(ranks + 1))


def retrieval_metrics(
    scores, caption_to_image, ks: Sequence[int] = (1, 5, 10), *, block_size: int | None = None
) -> dict[str, float]:
    """Text->image and image->text recall@k (percent), median and mean rank (1-based).

    Returns a dict, in this order: ``t2i_r{k}`` for k in ks, ``t2i_medr``, ``t2i_meanr``, then the
    same for ``i2t``; all values Python floats.
    """
    ks = tuple(ks)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks must be positive integers, got {k!r} in {ks!r}")
    out: dict[str, float] = {}
    for name, ranks in (
        ("t2i", t2i_ranks(scores, caption_to_image, block_size=block_size)),
        ("i2t", i2t_ranks(scores, caption_to_image, block_size=block_size)),
    ):
        for k in ks:
            out[f"{name}_r{int(k)}"] = recall_at_k(ranks, k)
        out[f"{name}_medr"] = median_rank(ranks)
        out[f"{name}_meanr"] = mean_rank(ranks)
    return out
