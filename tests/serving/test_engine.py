"""Index building, search with Slow re-ranking, adding images, the fingerprint check, the CLI."""
import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from fastslow_jax.retrieval.evaluate import load_split
from fastslow_jax.serving import engine
from tests.conftest import run_cli


def test_index_manifest_and_pipeline_towers(serving_index, serving_pipeline):
    m = engine.read_manifest(serving_index)
    assert m["model"]["fast"] == "distill (student)" and m["model"]["slow"] == "slow"  # pipeline: distilled Fast
    assert m["model"]["workdir"] == os.path.abspath(serving_pipeline)
    assert (m["count"], m["dim"], m["image_shape"], m["ann"]["kind"]) == (64, 32, [64, 64, 3], "brute_force")
    assert m["slow_image_shape"] == [64, 64, 3]  # the Slow run's own input size (here the same as Fast's)
    assert m["visual_tokens"] and os.path.exists(os.path.join(serving_index, "visual.npz"))
    items = json.load(open(os.path.join(serving_index, "items.json")))
    assert items[5]["id"] == "shapes/tiny:test:test_000005"
    # the copied gallery image is the dataset's image, pixel for pixel
    models = engine.load_models(serving_pipeline)
    split = load_split(models.fast_run.config, "test")
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(serving_index, items[5]["path"]))),
                                  split.images([5])[0])


def test_fast_search_equals_exact_search_with_the_student_tower(serving_engine):
    eng = serving_engine
    models = eng.models
    query = "a small red circle to the left of a large blue square"
    student = models.fast_run.model(models.fast_state).student
    q = np.asarray(student.encode_text(models.fast_run.tokenizer([query])))[0]
    emb = np.load(os.path.join(eng.index_dir, "embeddings.npy"))
    order = np.argsort(-(emb @ q), kind="stable")[:8]
    out = eng.search(query, k=8)
    assert [r["index"] for r in out["results"]] == list(order)
    np.testing.assert_allclose([r["fast_score"] for r in out["results"]], (emb @ q)[order], rtol=1e-5, atol=1e-5)
    assert all(r["slow_score"] is None for r in out["results"]) and out["rerank"] == 0
    assert out["timings_ms"]["slow"] < out["timings_ms"]["total"]


def test_rerank_orders_top_k_by_slow_scores_of_the_real_model(serving_engine, serving_pipeline, tmp_path):
    eng = serving_engine
    query = "a large green triangle above a small red square"
    fast_only = eng.search(query, k=12)
    out = eng.search(query, k=12, rerank=7)
    top7 = {r["index"] for r in fast_only["results"][:7]}
    assert {r["index"] for r in out["results"][:7]} == top7  # re-ranking only re-orders the top K
    assert [r["index"] for r in out["results"][7:]] == [r["index"] for r in fast_only["results"][7:]]
    # Slow scores: an independent computation with the Slow model on the stored images
    slow_run, slow_state = eng.models.slow_run, eng.models.slow_state
    slow = slow_run.model(slow_state)
    idx = [r["index"] for r in out["results"][:7]]
    images = np.stack([np.asarray(Image.open(eng.image_path(i))) for i in idx])
    tokens = np.repeat(slow_run.tokenizer([query]), len(idx), axis=0)
    score = nnx.jit(lambda model, x, t: model.score(x, t))
    ref = np.asarray(score(slow, images, tokens))
    got = np.array([r["slow_score"] for r in out["results"][:7]])
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=0.05)  # stored visual tokens are bfloat16
    # the order: z-scored over the 7 (by hand here) with the index's alpha for K = 7
    assert out["alpha"] == eng.alpha_for(7) and eng.rerank["normalize"] == "zscore"
    fast7 = np.array([r["fast_score"] for r in out["results"][:7]])
    combined = (got - got.mean()) / got.std() + out["alpha"] * (fast7 - fast7.mean()) / fast7.std()
    assert np.all(np.diff(combined) <= 1e-3)
    # without stored visual tokens the candidates' features are recomputed from their images (float32)
    out_dir = str(tmp_path / "novis")
    engine.build_index(serving_pipeline, out_dir, dataset="shapes/tiny:test", limit=16, progress=False,
                       models=eng.models)
    eng2 = engine.SearchEngine(out_dir, models=eng.models)
    assert eng2.cache is None
    out2 = eng2.search(query, k=5, rerank=5)
    idx2 = [r["index"] for r in out2["results"]]
    images2 = np.stack([np.asarray(Image.open(eng2.image_path(i))) for i in idx2])
    ref2 = np.asarray(score(slow, images2, tokens[:5]))
    np.testing.assert_allclose([r["slow_score"] for r in out2["results"]], ref2, rtol=1e-4, atol=1e-3)


