import jax
import numpy as np
import pytest

from fastslow_jax.retrieval import metrics
from fastslow_jax.retrieval.evaluate import (FastScorer, SlowScorer, choose_alpha, combine_scores, load_split,
                                            rerank_ranks)
from fastslow_jax.train import loop
from tests.conftest import tiny_config


def test_rerank_ranks_hand_computed():
    # 2 queries, 4 images; gt = [2, 3]
    fast = np.asarray([[0.9, 0.8, 0.7, 0.1],
                       [0.9, 0.8, 0.7, 0.1]])
    gt = np.asarray([2, 3])
    cand = np.asarray([[0, 1, 2], [0, 1, 2]])  # top-3 by fast
    slow = np.asarray([[-5.0, -4.0, -1.0],      # query 0: slow puts its gt (image 2) first
                       [-1.0, -2.0, -3.0]])     # query 1: gt (image 3) is below K
    for norm in ("none", "zscore"):
        ranks = rerank_ranks(fast, cand, slow, gt, alpha=0.0, normalize=norm)
        assert ranks.tolist() == [0, 3]  # query 1 keeps its Fast rank (3 images above it)
        # with a large alpha the Fast order comes back inside the top-K: image 2 is third again
        assert rerank_ranks(fast, cand, slow, gt, alpha=100.0, normalize=norm).tolist() == [2, 3]
        assert choose_alpha(fast, cand, slow, gt, (0.0, 100.0), norm) == 0.0


def test_zscored_combination_hand_computed():
    slow = np.asarray([[-10.0, -20.0, -30.0]])  # z: mean -20, std sqrt(200 / 3) -> [1.2247, 0, -1.2247]
    fast = np.asarray([[0.1, 0.5, 0.3]])        # z: mean 0.3, std sqrt(0.08 / 3) -> [-1.2247, 1.2247, 0]
    z = np.sqrt(1.5)
    np.testing.assert_allclose(combine_scores(slow, fast, 1.0), [[0.0, z, -z]], atol=1e-9)
    np.testing.assert_allclose(combine_scores(slow, fast, 0.5), [[z / 2, z / 2, -z]], atol=1e-9)
    np.testing.assert_allclose(combine_scores(slow, fast, 1.0, "none"), [[-9.9, -19.5, -29.7]], atol=1e-9)
    # one scale whatever the caption's length: 3x the log-likelihood (a 3x longer caption) changes nothing
    np.testing.assert_allclose(combine_scores(3 * slow, fast, 1.0), combine_scores(slow, fast, 1.0), atol=1e-9)
    # a constant row (K = 1, or equal scores) standardises to 0 rather than dividing by zero
    np.testing.assert_allclose(combine_scores([[-4.0]], [[0.3]], 2.0), [[0.0]])
    # ranks: gt = image 1 is first at alpha 1 (Fast's favourite), third at alpha 0 (Slow's order)
    gt, cand, gallery = np.asarray([1]), np.asarray([[0, 1, 2]]), np.asarray([[0.1, 0.5, 0.3, -1.0]])
    assert rerank_ranks(gallery, cand, slow, gt, alpha=1.0).tolist() == [0]
    assert rerank_ranks(gallery, cand, slow, gt, alpha=0.0).tolist() == [1]
    with pytest.raises(ValueError, match="rerank.normalize"):
        combine_scores(slow, fast, 1.0, "softmax")


def test_rerank_ties_count_against_the_model():
    fast = np.asarray([[0.5, 0.4]])
    ranks = rerank_ranks(fast, np.asarray([[0, 1]]), np.asarray([[-1.0, -1.0]]), np.asarray([1]), alpha=0.0)
    assert ranks.tolist() == [1]


@pytest.fixture(scope="module")
def fresh_runs():
    devices = jax.devices()[:1]
    slow_run = loop.setup(tiny_config("shapes_slow.py", ["eval.limit=24", "eval.queries_per_image=2"]), devices)
    fast_run = loop.setup(tiny_config("shapes_fast.py", ["eval.limit=24", "eval.queries_per_image=2"]), devices)
    return (slow_run, slow_run.init_state()), (fast_run, fast_run.init_state())


def test_rerank_with_k_equal_to_the_gallery_reproduces_slow_exhaustive(fresh_runs):
    (slow_run, slow_state), (fast_run, fast_state) = fresh_runs
    split = load_split(slow_run.config, "test")
    assert split.num_images == 24 and len(split.captions) == 48
    slow = SlowScorer(slow_run)
    exhaustive, _ = slow.exhaustive(slow_state, split)
    _, fast_scores, _ = FastScorer(fast_run).evaluate(fast_state, split, timing=False)
    cand = np.argsort(-fast_scores, axis=1, kind="stable")  # K = N: every image is a candidate
    cache = slow.gallery_cache(slow_state, split)
    rescored, _ = slow.rerank_scores(slow_state, split.captions, cand, cache=cache)
    np.testing.assert_allclose(rescored, np.take_along_axis(exhaustive, cand, 1), rtol=1e-4, atol=1e-3)
    # re-ranking all N candidates by their Slow scores is exactly the exhaustive Slow ranking
    ranks = rerank_ranks(fast_scores, cand, np.take_along_axis(exhaustive, cand, 1), split.caption_to_image, 0.0)
    np.testing.assert_array_equal(ranks, metrics.t2i_ranks(exhaustive, split.caption_to_image))
    # the recomputed-visual path gives the same Slow scores as the cached one
    recomputed, _ = slow.rerank_scores(slow_state, split.captions[:8], cand[:8, :5], split=split)
    np.testing.assert_allclose(recomputed, rescored[:8, :5], rtol=1e-4, atol=1e-3)
