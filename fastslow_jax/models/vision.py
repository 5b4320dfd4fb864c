"""Vision backbones. Every backbone maps uint8 images [B, H, W, 3] to a feature pyramid.

``backbone(images, train=...)`` returns ``{"C3": [B, H/8, W/8, c3], "C4": [B, H/16, W/16, c4],
"C5": [B, H/32, W/32, c5]}`` and exposes ``backbone.channels = {"C3": c3, "C4": c4, "C5": c5}``.
Fast pools C5; Slow (fine-grained cross-attention) builds P5..P3 from the whole pyramid.
Input normalisation belongs to the backbone (each pretrained checkpoint has its own convention).
This module holds the shared conv / norm helpers and the TinyCNN and ResNet-50; EfficientNet-Lite
(``efficientnet.py``) and the CLIP ViT (``clip.py``) build on the helpers, and ``backbones.py`` is
the registry that picks one by ``model.vision.name``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fastslow_jax.parallel import constrain
# each tower's image convention lives with the other host-side preprocessing (imported by data/ as well)
from fastslow_jax.preprocess import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, PREPROCESSING,  # noqa: F401
                                     Preprocessing, preprocess_image, preprocessing)

PYRAMID_LEVELS = ("C3", "C4", "C5")


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, rngs: nnx.Rngs, use_bias: bool = False,
         dtype=None, padding="SAME", groups: int = 1) -> nnx.Conv:
    """A conv with logical axes. ``padding``: "SAME" (TensorFlow's: extra row/column at the bottom/right
    when strided) or "TORCH" (``kernel // 2`` on every side, as torch's ``Conv2d(padding=k // 2)``)."""
    init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    if padding == "TORCH":
        padding = ((kernel // 2, kernel // 2),) * 2
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=padding, use_bias=use_bias,
                    feature_group_count=groups,
                    kernel_init=nnx.with_partitioning(init, (None, None, "conv_in", "conv_out")),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
                    dtype=dtype, rngs=rngs)


def _same_pads(n: int, kernel: int, stride: int) -> tuple[int, tuple[int, int]]:
    """TensorFlow "SAME": (output size, (low, high) padding) of one spatial axis."""
    out = -(-n // stride)
    total = max((out - 1) * stride + kernel - n, 0)
    return out, (total // 2, total - total // 2)


class DepthwiseConv(nnx.Module):
    """A depthwise (one filter per channel) conv with "SAME" padding and no bias; the kernel has
    ``nnx.Conv(c, c, feature_group_count=c)``'s layout, [k, k, 1, c], so checkpoints map unchanged.

    On CPU it is computed as k x k shifted, strided slices times per-channel weights, which XLA fuses
    into one loop: a grouped convolution on XLA:CPU measured 10-13x slower forward and 4-18x slower
    backward (the MBConv shapes of EfficientNet-Lite0 at 64 px, batch 64, this project's 2-core
    machine). Elsewhere it is the grouped convolution the accelerators' libraries optimise; both give
    the same values."""

    def __init__(self, channels: int, kernel: int, stride: int = 1, *, dtype=None, rngs: nnx.Rngs):
        init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        self.kernel = nnx.Param(init(rngs.params(), (kernel, kernel, 1, channels)),
                                out_sharding=(None, None, "conv_in", "conv_out"))
        self.kernel_size, self.stride, self.dtype = kernel, stride, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.kernel[...]
        if self.dtype is not None:
            x, w = x.astype(self.dtype), w.astype(self.dtype)
        k, s = self.kernel_size, self.stride
        if jax.default_backend() != "cpu":
            return jax.lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                feature_group_count=x.shape[-1])
        b, h, wd, c = x.shape
        ho, ph = _same_pads(h, k, s)
        wo, pw = _same_pads(wd, k, s)
        xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
        y = None
        for i in range(k):
            for j in range(k):
                tap = jax.lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * s + 1, j + (wo - 1) * s + 1, c),
                                    (1, s, s, 1)) * w[i, j, 0]
                y = tap if y is None else y + tap
        return y


def normalize_images(images: jax.Array, mean, std, dtype) -> jax.Array:
    """uint8 (or float in [0, 255]) images -> (x/255 - mean) / std in ``dtype``."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype or jnp.float32)


class TinyCNN(nnx.Module):
    """A small residual CNN for the built-in datasets: a 4x4 stride-4 patchify stem, then one residual
    stage per pyramid level (C2 at stride 4, then stride-2 stages C3, C4, C5), GroupNorm and ReLU.

    64x64 images give C3 8x8, C4 4x4 and C5 2x2 maps.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, dtype=None, rngs: nnx.Rngs):
        widths = tuple(cfg.widths)
        if len(widths) != 4:
            raise ValueError(f"model.vision.widths must list 4 stage widths (C2..C5), got {widths}")
        self.mean, self.std, self.dtype = tuple(cfg.mean), tuple(cfg.std), dtype
        self.stem = conv(3, widths[0], 4, 4, rngs=rngs, dtype=dtype)
        self.stages = nnx.List()
        in_ch = widths[0]
        for i, w in enumerate(widths):
            self.stages.append(_TinyStage(in_ch, w, 1 if i == 0 else 2, dtype=dtype, rngs=rngs))
            in_ch = w
        self.channels = {"C3": widths[1], "C4": widths[2], "C5": widths[3]}

    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        x = self.stem(normalize_images(images, self.mean, self.std, self.dtype))
        feats = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                feats[f"C{i + 2}"] = constrain(x, ("batch", None, None, "conv_out"))
        return feats


