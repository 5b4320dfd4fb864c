import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from fastslow_jax.models import layers
from fastslow_jax.models.fast import FastModel
from fastslow_jax.models.backbones import build_backbone
from tests.conftest import tiny_config


def _model(seed=0):
    cfg = tiny_config()
    return FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(seed)), cfg


def test_masked_mean_hand_computed():
    x = jnp.asarray([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    valid = jnp.asarray([[True, True, False]])
    np.testing.assert_allclose(layers.masked_mean(x, valid), [[2.0, 3.0]])


def test_l2_normalize():
    y = layers.l2_normalize(jnp.asarray([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0]], atol=1e-6)


def test_embeddings_are_unit_vectors_with_expected_shapes():
    model, cfg = _model()
    images = jax.random.randint(jax.random.key(0), (3, 64, 64, 3), 0, 256).astype(jnp.uint8)
    tokens = jnp.asarray([[2, 10, 11, 3, 0, 0], [2, 12, 3, 0, 0, 0], [2, 13, 14, 15, 16, 3]])
    img, txt = model.encode_image(images), model.encode_text(tokens)
    assert img.shape == (3, cfg.model.embed_dim) and txt.shape == (3, cfg.model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(model.scale()), 1 / cfg.model.temperature, rtol=1e-5)


def test_text_embedding_ignores_padding():
    model, _ = _model()
    short = jnp.asarray([[2, 10, 11, 3]])
    padded = jnp.asarray([[2, 10, 11, 3, 0, 0, 0, 0]])
    np.testing.assert_allclose(model.encode_text(short), model.encode_text(padded), atol=1e-5)


def test_clip_of_identical_frames_embeds_like_the_image():
    model, _ = _model()
    image = jax.random.randint(jax.random.key(1), (2, 64, 64, 3), 0, 256).astype(jnp.uint8)
    clip = jnp.repeat(image[:, None], 4, axis=1)  # [B, T, H, W, 3]
    np.testing.assert_allclose(model.encode_image(clip), model.encode_image(image), atol=1e-5)


def test_tiny_cnn_pyramid_strides():
    cfg = tiny_config().model.vision
    net = build_backbone(cfg, rngs=nnx.Rngs(0))
    feats = net(jnp.zeros((2, 64, 64, 3), jnp.uint8))
    assert {k: v.shape for k, v in feats.items()} == {
        "C3": (2, 8, 8, cfg.widths[1]), "C4": (2, 4, 4, cfg.widths[2]), "C5": (2, 2, 2, cfg.widths[3])}
    assert net.channels == {"C3": cfg.widths[1], "C4": cfg.widths[2], "C5": cfg.widths[3]}


def test_resnet50_parameter_count_and_pyramid():
    cfg = ml_collections.ConfigDict({"name": "resnet50", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
    net = nnx.eval_shape(lambda: build_backbone(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(net, nnx.Param)
    # torchvision resnet50 has 25,557,032 parameters; without its 2048->1000 fc layer: 23,508,032.
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == 23_508_032
    out = jax.eval_shape(lambda m, x: m(x), net, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.uint8))
    assert {k: v.shape for k, v in out.items()} == {
        "C3": (1, 28, 28, 512), "C4": (1, 14, 14, 1024), "C5": (1, 7, 7, 2048)}


def test_unknown_backbone_is_a_clear_error():
    cfg = ml_collections.ConfigDict({"name": "vgg"})
    with pytest.raises(ValueError, match="unknown model.vision.name 'vgg'"):
        build_backbone(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 1), (8, 3, 2), (9, 5, 2), (4, 5, 1)])
def test_depthwise_conv_matches_grouped_convolution(size, kernel, stride):
    """The CPU path (shifted slices) against XLA's grouped convolution with TF "SAME" padding: values
    and both gradients, odd and even sizes, strides 1 and 2."""
    from fastslow_jax.models.vision import DepthwiseConv

    dw = DepthwiseConv(6, kernel, stride, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, size, size, 6))

    def grouped(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6)

    graphdef, state = nnx.split(dw)

    def ours(x, w):  # the module as a function of its (only) parameter
        return nnx.merge(graphdef, jax.tree.map(lambda _: w, state))(x)

    w = dw.kernel[...]
    out = ours(x, w)
    assert out.shape == (2, -(-size // stride), -(-size // stride), 6)
    np.testing.assert_allclose(out, grouped(x, w), atol=1e-5)
    g_ours = jax.grad(lambda x, w: (ours(x, w) ** 2).sum(), argnums=(0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: (grouped(x, w) ** 2).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_pooled_feature_of_several_levels_and_sizes():
    cfg = tiny_config()
    base = FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))
    cfg.model.pool_levels = ("C5", "C3")
    cfg.model.pool_sizes = (32,)
    cfg.model.image_head = "mlp"
    cfg.model.head_hidden = 16
    model = FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))  # same seed: the same backbone weights
    ch = model.vision.channels
    assert model.feature_dim == 2 * (ch["C5"] + ch["C3"]) and model.image_proj.kernel.shape[0] == model.feature_dim
    # smooth images (at most 2 cycles across): any two good resizing methods agree on them
    u = np.linspace(0, 1, 64, endpoint=False)
    freq = np.random.default_rng(1).uniform(0.5, 2.0, (2, 3, 2))
    images = jnp.asarray(np.stack([np.stack([127.5 + 100 * np.sin(2 * np.pi * (f[c, 0] * u[:, None] + f[c, 1] * u[None])
                                                                    + c) for c in range(3)], -1) for f in freq]),
                         jnp.uint8)
    got = np.asarray(model.image_features(images))
    maps = model.vision(images)
    c5, c3 = ch["C5"], ch["C3"]
    np.testing.assert_allclose(got[:, :c5], np.asarray(base.image_features(images)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, c5:c5 + c3], np.asarray(maps["C3"]).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # the same image at 32 px: each 2x2 block averaged (on a smooth image, close to an antialiased cubic resize)
    small = np.asarray(images, np.float32).reshape(2, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    maps32 = model.vision(jnp.asarray(small))
    want32 = np.concatenate([np.asarray(maps32["C5"]).mean(axis=(1, 2)), np.asarray(maps32["C3"]).mean(axis=(1, 2))], 1)
    err = np.abs(got[:, c5 + c3:] - want32).mean()
    assert err < 0.1 * np.abs(want32).mean()
    assert np.abs(got[:, :c5 + c3] - want32).mean() > 3 * err  # and it is not the 64 px feature again
    # the MLP's output layer starts at zero: at step 0 the head is the linear projection
    lin = layers.l2_normalize(model.image_proj(jnp.asarray(got)))
    np.testing.assert_allclose(np.asarray(model.embed_image_features(jnp.asarray(got))), np.asarray(lin), atol=1e-6)
    # a clip of identical frames pools like its image
    clip = jnp.repeat(images[:, None], 3, axis=1)
    np.testing.assert_allclose(np.asarray(model.image_features(clip)), got, rtol=1e-4, atol=1e-5)


def test_unknown_pool_level_or_head_is_a_clear_error():
    cfg = tiny_config()
    cfg.model.pool_levels = ("C5", "C2")
    with pytest.raises(ValueError, match=r"model.pool_levels \['C5', 'C2'\]: the tiny_cnn backbone has levels"):
        FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))
    cfg = tiny_config()
    cfg.model.image_head = "transformer"
    with pytest.raises(ValueError, match="model.image_head must be 'linear' or 'mlp'"):
        FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))


