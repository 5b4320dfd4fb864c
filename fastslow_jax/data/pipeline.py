"""The one data path: TFDS array_record files -> Grain -> host batches -> global arrays.

Every dataset is a TFDS builder written with ``file_format="array_record"`` and read with
``builder.as_data_source(split)`` (random access, no TensorFlow). Examples carry at least
``image`` (uint8 [H, W, 3], or [T, H, W, 3] for clips), ``captions`` (list of str) and ``image_id``.

Training: shuffle (reshuffled every epoch) -> repeat -> pick one caption per image and tokenise
(deterministic per global position) -> blocks of G/P consecutive positions -> this process's
blocks. Process ``p`` of ``P`` takes block ``b*P + p`` as its rows of global batch ``b`` (which
``parallel.host_to_global`` places after processes 0..p-1's rows), so global batch ``b`` is exactly
the global positions ``b*G .. b*G+G-1``, in that order, whatever the number of processes. The iterator state is a small dict that the
checkpoint stores, so a resumed run sees the same data order.
"""
from __future__ import annotations

import copy
import io
import logging
import os
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np

from fastslow_jax import preprocess
from fastslow_jax.data.gallery import Gallery
from fastslow_jax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = os.environ.get("FASTSLOW_DATA_DIR", os.path.expanduser("~/.cache/fastslow_jax/datasets"))


def _builder_registry():
    from fastslow_jax.data.builders.cc3m import Cc3m
    from fastslow_jax.data.builders.emoji import Emoji
    from fastslow_jax.data.builders.jsonl import Jsonl
    from fastslow_jax.data.builders.karpathy import CocoKarpathy, Flickr30k
    from fastslow_jax.data.builders.openclipart import Openclipart
    from fastslow_jax.data.builders.shapes import Shapes
    from fastslow_jax.data.builders.vatex import Vatex
    return {"shapes": Shapes, "jsonl": Jsonl, "flickr30k": Flickr30k, "coco_karpathy": CocoKarpathy, "cc3m": Cc3m,
            "vatex": Vatex, "emoji": Emoji, "openclipart": Openclipart}


def get_builder(data_cfg: ml_collections.ConfigDict, *, prepare: bool = True):
    """The TFDS builder for ``data_cfg.name`` (``name`` or ``name/config``), built on first use."""
    import tensorflow_datasets as tfds

    name, _, variant = data_cfg.name.partition("/")
    registry = _builder_registry()
    if name not in registry:
        raise ValueError(f"unknown dataset {data_cfg.name!r} in config.data.name; known: {sorted(registry)}")
    data_dir = os.path.expanduser(data_cfg.get("data_dir") or DEFAULT_DATA_DIR)
    builder = registry[name](config=variant or None, data_dir=data_dir)
    if prepare and not _is_prepared(builder):
        log.info("building dataset %s into %s (first use)", data_cfg.name, data_dir)
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(
                                         manual_dir=data_cfg.get("manual_dir") or None))
    return builder


def _is_prepared(builder) -> bool:
    try:
        return bool(builder.info.splits) and os.path.isdir(builder.data_dir)
    except Exception:  # noqa: BLE001 - any failure to read the metadata means "not built"
        return False


def image_options(data_cfg: ml_collections.ConfigDict) -> tuple[int, float, str]:
    """(``data.image_size``, ``data.image_crop``, ``data.image_resample``): how stored images become model
    inputs (see ``_decode_image``). Older configs without the last two get the historical 7/8 bilinear crop."""
    crop = float(data_cfg.get("image_crop", 0.875) or 0.875)
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"data.image_crop must be in (0, 1] (the centre fraction kept), got {crop}")
    return int(data_cfg.get("image_size", 0) or 0), crop, str(data_cfg.get("image_resample", "bilinear"))


