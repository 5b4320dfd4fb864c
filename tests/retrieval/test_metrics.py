"""Tests for fastslow_jax.retrieval.metrics: hand-computed matrices, ties, and a loop reference."""

import numpy as np
import pytest

from fastslow_jax.retrieval import metrics as M

# ------------------------------------------------------------------------------------------------
# A hand-built example: 3 images, 2 captions each.
#
#   caption_to_image = [0, 0, 1, 1, 2, 2]
#
#              img0  img1  img2
#   c0 (gt 0)  0.90  0.10  0.95   others >= 0.90: img2 (0.95)           -> t2i rank 1
#   c1 (gt 0)  0.30  0.80  0.10   others >= 0.30: img1 (0.80)           -> t2i rank 1
#   c2 (gt 1)  0.20  0.80  0.80   others >= 0.80: img2 (tie, pessimist) -> t2i rank 1
#   c3 (gt 1)  0.60  0.20  0.70   others >= 0.20: img0, img2            -> t2i rank 2
#   c4 (gt 2)  0.00  0.10  0.90   others >= 0.90: none                  -> t2i rank 0
#   c5 (gt 2)  0.50  0.50  0.50   constant row: img0, img1 tie          -> t2i rank 2
#
# t2i ranks = [1, 1, 1, 2, 0, 2]
#   R@1 = #{rank < 1} / 6 = 1/6 = 16.67%;  R@2 = 4/6 = 66.67%;  R@5 = R@10 = 100%
#   1-based ranks [2, 2, 2, 3, 1, 3] -> sorted [1, 2, 2, 2, 3, 3]: median 2.0, mean 13/6
#
# i2t (rank = #non-gt captions scoring >= the best gt caption of the image):
#   img0 column [0.90, 0.30, 0.20, 0.60, 0.00, 0.50], gt {c0, c1}, best 0.90:
#        non-gt >= 0.90: none                                    -> i2t rank 0
#   img1 column [0.10, 0.80, 0.80, 0.20, 0.10, 0.50], gt {c2, c3}, best 0.80:
#        non-gt >= 0.80: c1 (tie with c2, pessimistic)           -> i2t rank 1
#   img2 column [0.95, 0.10, 0.80, 0.70, 0.90, 0.50], gt {c4, c5}, best 0.90:
#        non-gt >= 0.90: c0 (0.95)                               -> i2t rank 1
# i2t ranks = [0, 1, 1]
#   R@1 = 1/3 = 33.33%;  R@2 = R@5 = R@10 = 100%
#   1-based [1, 2, 2]: median 2.0, mean 5/3
# ------------------------------------------------------------------------------------------------
HAND_SCORES = np.array(
    [
        [0.90, 0.10, 0.95],
        [0.30, 0.80, 0.10],
        [0.20, 0.80, 0.80],
        [0.60, 0.20, 0.70],
        [0.00, 0.10, 0.90],
        [0.50, 0.50, 0.50],
    ]
)
HAND_C2I = np.array([0, 0, 1, 1, 2, 2])


def reference_t2i(scores, c2i):
    """Loop + argsort: the gt image goes after every image with an equal score."""
    q_total, n_images = scores.shape
    out = []
    for q in range(q_total):
        is_gt = (np.arange(n_images) == c2i[q]).astype(int)
        # lexsort: last key is primary. Sort by descending score, then gt last among ties.
        order = np.lexsort((is_gt, -scores[q]))
        out.append(int(np.where(order == c2i[q])[0][0]))
    return np.array(out)


def reference_i2t(scores, c2i):
    """Loop + argsort: position of the first gt caption, gt captions after equal-scored others."""
    q_total, n_images = scores.shape
    out = []
    for n in range(n_images):
        is_gt = (c2i == n).astype(int)
        order = np.lexsort((is_gt, -scores[:, n]))
        positions = [int(np.where(order == c)[0][0]) for c in np.flatnonzero(c2i == n)]
        out.append(min(positions))
    return np.array(out)