def test_add_images_to_an_index_without_rebuilding(serving_pipeline, serving_index, serving_engine, tmp_path):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    models = serving_engine.models
    src = [os.path.join(serving_index, "images", f"{i:08d}.png") for i in range(22)]
    for i, path in enumerate(src[:20]):
        Image.open(path).save(folder / f"{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    out = str(tmp_path / "idx")
    m = engine.build_index(serving_pipeline, out, images=str(folder), progress=False, models=models)
    assert (m["count"], m["delta_count"], m["visual_tokens"]) == (20, 0, False)
    with pytest.raises(FileExistsError, match="--add"):
        engine.build_index(serving_pipeline, out, images=str(folder), progress=False, models=models)
    Image.open(src[20]).convert("RGB").resize((128, 128)).save(folder / "more" / "big.jpg", quality=95)
    Image.open(src[21]).save(folder / "more" / "new.png")
    m = engine.build_index(serving_pipeline, out, images=str(folder), add=True, progress=False, models=models)
    assert (m["count"], m["main_count"], m["delta_count"]) == (22, 20, 2)  # only the 2 new files, in the delta
    items = json.load(open(os.path.join(out, "items.json")))
    assert [os.path.basename(it["path"]) for it in items[18:]] == ["18.png", "19.png", "big.jpg", "new.png"]
    # the first 20 keep their embeddings; a new PNG equals the dataset index's embedding of the same image
    emb = np.load(os.path.join(out, "embeddings.npy"))
    ref = np.load(os.path.join(serving_index, "embeddings.npy"))
    np.testing.assert_allclose(emb[:20], ref[:20], atol=1e-5)
    np.testing.assert_allclose(emb[21], ref[21], atol=1e-5)
    eng = engine.SearchEngine(out, models=models)
    res = eng.search("a small red circle", k=22)
    assert sorted(r["index"] for r in res["results"]) == list(range(22))  # delta items are searched too
    best = eng.ann.search(emb[20:22], 1)[0][:, 0]
    assert list(best) == [20, 21]
    with pytest.raises(ValueError, match="no images that are not in the index"):
        engine.build_index(serving_pipeline, out, images=str(folder), add=True, progress=False, models=models)


def test_index_made_by_another_model_is_refused_naming_both(serving_index, serving_pipeline):
    with pytest.raises(ValueError) as err:
        engine.SearchEngine(serving_index, workdir=os.path.join(serving_pipeline, "fast"))
    msg = str(err.value)
    want = engine.read_manifest(serving_index)["model"]["fingerprint"]
    other = engine.fingerprint(engine.load_models(os.path.join(serving_pipeline, "fast")))
    assert want in msg and other in msg and want != other
    with pytest.raises(ValueError, match="is a Slow run"):
        engine.load_models(os.path.join(serving_pipeline, "slow"))


def test_bad_queries_are_refused(serving_engine):
    for args, pattern in ((("   ",), "empty"), (("x" * 501,), "501 characters"), (("ok", 0), "k must be"),
                          (("ok", 10, 101), "rerank must be")):
        with pytest.raises(engine.QueryError, match=pattern):
            serving_engine.search(*args)


def test_cli_index_and_search(serving_pipeline, tmp_path):
    out = str(tmp_path / "cli_idx")
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    r = run_cli(["index", "--workdir", serving_pipeline, "--dataset", "shapes/tiny:test", "--limit", "20",
                 "--out", out, "--no-progress"], env)
    assert r.returncode == 0, r.stderr
    assert "20 images" in r.stdout and "re-ranks: slow" in r.stdout
    r = run_cli(["search", out, "a red circle", "--k", "3", "--rerank", "5"], env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "Slow re-ranked the Fast top 5" in lines[0]
    rows = [ln.split() for ln in lines[2:5]]
    assert [row[0] for row in rows] == ["1", "2", "3"] and all(row[3].startswith("shapes/tiny:test:") for row in rows)
    float(rows[0][1]), float(rows[0][2])  # Fast and Slow scores are printed
    assert lines[5].startswith("time: text") and "Slow" in lines[5]
    r = run_cli(["search", out, "  "], env)  # refused before any model is loaded
    assert r.returncode == 1 and "fastslow: error: the query is empty" in r.stderr


def test_rerank_alpha_is_stored_per_k_and_serving_uses_the_one_for_its_k(serving_engine, tmp_path):
    import dataclasses
    import json
    models = serving_engine.models
    # the pipeline eval's rows (as in WORKDIR/eval.json): alpha chosen per K on validation
    wd = tmp_path / "wd"
    wd.mkdir()
    method = ("fast_distilled" if models.tower else "fast") + "+slow"
    rows = [{"method": method, "k": 10, "alpha": 0.5, "normalize": "zscore"},
            {"method": method, "k": 20, "alpha": 2.0, "normalize": "zscore", "visual": "cached"},
            {"method": "other+slow", "k": 5, "alpha": 9.0, "normalize": "zscore"},
            {"method": "slow", "k": None, "alpha": None}]
    (wd / "eval.json").write_text(json.dumps(rows))
    settings = engine.rerank_settings(dataclasses.replace(models, workdir=str(wd)))
    assert settings == {"normalize": "zscore", "alpha": {"10": 0.5, "20": 2.0}}
    eng = engine.SearchEngine.__new__(engine.SearchEngine)  # only the alpha lookup, on these settings
    eng.alpha, eng.rerank = None, settings
    assert [eng.alpha_for(k) for k in (1, 10, 14, 15, 16, 20, 50)] == [0.5, 0.5, 0.5, 0.5, 2.0, 2.0, 2.0]
    eng.alpha = 3.0  # --alpha overrides every K
    assert eng.alpha_for(10) == eng.alpha_for(20) == 3.0
    # the index written by build_index stores its model's settings: the tiny pipeline has no eval.json, so no
    # alpha is known and re-ranking is Slow alone
    assert not os.path.exists(os.path.join(models.workdir, "eval.json"))
    assert serving_engine.manifest["rerank"] == {"normalize": "zscore", "alpha": {}}
    assert serving_engine.alpha_for(10) == 0.0


def test_batched_search_equals_the_unbatched_path_and_compiles_nothing_after_warm_up(serving_engine):
    import jax
    eng = serving_engine
    compiles = []

    def listener(event, _secs, **_kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        _check_batched_against_alone(eng, compiles)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _check_batched_against_alone(eng, compiles):
    shapes = eng.compiled_shapes()
    assert shapes["text_rows"] == [1, 2, 4, 8, 16] and len(shapes["slow"]) == 5 * 5  # row buckets x length buckets
    # length buckets of max_len 64: 8 (short queries), then 16, 32, 48, 64
    assert sorted({length for _, length in shapes["slow"]}) == [8, 16, 32, 48, 64]
    assert eng.warm_up() == 30
    compiled = len(compiles)
    # mixed lengths (three token-length buckets), k, and rerank K (0, partial rows of 10, several rows, all 64 items)
    long_query = "a small red circle to the left of a large blue square and a green triangle below a yellow diamond"
    queries = ["a small red circle", long_query, "two yellow diamonds", "a purple circle in the bottom left corner"]
    requests = [(queries[i % 4], [10, 5, 12, 3][i % 4], [10, 0, 20, 7, 64, 100][i % 6]) for i in range(16)]
    batched = eng.search_batch(requests, queued_ms=[float(i) for i in range(16)])
    assert len(compiles) == compiled  # every shape was compiled by the warm-up
    alone = [eng.search(*r) for r in requests]
    assert len(compiles) == compiled
    for req, a, b in zip(requests, alone, batched):
        assert (b["query"], b["k"], b["rerank"]) == (a["query"], a["k"], min(req[2], 64))
        assert [r["index"] for r in b["results"]] == [r["index"] for r in a["results"]], req
        np.testing.assert_allclose([r["fast_score"] for r in b["results"]], [r["fast_score"] for r in a["results"]],
                                   rtol=1e-5, atol=1e-5)
        n = b["rerank"]
        assert all(r["slow_score"] is not None for r in b["results"][:n])
        assert all(r["slow_score"] is None for r in b["results"][n:])
        np.testing.assert_allclose([r["slow_score"] for r in b["results"][:n]],
                                   [r["slow_score"] for r in a["results"][:n]], rtol=1e-5, atol=1e-4)
        assert b["batch"] == 16 and a["batch"] == 1
    assert [b["timings_ms"]["queue"] for b in batched] == [float(i) for i in range(16)]
    assert all(a["timings_ms"]["queue"] == 0.0 for a in alone)
    # more requests than max_batch are answered in steps, in order
    many = eng.search_batch([("a small red circle", 3, 0)] * 20)
    assert len(many) == 20 and {m["batch"] for m in many} == {16, 4}
    with pytest.raises(engine.QueryError, match="k must be"):
        eng.search_batch([("ok", 10, 0), ("ok", 0, 0)])


def test_batch_buckets():
    assert engine.batch_buckets(1) == (1,)
    assert engine.batch_buckets(16) == (1, 2, 4, 8, 16)
    assert engine.batch_buckets(12) == (1, 2, 4, 8, 12)
    assert engine.bucket(5, (1, 2, 4, 8)) == 8 and engine.bucket(9, (1, 2, 4, 8)) == 9
    with pytest.raises(ValueError, match="at least 1"):
        engine.batch_buckets(0)


def test_image_shape_is_the_runs_training_size():
    # the stored shapes/tiny images are 64 px; a run that resizes them (data.image_size) is served at its size
    from types import SimpleNamespace

    from tests.conftest import tiny_config
    cfg = tiny_config()
    cfg.data.image_size = 0
    assert engine.image_shape(SimpleNamespace(config=cfg)) == (64, 64, 3)
    cfg.data.image_size = 40
    assert engine.image_shape(SimpleNamespace(config=cfg)) == (40, 40, 3)