def _decode_image(image: Any, size: int = 0, crop: float = 0.875, resample: str = "bilinear") -> np.ndarray:
    """Stored image (or clip) -> uint8 [H, W, 3] (or [T, H, W, 3]); with ``size`` > 0 (``data.image_size``)
    each image / frame is resized (shorter side to round(size / crop)) with the PIL filter ``resample`` and
    centre-cropped to size x size (``crop`` = 7/8 is `preprocess.preprocess_image`'s convention; 1 keeps
    the whole image, e.g. small icons upsampled to a backbone's pretrained resolution), so that datasets of
    mixed image sizes batch."""
    if isinstance(image, (bytes, bytearray)):
        from PIL import Image
        with Image.open(io.BytesIO(image)) as im:
            image = np.asarray(im.convert("RGB"))
    image = np.asarray(image, dtype=np.uint8)
    if size and image.shape[-3:-1] != (size, size):
        spec = preprocess.Preprocessing(round(size / crop), size, (0.0,) * 3, (1.0,) * 3, resample)
        frames = image.reshape((-1,) + image.shape[-3:])
        image = np.stack([preprocess.preprocess_image(f, spec) for f in frames]).reshape(
            image.shape[:-3] + (size, size, 3))
    return image


def _captions(example: dict) -> list[str]:
    caps = example["captions"]
    return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in np.asarray(caps, dtype=object).ravel()]


class _TrainTransform(grain.transforms.RandomMap):
    """Decode the image, pick one of its captions at random, tokenise it; ``image_index`` is the record's
    index in the split (so a loss can tell two rows of one image apart from two images).

    ``extras(record_index, caption_index)``, when given, returns more arrays for the example (e.g. a
    distillation teacher's precomputed candidates, or a locked image tower's cached features). When
    ``extras.replaces_image`` is true the image is not decoded at all (its features stand in for it)."""

    def __init__(self, tokenizer: Tokenizer, extras=None, image_options: tuple = (0,), first_caption_prob: float = 0.0):
        self.first_caption_prob = float(first_caption_prob)
        self.tokenizer = tokenizer
        self.extras = extras
        self.image_options = tuple(image_options)
        self.decode = not getattr(extras, "replaces_image", False)

    def random_map(self, item: tuple[int, dict], rng: np.random.Generator) -> dict[str, np.ndarray]:
        index, example = item
        caps = _captions(example)
        if not caps:
            raise ValueError(f"example {example.get('image_id')!r} has no caption")
        # data.first_caption_prob: how often the first caption (e.g. a label, with keywords after it) is the one
        if self.first_caption_prob > 0 and len(caps) > 1 and rng.random() < self.first_caption_prob:
            c = 0
        else:
            c = int(rng.integers(len(caps)))
        out = {"tokens": self.tokenizer([caps[c]])[0], "image_index": np.int32(index)}
        if self.decode:
            out["image"] = _decode_image(example["image"], *self.image_options)
        if self.extras is not None:
            out.update(self.extras(index, c))
        return out


def make_tokenizer(data_cfg: ml_collections.ConfigDict) -> Tokenizer:
    return Tokenizer(data_cfg.tokenizer, max_len=data_cfg.max_len)


def split_source(data_cfg: ml_collections.ConfigDict, split: str, decode_images: bool = True):
    """The random-access source of ``split`` (built on first use), or a clear error naming the splits.

    ``decode_images=False``: image and video features come back as their encoded bytes (TFDS
    ``SkipDecoding``), for readers that need only the captions and ids (decoding is most of a record's
    read time: about 9 ms against 2.6 ms for an emoji record on a loaded 2-core CPU)."""
    builder = get_builder(data_cfg)
    if split not in builder.info.splits:
        raise ValueError(f"dataset {data_cfg.name!r} has no split {split!r}; available: {sorted(builder.info.splits)}")
    if decode_images:
        return builder.as_data_source(split)
    import tensorflow_datasets as tfds

    skip = {name: tfds.decode.SkipDecoding() for name, feature in builder.info.features.items()
            if isinstance(feature, (tfds.features.Image, tfds.features.Video))}
    return builder.as_data_source(split, decoders=skip or None)