# ---- hand-built ----------------------------------------------------------------------------------


def test_hand_t2i_ranks():
    np.testing.assert_array_equal(M.t2i_ranks(HAND_SCORES, HAND_C2I), [1, 1, 1, 2, 0, 2])


def test_hand_i2t_ranks():
    np.testing.assert_array_equal(M.i2t_ranks(HAND_SCORES, HAND_C2I), [0, 1, 1])


def test_hand_summaries():
    t2i = M.t2i_ranks(HAND_SCORES, HAND_C2I)
    assert M.recall_at_k(t2i, 1) == pytest.approx(100 / 6)
    assert M.recall_at_k(t2i, 2) == pytest.approx(400 / 6)
    assert M.recall_at_k(t2i, 5) == 100.0
    assert M.median_rank(t2i) == 2.0
    assert M.mean_rank(t2i) == pytest.approx(13 / 6)


def test_hand_retrieval_metrics():
    m = M.retrieval_metrics(HAND_SCORES, HAND_C2I)
    assert list(m) == [
        "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr",
        "i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
    ]
    assert all(type(v) is float for v in m.values())
    expected = {
        "t2i_r1": 100 / 6, "t2i_r5": 100.0, "t2i_r10": 100.0, "t2i_medr": 2.0, "t2i_meanr": 13 / 6,
        "i2t_r1": 100 / 3, "i2t_r5": 100.0, "i2t_r10": 100.0, "i2t_medr": 2.0, "i2t_meanr": 5 / 3,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key


def test_generic_ks_keys():
    m = M.retrieval_metrics(HAND_SCORES, HAND_C2I, ks=(2, 3))
    assert list(m) == [
        "t2i_r2", "t2i_r3", "t2i_medr", "t2i_meanr", "i2t_r2", "i2t_r3", "i2t_medr", "i2t_meanr",
    ]
    assert m["t2i_r2"] == pytest.approx(400 / 6)   # ranks < 2: c0, c1, c2, c4
    assert m["t2i_r3"] == 100.0
    assert m["i2t_r2"] == 100.0


def test_perfect_identity():
    # One caption per image, scores = identity: everything at rank 0.
    m = M.retrieval_metrics(np.eye(4), np.arange(4))
    assert m["t2i_r1"] == m["i2t_r1"] == 100.0
    assert m["t2i_medr"] == m["i2t_medr"] == 1.0
    assert m["t2i_meanr"] == m["i2t_meanr"] == 1.0


# ---- ties ---------------------------------------------------------------------------------------


def test_constant_scores_are_worst_not_lucky():
    q, n = 6, 3
    c2i = np.array([0, 0, 1, 1, 2, 2])
    scores = np.zeros((q, n))
    # t2i: every other image ties -> rank N - 1 = 2 for every caption.
    np.testing.assert_array_equal(M.t2i_ranks(scores, c2i), [2] * q)
    # i2t: every non-gt caption ties -> rank Q - |gt(n)| = 4 for every image.
    np.testing.assert_array_equal(M.i2t_ranks(scores, c2i), [4] * n)
    m = M.retrieval_metrics(scores, c2i)
    assert m["t2i_r1"] == 0.0 and m["i2t_r1"] == 0.0
    assert m["t2i_medr"] == 3.0 and m["i2t_medr"] == 5.0


def test_other_gt_captions_do_not_count_against_image():
    # Image 0 has captions c0, c1 (both 1.0), c2 belongs to image 1 and scores 0.5 for image 0.
    scores = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 1.0]])
    c2i = np.array([0, 0, 1])
    # img0: non-gt captions >= 1.0: none -> 0 (the tie between c0 and c1 is harmless).
    # img1: column [0, 0, 1], best gt 1.0, non-gt >= 1.0: none -> 0.
    np.testing.assert_array_equal(M.i2t_ranks(scores, c2i), [0, 0])


