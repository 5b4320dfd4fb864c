"""LiT-style locking (model.freeze_vision / freeze_text), per-tower learning rates and the feature cache."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fastslow_jax.data import pipeline
from fastslow_jax.train import loop
from fastslow_jax.train.fast import LockedTowerFeatures
from fastslow_jax.train.optim import lr_labels, make_optimizer
from tests.conftest import tiny_config

RESNET = ["model.vision.name=resnet50", "model.vision.stage_sizes=1,1,1,1", "model.vision.base_width=8"]


def _steps(cfg, steps=3):
    run = loop.setup(cfg, jax.devices()[:1])
    state = run.warm_start(run.init_state())
    before = jax.tree.map(np.asarray, state)
    batch = next(pipeline.train_iterator(pipeline.train_dataset(cfg, run.tokenizer)))
    batch = {k: v for k, v in batch.items() if k in ("image", "tokens", "image_index")}
    step = loop.make_train_step(run)
    for _ in range(steps):
        state, _ = step(state, batch, jax.random.key(0))
    return run, before, jax.tree.map(np.asarray, state)


def _leaves(tree, name):
    return {str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree) if f"'{name}'" in str(p)}


def test_locked_image_tower_keeps_its_parameters_and_batchnorm_statistics(data_dir):
    cfg = tiny_config("shapes_fast.py", overrides=RESNET + ["model.freeze_vision=true"], data_dir=data_dir)
    run, before, after = _steps(cfg)
    frozen_before = {**_leaves(before["params"], "vision"), **_leaves(before["rest"], "vision")}
    frozen_after = {**_leaves(after["params"], "vision"), **_leaves(after["rest"], "vision")}
    assert len(frozen_after) > 10 and any("mean" in k for k in frozen_after)  # BatchNorm statistics are there
    assert not _leaves(after["params"], "vision")  # the optimizer holds no image-tower parameter
    for k, v in frozen_before.items():
        np.testing.assert_array_equal(frozen_after[k], v, err_msg=k)
    moved = [k for k, v in _leaves(before["params"], "text").items() if not np.array_equal(v, _leaves(
        after["params"], "text")[k])]
    assert moved  # the text tower does train
    # the same run unlocked moves the BatchNorm statistics (so the check above can fail)
    cfg2 = tiny_config("shapes_fast.py", overrides=RESNET, data_dir=data_dir)
    _, b2, a2 = _steps(cfg2)
    stats = [k for k in _leaves(b2["rest"], "vision") if "mean" in k]
    assert any(not np.array_equal(_leaves(b2["rest"], "vision")[k], _leaves(a2["rest"], "vision")[k]) for k in stats)


def test_locked_text_tower_is_not_trained(data_dir):
    cfg = tiny_config("shapes_fast.py", overrides=["model.freeze_text=true"], data_dir=data_dir)
    _, before, after = _steps(cfg)
    assert not _leaves(after["params"], "text")
    for k, v in _leaves(before["rest"], "text").items():
        np.testing.assert_array_equal(_leaves(after["rest"], "text")[k], v, err_msg=k)


def test_lr_mult_groups_and_scales_updates():
    params = {"text": {"w": jnp.ones((2, 2))}, "vision": {"w": jnp.ones((2, 2))}, "image_proj": {"w": jnp.ones((2, 2))}}
    labels = lr_labels(params, {"text": 0.1})
    assert labels == {"text": {"w": "text"}, "vision": {"w": "default"}, "image_proj": {"w": "default"}}
    cfg = tiny_config("shapes_fast.py", overrides=["optim.lr_mult.text=0.1", "optim.warmup_steps=0",
                                                   "optim.weight_decay=0", "optim.grad_clip=0"]).optim
    tx, _ = make_optimizer(cfg, 10)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step moves every weight by lr (sign of the gradient); the text group by 0.1 lr
    np.testing.assert_allclose(np.asarray(updates["text"]["w"]), 0.1 * np.asarray(updates["vision"]["w"]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(updates["vision"]["w"]), -cfg.lr, rtol=1e-4)


def test_feature_cache_is_keyed_by_the_tower_weights(data_dir):
    cfg = tiny_config("shapes_fast.py", overrides=["model.freeze_vision=true", "model.freeze_text=true"],
                      data_dir=data_dir)
    run = loop.setup(cfg, jax.devices()[:1])
    state = run.init_state()
    a = LockedTowerFeatures(run, state, progress=False)
    model = run.model(state)
    split = pipeline.EvalSplit(cfg.data, cfg.data.train_split)
    images = split.images(range(2))
    np.testing.assert_allclose(np.asarray(a(1, 0)["image_features"]),
                               np.asarray(model.image_features(jnp.asarray(images)))[1], rtol=1e-4, atol=1e-5)
    tokens = run.tokenizer([split.captions[int(np.flatnonzero(split.caption_to_image == 1)[0])]])
    np.testing.assert_allclose(a(1, 0)["text_features"], np.asarray(model.text_features(jnp.asarray(tokens)))[0],
                               rtol=1e-4, atol=1e-5)
    again = LockedTowerFeatures(run, state, progress=False)  # reuses the cached files
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(a.image))
    cfg2 = tiny_config("shapes_fast.py", overrides=["model.freeze_vision=true", "seed=1"], data_dir=data_dir)
    run2 = loop.setup(cfg2, jax.devices()[:1])
    b = LockedTowerFeatures(run2, run2.init_state(), progress=False)  # other weights: another cache file
    assert not np.allclose(np.asarray(a(0, 0)["image_features"]), np.asarray(b(0, 0)["image_features"]))


def test_text_feature_cache_is_keyed_by_the_pooled_layers(data_dir):
    over = ["model.freeze_text=true"]
    cfg = tiny_config("shapes_fast.py", overrides=over, data_dir=data_dir)
    run = loop.setup(cfg, jax.devices()[:1])
    state = run.init_state()
    last = LockedTowerFeatures(run, state, progress=False)
    cfg2 = tiny_config("shapes_fast.py", overrides=over + ["model.text_pool_layers=0,1"], data_dir=data_dir)
    run2 = loop.setup(cfg2, jax.devices()[:1])
    state2 = run2.init_state()  # same seed: the same text tower, so only the pooled layers tell the caches apart
    both = LockedTowerFeatures(run2, state2, progress=False)
    split = pipeline.EvalSplit(cfg.data, cfg.data.train_split)
    tokens = jnp.asarray(run.tokenizer([split.captions[0]]))
    want = np.asarray(run2.model(state2).text_features(tokens))[0]
    assert both.text.shape[1] == 2 * last.text.shape[1] == want.shape[0]
    np.testing.assert_allclose(both(0, 0)["text_features"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last(0, 0)["text_features"], np.asarray(run.model(state).text_features(tokens))[0],
                               rtol=1e-4, atol=1e-5)
