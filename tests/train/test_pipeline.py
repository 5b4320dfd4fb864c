"""End to end on tiny configs: fast -> slow (backbone from fast) -> distill -> the pipeline table."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fastslow_jax import workdir as workdir_lib
from fastslow_jax.retrieval import evaluate
from fastslow_jax.train import loop
from tests.conftest import tiny_config



@pytest.fixture(scope="module")
def pipeline_dir(tiny_pipeline):
    return tiny_pipeline  # trained once per session (tests/conftest.py), shared with tests/serving


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_slow_backbone_starts_from_fast_and_distill_keeps_the_teacher_frozen(pipeline_dir):
    devices = jax.devices()[:1]
    fast_run, fast_state = loop.load_trained(os.path.join(pipeline_dir, "fast"), devices=devices)
    slow_run, slow_state = loop.load_trained(os.path.join(pipeline_dir, "slow"), devices=devices)
    d_run, d_state = loop.load_trained(os.path.join(pipeline_dir, "distill"), devices=devices)
    # the distillation run trained the student only: its teacher equals the Slow run, bit for bit
    for a, b in zip(_leaves(nnx.state(d_run.model(d_state).teacher)), _leaves(nnx.state(slow_run.model(slow_state)))):
        np.testing.assert_array_equal(a, b)
    # ... and the student moved away from the Fast run it started from
    moved = [not np.array_equal(a, b) for a, b in zip(_leaves(nnx.state(d_run.model(d_state).student, nnx.Param)),
                                                      _leaves(nnx.state(fast_run.model(fast_state), nnx.Param)))]
    assert any(moved)
    # gradients of the distillation loss never reach the teacher, even when it is differentiated
    model = d_run.model(d_state)
    batch = {"image": jax.random.randint(jax.random.key(0), (8, 64, 64, 3), 0, 256).astype(jnp.uint8),
             "tokens": jnp.asarray(d_run.tokenizer(["a small red circle", "a large blue square"] * 4))}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        return d_run.task.loss_fn(nnx.merge(graphdef, p, rest, copy=True), batch, jax.random.key(1), d_run.config)[0]

    grads = jax.grad(loss)(params)
    assert all(np.all(g == 0) for g in _leaves(grads["teacher"]))
    assert any(np.any(g != 0) for g in _leaves(grads["student"]))


def test_slow_output_vocabulary_is_the_training_captions_words(pipeline_dir):
    """model.slow.output_vocab=train: config.json lists the ids of the words of the train split's captions
    (+ [CLS], [SEP]), computed here from the vocab file and str.split, independently of the tokenizer."""
    from fastslow_jax.data import pipeline
    from fastslow_jax.data.tokenizer import resolve_vocab

    with open(os.path.join(pipeline_dir, "slow", "config.json"), encoding="utf-8") as f:
        saved = json.load(f)["model"]["slow"]
    cfg = loop.load_trained(os.path.join(pipeline_dir, "slow"), devices=jax.devices()[:1])[0].config
    with open(resolve_vocab(cfg.data.tokenizer), encoding="utf-8") as f:
        index = {w: i for i, w in enumerate(f.read().split("\n"))}
    source = pipeline.get_builder(cfg.data).as_data_source("train")
    words = {w for i in range(len(source)) for c in source[i]["captions"] for w in c.decode().split()}
    want = sorted({index["[CLS]"], index["[SEP]"]} | {index[w] for w in words})
    assert saved["output_vocab"] == "train" and saved["output_ids"] == want
    assert 10 < len(want) < 131  # a real subset of the shapes vocab


def test_pipeline_table_has_every_row(pipeline_dir):
    assert workdir_lib.is_pipeline(pipeline_dir)
    rows = workdir_lib.evaluate_pipeline(pipeline_dir, "test", ["eval.limit=32", "eval.queries_per_image=1"],
                                         progress=lambda m: None)
    # eval.fast_full_split: the Fast rows again on the whole test split (every image and caption)
    from fastslow_jax.data.pipeline import EvalSplit
    whole = EvalSplit(tiny_config().data, "test")
    assert whole.num_images > 32 and len(whole.captions) > whole.num_images
    full_rows = [r for r in rows if r["gallery"] != 32]
    assert sorted(r["method"] for r in full_rows) == ["fast", "fast_distilled"]
    assert all(r["gallery"] == whole.num_images and r["queries"] == len(whole.captions) for r in full_rows)
    rows = [r for r in rows if r["gallery"] == 32]
    methods = [(r["method"], r["k"], r.get("visual")) for r in rows]
    assert ("fast", None, None) in methods and ("fast_distilled", None, None) in methods
    assert ("slow", None, "cached") in methods
    for m in ("fast+slow", "fast_distilled+slow"):
        assert [k for mm, k, v in methods if mm == m and v == "cached"] == [1, 5, 10, 20]  # K <= gallery (32)
    assert ("fast+slow", 10, "recomputed") in methods
    assert all(r["gallery"] == 32 and r["queries"] == 32 and r["ms_per_query"] > 0 for r in rows)
    by = {(r["method"], r["k"], r.get("visual")): r for r in rows}
    # re-ranking the top-1 cannot change R@1, and re-scoring with recomputed features changes nothing
    assert by[("fast+slow", 1, "cached")]["t2i_r1"] == by[("fast", None, None)]["t2i_r1"]
    assert by[("fast+slow", 10, "recomputed")]["t2i_r1"] == by[("fast+slow", 10, "cached")]["t2i_r1"]
    for r in rows:
        assert set(evaluate.ROW_KEYS) <= set(r)


def test_exhaustive_slow_on_a_query_sample_with_fast_on_the_same_sample(pipeline_dir, tmp_path):
    wd = tmp_path / "pipe"
    wd.mkdir()
    for name in ("fast", "slow"):
        os.symlink(os.path.join(pipeline_dir, name), wd / name)
    over = ["eval.limit=16", "eval.queries_per_image=1", "eval.fast_full_split=False", "eval.slow_queries=6"]
    rows = workdir_lib.evaluate_pipeline(str(wd), "test", over, progress=lambda m: None)
    by = {(r["method"], r["k"]): r for r in rows}
    assert by[("slow", None)]["queries"] == 6 and by[("fast@slow_queries", None)]["queries"] == 6
    assert by[("fast", None)]["queries"] == 16 and by[("fast+slow", 10)]["queries"] == 16  # the rest: every query
    assert all(r["gallery"] == 16 for r in rows)
    # the sample: 6 distinct queries, sorted, drawn by a fixed seed (the same every time)
    runs = workdir_lib.load_pipeline(str(wd), over, devices=jax.devices()[:1])
    split = evaluate.load_split(runs["slow"][0].config, "test")
    sample = evaluate.query_sample(runs["slow"][0].config, split)
    assert len(set(sample.tolist())) == 6 and sample.tolist() == sorted(sample.tolist()) and sample.max() < 16
    assert np.array_equal(sample, evaluate.query_sample(runs["slow"][0].config, split))
    # both rows agree with the whole-split score matrices restricted to the sample's rows
    from fastslow_jax.retrieval import metrics
    gt = split.caption_to_image[sample]
    slow_scores, _ = evaluate.SlowScorer(runs["slow"][0]).exhaustive(runs["slow"][1], split)
    fast_scores = evaluate.FastScorer(runs["fast"][0]).evaluate(runs["fast"][1], split, timing=False)[1]
    for method, scores in (("slow", slow_scores), ("fast@slow_queries", fast_scores)):
        ranks = metrics.t2i_ranks(scores[sample], gt)
        assert by[(method, None)]["t2i_r1"] == pytest.approx(100.0 * (ranks == 0).mean())
        assert by[(method, None)]["t2i_r5"] == pytest.approx(100.0 * (ranks < 5).mean())


def test_query_sample_bounds():
    from ml_collections import ConfigDict
    split = type("Split", (), {"captions": ["c"] * 10})()
    for n, want in ((0, None), (10, None), (25, None)):
        assert evaluate.query_sample(ConfigDict({"eval": {"slow_queries": n}}), split) is want
    assert len(evaluate.query_sample(ConfigDict({"eval": {"slow_queries": 3}}), split)) == 3
    with pytest.raises(ValueError, match="eval.slow_queries must be >= 0"):
        evaluate.query_sample(ConfigDict({"eval": {"slow_queries": -1}}), split)


def test_a_baseline_run_is_a_row_of_its_own_never_re_ranked(pipeline_dir, tmp_path):
    # a pipeline whose baseline/ is the same Fast run as fast/: the same figures, and no baseline+slow row
    wd = tmp_path / "pipe"
    wd.mkdir()
    for name, src in (("fast", "fast"), ("baseline", "fast"), ("slow", "slow")):
        os.symlink(os.path.join(pipeline_dir, src), wd / name)
    rows = workdir_lib.evaluate_pipeline(str(wd), "test", ["eval.limit=16", "eval.queries_per_image=1",
                                                           "eval.fast_full_split=False"], progress=lambda m: None)
    by = {(r["method"], r["k"]): r for r in rows}
    assert not any(r["method"].startswith("baseline+") for r in rows)
    assert {m for m, _ in by} == {"baseline", "fast", "slow", "fast+slow"}
    for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "gallery", "queries"):
        assert by[("baseline", None)][key] == by[("fast", None)][key]


def test_topm_distillation_precomputes_fast_candidates_and_teacher_scores(pipeline_dir, tmp_path):
    devices = jax.devices()[:1]
    wd = str(tmp_path / "topm")
    cfg = tiny_config("shapes_distill.py", [f"distill.teacher_workdir={pipeline_dir}/slow", "distill.mode=topm",
                                            f"distill.student_init={pipeline_dir}/fast", "train.steps=4"])
    loop.train(cfg, wd, progress=False, devices=devices)
    table = np.load(os.path.join(wd, "topm_4.npz"))
    assert table["candidates"].shape == (256 * 5, 4) and table["scores"].shape == (256 * 5, 4)
    assert table["counts"].tolist() == [5] * 256
    # spot-check rows against an independent computation with the Fast and Slow runs
    from fastslow_jax.data.pipeline import EvalSplit
    fast_run, fast_state = loop.load_trained(os.path.join(pipeline_dir, "fast"), devices=devices)
    slow_run, slow_state = loop.load_trained(os.path.join(pipeline_dir, "slow"), devices=devices)
    split = EvalSplit(cfg.data, "train")
    fast = evaluate.FastScorer(fast_run)
    img = fast.embed_images(fast_state, split)
    rows = [0, 7, 1279]
    txt = fast.embed_texts(fast_state, [split.captions[r] for r in rows])
    for r, t in zip(rows, txt):
        s = img @ t
        assert set(table["candidates"][r]) == set(np.argsort(-s)[:4])
        model = slow_run.model(slow_state)
        cand = table["candidates"][r]
        tok = jnp.asarray(slow_run.tokenizer([split.captions[r]] * 4))
        want = model.score(jnp.asarray(split.images(cand)), tok)
        np.testing.assert_allclose(table["scores"][r], want, rtol=1e-4, atol=1e-3)
    losses = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    assert losses and all(np.isfinite(r["kl"]) and r["kl"] >= 0 for r in losses)