def train_dataset(config: ml_collections.ConfigDict, tokenizer: Tokenizer, *, split: str | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  extras=None) -> grain.MapDataset:
    """An infinite, deterministic MapDataset of this process's training batches.

    ``extras(record_index, caption_index) -> dict`` adds per-example arrays (see _TrainTransform)."""
    data_cfg = config.data
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if config.train.batch_size % pc:
        raise ValueError(f"train.batch_size {config.train.batch_size} is not divisible by {pc} processes")
    # a locked image tower's cached features stand in for the image: it is not even decoded
    source = split_source(data_cfg, split or data_cfg.train_split,
                          decode_images=not getattr(extras, "replaces_image", False))
    n = len(source)
    # Grain's per-epoch reshuffle hands the parent epoch * n + k: the record index is that modulo n (without it,
    # per-record extras such as top-M candidates or cached features were read past the split after epoch 1)
    ds = grain.MapDataset.source(source).map_with_index(lambda i, ex: (i % n, ex))
    ds = ds.shuffle(seed=config.seed).repeat(None)
    ds = ds.random_map(_TrainTransform(tokenizer, extras, image_options(data_cfg),
                                           data_cfg.get("first_caption_prob", 0.0)), seed=config.seed + 1)
    return ds.batch(config.train.batch_size // pc, drop_remainder=True)[pi::pc]


def caption_token_ids(data_cfg: ml_collections.ConfigDict, split: str, tokenizer: Tokenizer,
                      progress: bool = True) -> tuple[int, ...]:
    """The sorted distinct token ids (padding excluded) of every caption of ``split``, e.g. the output
    vocabulary of a Slow decoder (``model.slow.output_vocab="train"``). Reads the whole split once."""
    from tqdm import tqdm

    source = split_source(data_cfg, split, decode_images=False)
    seen = np.zeros(tokenizer.vocab_size, dtype=bool)
    chunk: list[str] = []
    for i in tqdm(range(len(source)), desc=f"caption vocabulary of {data_cfg.name}:{split}", unit="ex",
                  disable=not progress or jax.process_index() != 0, mininterval=2.0):
        chunk.extend(_captions(source[i]))
        if len(chunk) >= 4096 or i == len(source) - 1:
            seen[tokenizer(chunk)] = True
            chunk = []
    seen[0] = False  # padding
    return tuple(int(i) for i in np.flatnonzero(seen))


def train_iterator(ds: grain.MapDataset, num_threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
    """A checkpointable iterator (``get_state``/``set_state``) with background prefetch."""
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=8)))


class EvalSplit(Gallery):
    """A split for evaluation: a ``Gallery`` of its ordered images (read lazily, in batches) and their
    captions (the queries).

    ``limit`` keeps the first N images (0/None = all); ``queries_per_image`` keeps the first N
    captions of each image as queries (0/None = all).
    """

    def __init__(self, data_cfg: ml_collections.ConfigDict, split: str, limit: int | None = None,
                 queries_per_image: int | None = None):
        self.name, self.split = data_cfg.name, split
        self.image_options = image_options(data_cfg)  # see _decode_image
        self.source = split_source(data_cfg, split)
        super().__init__(lambda i: _decode_image(self.source[i]["image"], *self.image_options),
                         len(self.source) if not limit else min(limit, len(self.source)))
        self.captions: list[str] = []
        cap2img: list[int] = []
        self.image_ids: list[str] = []
        meta = split_source(data_cfg, split, decode_images=False)  # captions and ids: no image decoded
        for i in range(self.num_images):
            ex = meta[i]
            caps = _captions(ex)[: queries_per_image or None]
            self.captions.extend(caps)
            cap2img.extend([i] * len(caps))
            iid = ex.get("image_id", i)
            self.image_ids.append(iid.decode() if isinstance(iid, bytes) else str(iid))
        self.caption_to_image = np.asarray(cap2img, dtype=np.int64)

    def with_image_options(self, data_cfg: ml_collections.ConfigDict) -> "EvalSplit":
        """The same split (images, order, captions, queries) with its images prepared as ``data_cfg`` prepares
        them (``image_options``: size, crop, resampling): runs trained at different resolutions (e.g. a Fast
        run at 224 px and a Slow run at 128 px) are each scored on the inputs they were trained on. ``self``
        when the options are the same."""
        options = image_options(data_cfg)
        if options == self.image_options:
            return self
        view = copy.copy(self)
        view.image_options = options
        Gallery.__init__(view, lambda i: _decode_image(view.source[i]["image"], *options), self.num_images)
        return view
