"""Host-side image preprocessing: each tower's convention (resize, centre crop, mean / std) and the
resize + centre crop itself. The bottom layer: ``data/`` (decoding stored images to ``data.image_size``)
and ``models/`` (backbones normalise with the mean / std) both read it here.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """A checkpoint's image convention: resize the shorter side to ``resize``, centre-crop ``crop`` x
    ``crop`` (host side, ``preprocess_image``), then ``(x / 255 - mean) / std`` (inside the backbone)."""
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bilinear"  # PIL filter name


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_LITE_MEAN, _LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3  # (x - 127) / 128 on [0, 255] pixels

# The convention of each tower's published weights (Hugging Face microsoft/resnet-50 and torchvision:
# 256 -> 224 ImageNet; EfficientNet-Lite: crop / 0.875 -> crop, (x - 127) / 128; CLIP: 224 bicubic).
PREPROCESSING: dict[str, Preprocessing] = {
    "resnet50": Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
    "efficientnet_lite0": Preprocessing(256, 224, _LITE_MEAN, _LITE_STD),
    "efficientnet_lite1": Preprocessing(274, 240, _LITE_MEAN, _LITE_STD),
    "efficientnet_lite2": Preprocessing(297, 260, _LITE_MEAN, _LITE_STD),
    "clip_vit": Preprocessing(224, 224, CLIP_MEAN, CLIP_STD, "bicubic"),
}


def preprocessing(cfg: ml_collections.ConfigDict) -> Preprocessing:
    """The convention for ``model.vision``: the tower's table entry (crop = ``image_size`` if set, resize
    scaled alike); ``mean`` / ``std`` from the config unless ``pretrained`` is set (then the checkpoint's)."""
    base = PREPROCESSING.get(cfg.name, Preprocessing(0, 0, (0.5,) * 3, (0.25,) * 3))
    crop = cfg.get("image_size", 0) or base.crop
    resize = round(crop * base.resize / base.crop) if base.crop else 0
    if cfg.get("pretrained", ""):  # the checkpoint's convention wins over the from-scratch fields
        return dataclasses.replace(base, resize=resize, crop=crop)
    return dataclasses.replace(base, resize=resize, crop=crop, mean=tuple(cfg.get("mean", ()) or base.mean),
                               std=tuple(cfg.get("std", ()) or base.std))


def preprocess_image(image, spec: Preprocessing):
    """A PIL image or HxWx{1,3,4} uint8 array -> [crop, crop, 3] uint8: shorter side to ``spec.resize``, centre crop."""

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    w, h = img.size
    scale = spec.resize / min(w, h)
    nw, nh = max(spec.crop, round(w * scale)), max(spec.crop, round(h * scale))
    img = img.resize((nw, nh), getattr(Image.Resampling, spec.resample.upper()))
    left, top = (nw - spec.crop) // 2, (nh - spec.crop) // 2
    return np.asarray(img.crop((left, top, left + spec.crop, top + spec.crop)), dtype=np.uint8)