def test_feature_dropout_only_in_training():
    cfg = tiny_config()
    cfg.model.feature_dropout = 0.5
    model = FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))
    feats = jnp.ones((4, model.feature_dim))
    want = layers.l2_normalize(model.image_proj(feats))
    np.testing.assert_allclose(model.embed_image_features(feats), want, atol=1e-6)  # eval: no dropout
    np.testing.assert_allclose(model.embed_image_features(feats, train=True), want, atol=1e-6)  # no rngs: none
    # in training each feature is zeroed with probability 0.5 and the rest doubled: this is the projection of that
    dropped = model.embed_image_features(feats, train=True, rngs=nnx.Rngs(dropout=3))
    keep = np.asarray(nnx.Dropout(0.5)(feats, deterministic=False, rngs=nnx.Rngs(dropout=3))) > 0
    assert 0.3 < keep.mean() < 0.7
    np.testing.assert_allclose(dropped, layers.l2_normalize(model.image_proj(jnp.asarray(keep * 2.0))), atol=1e-5)


def test_text_feature_of_several_layers_and_mlp_head():
    cfg = tiny_config()
    base = FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))
    cfg.model.text_pool_layers = (0, 1)
    cfg.model.text_head = "mlp"
    cfg.model.head_hidden = 16
    model = FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))  # same seed: the same text tower
    tokens = jnp.asarray([[2, 10, 11, 3, 0, 0], [2, 12, 13, 14, 15, 3]])
    valid = np.asarray(tokens) != 0
    w = model.text.width
    assert model.text_feature_dim == 2 * w and model.text_proj.kernel.shape[0] == 2 * w
    # by hand: the embeddings, then the first layer under the padding mask, each mean-pooled over real tokens
    emb = model.text.embeddings(tokens)
    first = model.text.layers[0](emb, mask=layers.padding_mask(tokens, 0))
    pool = lambda x: (np.asarray(x) * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    got = np.asarray(model.text_features(tokens))
    np.testing.assert_allclose(got[:, :w], pool(emb), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, w:], pool(first), rtol=1e-5, atol=1e-6)
    # the default is the last layer's mean, as before
    np.testing.assert_allclose(np.asarray(base.text_features(tokens)),
                               pool(base.text(tokens)), rtol=1e-5, atol=1e-6)
    # the MLP head starts as the linear one; once its output layer moves, it is the residual sum
    feats = jnp.asarray(got)
    np.testing.assert_allclose(model.embed_text_features(feats), layers.l2_normalize(model.text_proj(feats)), atol=1e-6)
    out = model.text_mlp.layers[2]
    out.kernel[...] = jax.random.normal(jax.random.key(1), out.kernel.shape)
    hidden = jax.nn.gelu(model.text_mlp.layers[0](feats))
    want = layers.l2_normalize(model.text_proj(feats) + hidden @ out.kernel[...] + out.bias[...])
    np.testing.assert_allclose(model.embed_text_features(feats), want, rtol=1e-5, atol=1e-6)


def test_bad_text_pool_layers_or_head_is_a_clear_error():
    cfg = tiny_config()
    depth = cfg.model.text.depth
    cfg.model.text_pool_layers = (1, depth + 1)
    with pytest.raises(ValueError, match=rf"model.text_pool_layers \[1, {depth + 1}\]: the text tower has layers "
                                         rf"0..{depth}"):
        FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))
    cfg = tiny_config()
    cfg.model.text_head = "deep"
    with pytest.raises(ValueError, match="model.text_head must be 'linear' or 'mlp'"):
        FastModel(cfg.model, vocab_size=131, rngs=nnx.Rngs(0))