class _TinyStage(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype=None, rngs: nnx.Rngs):
        self.down = conv(in_ch, out_ch, 3, stride, rngs=rngs, dtype=dtype)
        self.norm1 = nnx.GroupNorm(out_ch, num_groups=min(8, out_ch), dtype=dtype, rngs=rngs)
        self.conv = conv(out_ch, out_ch, 3, 1, rngs=rngs, dtype=dtype)
        self.norm2 = nnx.GroupNorm(out_ch, num_groups=min(8, out_ch), dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.norm1(self.down(x)))
        return jax.nn.relu(x + self.norm2(self.conv(x)))


class Bottleneck(nnx.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv, as in torchvision and Hugging Face)."""

    def __init__(self, in_ch: int, width: int, stride: int, *, dtype=None, rngs: nnx.Rngs):
        out_ch = width * 4
        bn = lambda c: batch_norm(c, dtype=dtype, rngs=rngs)
        cv = lambda i, o, k, s=1: conv(i, o, k, s, rngs=rngs, dtype=dtype, padding="TORCH")
        self.conv1, self.bn1 = cv(in_ch, width, 1), bn(width)
        self.conv2, self.bn2 = cv(width, width, 3, stride), bn(width)
        self.conv3, self.bn3 = cv(width, out_ch, 1), bn(out_ch)
        if stride != 1 or in_ch != out_ch:
            self.proj, self.proj_bn = cv(in_ch, out_ch, 1, stride), bn(out_ch)
        else:
            self.proj = self.proj_bn = None

    def __call__(self, x, *, train: bool):
        ura = not train
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
        y = self.bn3(self.conv3(y), use_running_average=ura)
        shortcut = x if self.proj is None else self.proj_bn(self.proj(x), use_running_average=ura)
        return jax.nn.relu(y + shortcut)


def batch_norm(c: int, *, eps: float = 1e-5, dtype=None, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=0.9, epsilon=eps, dtype=dtype, rngs=rngs,
                         scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("conv_out",)),
                         bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)))


class ResNet(nnx.Module):
    """ResNet-50 v1.5 (stage sizes 3, 4, 6, 3; base width 64) returning C3 (512 ch), C4 (1024 ch) and
    C5 (2048 ch). Torch-style symmetric padding, so Hugging Face / torchvision weights carry over exactly.
    ``stage_sizes`` and ``base_width`` (stem width; stage i has ``base_width * 2**i * 4`` outputs) are
    config fields for smaller variants."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, dtype=None, rngs: nnx.Rngs):
        stage_sizes = tuple(cfg.get("stage_sizes", (3, 4, 6, 3)))
        base = cfg.get("base_width", 64)
        spec = preprocessing(cfg)
        self.mean, self.std, self.dtype = spec.mean, spec.std, dtype
        self.stem = conv(3, base, 7, 2, rngs=rngs, dtype=dtype, padding="TORCH")
        self.stem_bn = batch_norm(base, dtype=dtype, rngs=rngs)
        self.stages = nnx.List()
        in_ch = base
        for i, n in enumerate(stage_sizes):
            width = base * 2 ** i
            blocks = nnx.List()
            for j in range(n):
                blocks.append(Bottleneck(in_ch, width, 2 if (j == 0 and i > 0) else 1, dtype=dtype, rngs=rngs))
                in_ch = width * 4
            self.stages.append(blocks)
        self.channels = {"C3": base * 8, "C4": base * 16, "C5": base * 32}

    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        x = normalize_images(images, self.mean, self.std, self.dtype)
        x = jax.nn.relu(self.stem_bn(self.stem(x), use_running_average=not train))
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                  ((0, 0), (1, 1), (1, 1), (0, 0)))
        feats = {}
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                x = block(x, train=train)
            feats[f"C{i + 2}"] = constrain(x, ("batch", None, None, "conv_out"))
        return {k: feats[k] for k in PYRAMID_LEVELS}