def test_i2t_uses_best_gt_caption():
    # img0's gt captions score 0.2 and 0.9; non-gt c2 scores 0.5 -> best gt 0.9 beats it: rank 0.
    # img1: column [0.8, 0.6, 0.7], gt {c2} scores 0.7; non-gt >= 0.7: c0 (0.8) -> rank 1.
    scores = np.array([[0.2, 0.8], [0.9, 0.6], [0.5, 0.7]])
    c2i = np.array([0, 0, 1])
    np.testing.assert_array_equal(M.i2t_ranks(scores, c2i), [0, 1])
    # t2i: c0 gt 0 (0.2) < 0.8 -> 1; c1 gt 0 (0.9) -> 0; c2 gt 1 (0.7) > 0.5 -> 0.
    np.testing.assert_array_equal(M.t2i_ranks(scores, c2i), [1, 0, 0])


def test_infinite_scores_tie_like_numbers():
    scores = np.array([[np.inf, np.inf], [-np.inf, 0.0]])
    c2i = np.array([0, 1])
    np.testing.assert_array_equal(M.t2i_ranks(scores, c2i), [1, 0])
    # img0 column [inf, -inf]: gt c0 -> 0.  img1 column [inf, 0]: gt c1 (0), c0 inf >= 0 -> 1.
    np.testing.assert_array_equal(M.i2t_ranks(scores, c2i), [0, 1])


# ---- variable caption counts --------------------------------------------------------------------


def test_variable_caption_counts():
    # img0: 1 caption (c0); img1: 3 captions (c1, c2, c3); img2: 2 captions (c4, c5).
    c2i = np.array([0, 1, 1, 1, 2, 2])
    scores = np.array(
        [
            #  img0 img1 img2
            [0.1, 0.9, 0.3],  # c0 gt0: img1, img2 >= 0.1            -> 2
            [0.2, 0.5, 0.4],  # c1 gt1: none >= 0.5                  -> 0
            [0.6, 0.3, 0.1],  # c2 gt1: img0 0.6 >= 0.3              -> 1
            [0.0, 0.1, 0.2],  # c3 gt1: img2 0.2 >= 0.1              -> 1
            [0.3, 0.3, 0.3],  # c4 gt2: img0, img1 tie               -> 2
            [0.0, 0.0, 0.8],  # c5 gt2: none                         -> 0
        ]
    )
    np.testing.assert_array_equal(M.t2i_ranks(scores, c2i), [2, 0, 1, 1, 2, 0])
    # img0 column [0.1, 0.2, 0.6, 0.0, 0.3, 0.0], gt {c0} = 0.1: non-gt >= 0.1: c1, c2, c4 -> 3
    # img1 column [0.9, 0.5, 0.3, 0.1, 0.3, 0.0], gt {c1,c2,c3} best 0.5: non-gt >= 0.5: c0 -> 1
    # img2 column [0.3, 0.4, 0.1, 0.2, 0.3, 0.8], gt {c4,c5} best 0.8: none -> 0
    np.testing.assert_array_equal(M.i2t_ranks(scores, c2i), [3, 1, 0])
    np.testing.assert_array_equal(M.i2t_ranks(scores, c2i), reference_i2t(scores, c2i))
    np.testing.assert_array_equal(M.t2i_ranks(scores, c2i), reference_t2i(scores, c2i))


def test_image_without_caption_ok_for_t2i_but_not_i2t():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.5]])
    c2i = np.array([0, 1])  # image 2 has no caption: it is a distractor for t2i.
    np.testing.assert_array_equal(M.t2i_ranks(scores, c2i), [0, 0])
    with pytest.raises(ValueError, match=r"no caption.*image 2"):
        M.i2t_ranks(scores, c2i)
    with pytest.raises(ValueError, match="no caption"):
        M.retrieval_metrics(scores, c2i)


