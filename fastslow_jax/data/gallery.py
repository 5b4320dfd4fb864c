"""The one gallery reader: images read lazily by index, for evaluation, indexing and search.

A ``Gallery`` has ``num_images``, ``images(indices)`` (stacked uint8 images) and
``image_batches(batch_size)`` (fixed-size batches, read ahead on threads, the last one padded by
``parallel.pad_rows``), and ``subset(keep)``. ``pipeline.EvalSplit`` is one over a dataset split;
``ImageFiles`` is one over image files (``fastslow index --images DIR``).
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import grain
import numpy as np
from PIL import Image

from fastslow_jax import parallel

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class Gallery:
    """``num_images`` images, image ``i`` read by ``read(i)`` (uint8 [H, W, 3], or [T, H, W, 3] for clips)."""

    def __init__(self, read: Callable[[int], np.ndarray], num_images: int):
        self._read = read
        self.num_images = int(num_images)

    def read(self, index: int) -> np.ndarray:
        return self._read(int(index))

    def images(self, indices) -> np.ndarray:
        """The images at ``indices`` (e.g. to recompute candidates' visual features), stacked."""
        return np.stack([self.read(i) for i in indices])

    def image_batches(self, batch_size: int, num_threads: int = 4) -> Iterator[tuple[np.ndarray, int]]:
        """Yield (images [batch_size, ...], num_valid) in order; the last batch is padded by repeating
        its first image (``parallel.pad_rows``), so one compiled shape serves every batch."""
        ds = grain.MapDataset.range(self.num_images).map(self.read).batch(batch_size)
        for batch in ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4)):
            yield parallel.pad_rows(batch, batch_size), len(batch)

    def subset(self, keep: Sequence[int]) -> "Gallery":
        """The gallery of images ``keep`` (in that order)."""
        keep = [int(i) for i in keep]
        return Gallery(lambda i: self.read(keep[i]), len(keep))


def load_image(path: str, shape: Sequence[int]) -> np.ndarray:
    """An image file as uint8 [H, W, 3]: centre-cropped to the aspect ratio of ``shape`` and resized."""
    h, w = int(shape[0]), int(shape[1])
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            iw, ih = im.size
            scale = min(iw / w, ih / h)
            cw, ch = w * scale, h * scale
            box = ((iw - cw) / 2, (ih - ch) / 2, (iw + cw) / 2, (ih + ch) / 2)
            return np.asarray(im.resize((w, h), Image.BICUBIC, box=box), dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None


class ImageFiles(Gallery):
    """A gallery of image files (``load_image`` to ``shape``)."""

    def __init__(self, paths: Sequence[str], shape: Sequence[int]):
        self.paths = list(paths)
        self.shape = tuple(shape)
        super().__init__(lambda i: load_image(self.paths[i], self.shape), len(self.paths))

    @classmethod
    def from_folder(cls, folder: str, shape: Sequence[int]) -> "ImageFiles":
        """Every image file under ``folder`` (by extension, ``IMAGE_EXTENSIONS``), in sorted path order."""
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"--images {folder} is not a directory")
        paths = []
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            paths += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        return cls([os.path.abspath(p) for p in paths], shape)
