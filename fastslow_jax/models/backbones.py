"""The backbone registry: ``model.vision.name`` -> a vision backbone (each returns a feature pyramid).

Above ``vision.py`` (TinyCNN, ResNet-50 and the shared helpers), ``efficientnet.py`` and ``clip.py``,
which all build on those helpers; ``fast.py`` and ``slow.py`` build their backbone here.
"""
from __future__ import annotations

from typing import Callable

import ml_collections
from flax import nnx

from fastslow_jax.models.clip import CLIPVisionTower
from fastslow_jax.models.efficientnet import EfficientNetLite
from fastslow_jax.models.vision import ResNet, TinyCNN

BACKBONES: dict[str, Callable[..., nnx.Module]] = {
    "tiny_cnn": TinyCNN, "resnet50": ResNet, "efficientnet_lite0": EfficientNetLite,
    "efficientnet_lite1": EfficientNetLite, "efficientnet_lite2": EfficientNetLite, "clip_vit": CLIPVisionTower}


def build_backbone(cfg: ml_collections.ConfigDict, *, dtype=None, rngs: nnx.Rngs) -> nnx.Module:
    """``model.vision.name`` -> a backbone (``model.vision.pretrained`` is loaded later, by
    ``weights.load_pretrained``; only the CLIP ViT reads its architecture from that checkpoint here)."""
    if cfg.name not in BACKBONES:
        raise ValueError(f"unknown model.vision.name {cfg.name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[cfg.name](cfg, dtype=dtype, rngs=rngs)