# ---- random matrices against the loop reference ------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("discrete", [False, True])
def test_random_against_reference(seed, discrete):
    rng = np.random.default_rng(seed)
    n_images = int(rng.integers(1, 12))
    counts = rng.integers(1, 5, size=n_images)  # 1..4 captions per image.
    c2i = rng.permutation(np.repeat(np.arange(n_images), counts))
    shape = (c2i.size, n_images)
    # Discrete scores produce many ties; continuous ones almost none.
    scores = rng.integers(0, 3, size=shape).astype(np.float32) if discrete else rng.normal(size=shape)
    np.testing.assert_array_equal(M.t2i_ranks(scores, c2i), reference_t2i(scores, c2i))
    np.testing.assert_array_equal(M.i2t_ranks(scores, c2i), reference_i2t(scores, c2i))


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 1000])
def test_block_size_does_not_change_ranks(block_size):
    rng = np.random.default_rng(0)
    c2i = np.repeat(np.arange(9), 3)
    scores = rng.integers(0, 4, size=(27, 9))  # int scores are fine too.
    np.testing.assert_array_equal(
        M.t2i_ranks(scores, c2i, block_size=block_size), reference_t2i(scores, c2i))
    np.testing.assert_array_equal(
        M.i2t_ranks(scores, c2i, block_size=block_size), reference_i2t(scores, c2i))
    assert M.retrieval_metrics(scores, c2i, block_size=block_size) == M.retrieval_metrics(scores, c2i)


def test_default_blocks_cover_many_captions(monkeypatch):
    # Force several blocks through the default path (tiny block budget).
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 10)
    rng = np.random.default_rng(1)
    c2i = np.repeat(np.arange(5), 5)
    scores = rng.normal(size=(25, 5)).astype(np.float16)
    np.testing.assert_array_equal(M.t2i_ranks(scores, c2i), reference_t2i(scores, c2i))
    np.testing.assert_array_equal(M.i2t_ranks(scores, c2i), reference_i2t(scores, c2i))


def test_scores_from_lists_and_float32():
    scores = HAND_SCORES.astype(np.float32).tolist()
    np.testing.assert_array_equal(M.t2i_ranks(scores, HAND_C2I.tolist()), [1, 1, 1, 2, 0, 2])


# ---- top-k ranks --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_ranks_from_topk_matches_full_ranks(seed):
    rng = np.random.default_rng(seed)
    n_images, per_image, k = 20, 3, 7
    c2i = rng.permutation(np.repeat(np.arange(n_images), per_image))
    scores = rng.normal(size=(c2i.size, n_images))
    topk = np.argsort(-scores, axis=1)[:, :k]
    full = M.t2i_ranks(scores, c2i)
    from_topk = M.ranks_from_topk(topk, c2i, num_images=n_images)
    np.testing.assert_array_equal(from_topk, np.minimum(full, k))
    for kk in (1, 5, k):
        assert M.recall_at_k(from_topk, kk) == M.recall_at_k(full, kk)


def test_ranks_from_topk_by_hand():
    topk = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2], [-1, -1, -1]])
    c2i = np.array([0, 1, 1, 0])
    # c0: gt 0 at position 1; c1: gt 1 at 0; c2: gt 1 at 1; c3: only padding -> K = 3.
    np.testing.assert_array_equal(M.ranks_from_topk(topk, c2i), [1, 0, 1, 3])
    np.testing.assert_array_equal(M.ranks_from_topk(np.zeros((2, 0), int), [0, 1]), [0, 0])


def test_ranks_from_topk_errors():
    with pytest.raises(ValueError, match="2-D"):
        M.ranks_from_topk(np.array([1, 2]), [0, 1])
    with pytest.raises(ValueError, match="integer"):
        M.ranks_from_topk(np.array([[1.0, 2.0]]), [0])
    with pytest.raises(ValueError, match="3 entries but there are 2 captions"):
        M.ranks_from_topk(np.array([[0], [1]]), [0, 1, 1])
    with pytest.raises(ValueError, match=r"topk_indices\[1, 0\] = 5 is not an image index in \[0, 5\)"):
        M.ranks_from_topk(np.array([[0], [5]]), [0, 1], num_images=5)
    with pytest.raises(ValueError, match=r"caption_to_image\[1\] = 7"):
        M.ranks_from_topk(np.array([[0], [1]]), [0, 7], num_images=5)


