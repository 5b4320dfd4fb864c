"""ScaNN index against numpy brute force: recall, scores, serialization, the delta segment."""
import os

import numpy as np
import pytest

from fastslow_jax.serving import ann
from fastslow_jax.serving.bench import clustered, recall_at


def _numpy_topk(q, db, k):
    s = q @ db.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, 1)


def test_exact_topk_matches_numpy_across_blocks():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((1000, 16)).astype(np.float32)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    ids, scores = ann.exact_topk(q, db, 10, block=128)  # 8 blocks, the last one padded
    ref_i, ref_s = _numpy_topk(q, db, 10)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ids, ref_i)  # random Gaussian data: no ties
    assert ann.exact_topk(q, db[:5], 10)[0].shape == (7, 5)  # k is capped at N


@pytest.fixture(scope="module")
def tree_index():
    db = clustered(25_000, 32, clusters=200, spread=1.0)
    return db, ann.AnnIndex.build(db)


def test_scann_tree_ah_recall_and_scores_against_brute_force(tree_index, tmp_path):
    db, index = tree_index
    assert index.params["kind"] == "tree_ah" and index.params["num_leaves"] == 158  # round(sqrt(25000))
    q = clustered(300, 32, clusters=200, spread=1.0, sample_seed=9)
    ids, scores = index.search(q, 10)
    ref_i, ref_s = _numpy_topk(q, db, 10)
    assert recall_at(ids, ref_i) >= 0.95
    # returned scores are the (re-ordered, exact) dot products of the returned ids, best first
    np.testing.assert_allclose(scores, np.einsum("qe,qke->qk", q, db[ids]), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # where the true neighbour was found, the distances agree with brute force
    found = ids[:, 0] == ref_i[:, 0]
    assert found.mean() >= 0.95
    np.testing.assert_allclose(scores[found, 0], ref_s[found, 0], rtol=1e-4, atol=1e-4)
    # serialize + load gives identical results
    index.save(str(tmp_path))
    loaded = ann.AnnIndex.load(str(tmp_path))
    ids2, scores2 = loaded.search(q, 10)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(scores2, scores)
    assert not os.path.exists(tmp_path / "scann" / "scann_docids.pkl")  # no pickle is ever written


def test_brute_force_below_threshold_and_single_query_matches_batched():
    db = clustered(3000, 24, clusters=50)
    index = ann.AnnIndex.build(db)
    assert index.params == {"kind": "brute_force"}
    q = clustered(20, 24, clusters=50, sample_seed=3)
    ids, scores = index.search(q, 10)
    ref_i, ref_s = _numpy_topk(q, db, 10)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
    assert recall_at(ids, ref_i) == 1.0
    one_i, one_s = index.search(q[3], 10)
    np.testing.assert_array_equal(one_i[0], ids[3])


def test_delta_segment_then_compaction(tmp_path):
    db = clustered(2000, 16, clusters=40)
    extra = clustered(150, 16, clusters=40, sample_seed=5)
    index = ann.AnnIndex.build(db)
    assert index.add(extra) is False  # 150 <= 10% of 2000: kept in the delta segment, no rebuild
    assert (index.main_count, index.delta_count) == (2000, 150)
    allv = np.concatenate([db, extra])
    q = np.concatenate([extra[:5], clustered(5, 16, clusters=40, sample_seed=6)])
    ids, scores = index.search(q, 10)
    ref_i, ref_s = _numpy_topk(q, allv, 10)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
    assert list(ids[:5, 0]) == [2000, 2001, 2002, 2003, 2004]  # an added vector is its own best match
    index.save(str(tmp_path))
    loaded = ann.AnnIndex.load(str(tmp_path))
    assert (loaded.main_count, loaded.delta_count) == (2000, 150)
    np.testing.assert_array_equal(loaded.search(q, 10)[0], ids)
    assert loaded.add(clustered(100, 16, clusters=40, sample_seed=8)) is True  # 250 > 10%: compacted
    assert (loaded.main_count, loaded.delta_count) == (2250, 0)


def test_bad_shapes_and_pickled_docids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        ann.AnnIndex.build(np.zeros((0, 8), np.float32))
    index = ann.AnnIndex.build(clustered(100, 8, clusters=5))
    with pytest.raises(ValueError, match="dimension 8"):
        index.add(np.zeros((3, 9), np.float32))
    index.save(str(tmp_path))
    (tmp_path / "scann" / "scann_docids.pkl").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        ann.AnnIndex.load(str(tmp_path))
