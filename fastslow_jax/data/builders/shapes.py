"""TFDS builder for `shapes`, the hermetic procedurally generated retrieval dataset.

The content comes from `fastslow_jax.data.shapes` (see its docstring: 1-3 coloured shapes on a 3x3
grid, compositional captions, confuser families that defeat bag-of-attributes matching). Nothing is
downloaded. Build and read without TensorFlow::

    builder = Shapes(config="tiny", data_dir=d)
    builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source("test")   # random access; feed it to Grain
    source[0]["image"]      # uint8 [64, 64, 3], equal to shapes.render(...)
    source[0]["captions"]   # array of str, length captions_per_image

Configs: "default" (64 px; 20000 train / 1000 validation / 1000 test) and "tiny" (64 px; 256 / 64 / 64).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from fastslow_jax.data import shapes


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """A builder config holding the `ShapesSpec` that fully determines the data."""

    spec: shapes.ShapesSpec = dataclasses.field(default_factory=shapes.ShapesSpec)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Coloured shapes on a 3x3 grid with compositional captions (binding + spatial relations)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ShapesConfig(
            name="default",
            description="64x64 images; 20000 train, 1000 validation, 1000 test; 5 captions each.",
            spec=shapes.ShapesSpec(image_size=64, num_train=20000, num_val=1000, num_test=1000),
        ),
        ShapesConfig(
            name="tiny",
            description="64x64 images; 256 train, 64 validation, 64 test; 5 captions each.",
            spec=shapes.ShapesSpec(image_size=64, num_train=256, num_val=64, num_test=64),
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    # tfds 4.9.10's default `code_path` touches `importlib_resources` (a backport that is only a
    # dependency on Python < 3.9) whenever the package is imported from a source tree rather than
    # a zipapp, and then fails with ModuleNotFoundError. Point it at this file directly instead.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    @property
    def spec(self) -> shapes.ShapesSpec:
        return self.builder_config.spec

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.spec.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=(shapes.__doc__ or "").strip().split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "image_id": tfds.features.Text(),
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "num_objects": tfds.features.Scalar(dtype=np.int32),
            }),
            supervised_keys=None,
            # Keep the generator's (already shuffled, deterministic) order, so that record i of a
            # split is "<split>_<i:06d>".
            disable_shuffling=True,
            homepage="https://arxiv.org/abs/2103.16553",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated data: nothing to download
        return {
            "train": self._generate_examples("train"),
            "validation": self._generate_examples("validation"),
            "test": self._generate_examples("test"),
        }

    def _generate_examples(self, split: str):
        for ex in shapes.generate_split(self.spec, split):
            yield ex["image_id"], {
                "image_id": ex["image_id"],
                "image": _png(ex["image"]),
                "captions": ex["captions"],
                "num_objects": np.int32(ex["num_objects"]),
            }