# ---- summaries ----------------------------------------------------------------------------------


def test_recall_median_mean_by_hand():
    ranks = np.array([0, 0, 3, 9, 10])
    assert M.recall_at_k(ranks, 1) == 40.0   # two of five ranks < 1
    assert M.recall_at_k(ranks, 4) == 60.0   # 0, 0, 3
    assert M.recall_at_k(ranks, 10) == 80.0  # all but 10
    assert M.median_rank(ranks) == 4.0       # 1-based [1, 1, 4, 10, 11]
    assert M.mean_rank(ranks) == pytest.approx(27 / 5)
    assert M.median_rank([0, 1]) == 1.5      # even count: midpoint of 1 and 2


@pytest.mark.parametrize("bad", [[], [[0, 1]], [0.5, 1.0], [-1, 2]])
def test_summary_errors(bad):
    with pytest.raises(ValueError):
        M.median_rank(bad)
    with pytest.raises(ValueError):
        M.recall_at_k(bad, 1)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_recall_bad_k(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        M.recall_at_k([0, 1], k)
    with pytest.raises(ValueError, match="ks must be positive integers"):
        M.retrieval_metrics(HAND_SCORES, HAND_C2I, ks=(1, k))


# ---- validation ---------------------------------------------------------------------------------


def test_nan_scores_raise():
    scores = HAND_SCORES.copy()
    scores[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN \(first at caption 3, image 1\)"):
        M.t2i_ranks(scores, HAND_C2I)
    with pytest.raises(ValueError, match=r"NaN \(first at caption 3, image 1\)"):
        M.i2t_ranks(scores, HAND_C2I, block_size=2)


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match="2-D"):
        M.t2i_ranks(np.zeros(3), [0, 0, 0])
    with pytest.raises(ValueError, match="no images"):
        M.t2i_ranks(np.zeros((3, 0)), [0, 0, 0])
    with pytest.raises(ValueError, match="real numbers"):
        M.t2i_ranks(np.zeros((2, 2), dtype=complex), [0, 1])
    with pytest.raises(ValueError, match="real numbers"):
        M.t2i_ranks(np.array([["a", "b"]]), [0])
    with pytest.raises(ValueError, match="5 entries but there are 6 captions"):
        M.t2i_ranks(HAND_SCORES, HAND_C2I[:5])
    with pytest.raises(ValueError, match="1-D"):
        M.t2i_ranks(HAND_SCORES, HAND_C2I[:, None])
    with pytest.raises(ValueError, match="integer image indices"):
        M.t2i_ranks(HAND_SCORES, HAND_C2I.astype(float))
    with pytest.raises(ValueError, match=r"caption_to_image\[2\] = 3 is not an image index in \[0, 3\)"):
        M.t2i_ranks(HAND_SCORES, [0, 0, 3, 1, 2, 2])
    with pytest.raises(ValueError, match=r"caption_to_image\[0\] = -1"):
        M.i2t_ranks(HAND_SCORES, [-1, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="block_size"):
        M.t2i_ranks(HAND_SCORES, HAND_C2I, block_size=0)


def test_error_messages_are_one_sentence():
    try:
        M.t2i_ranks(HAND_SCORES, HAND_C2I[:5])
    except ValueError as e:
        msg = str(e)
    assert "\n" not in msg and msg.count(". ") == 0


def test_empty_queries_t2i():
    assert M.t2i_ranks(np.zeros((0, 3)), np.zeros(0, dtype=int)).shape == (0,)
    assert M.t2i_ranks(np.zeros((0, 3)), []).shape == (0,)
