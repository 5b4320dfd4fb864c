"""TFDS builders ``flickr30k`` and ``coco_karpathy``: the Karpathy splits as published.

Layout of ``--manual-dir`` (the files as distributed, unchanged):

* ``flickr30k``: ``dataset_flickr30k.json`` (from Karpathy's ``caption_datasets.zip``; also found in a
  ``caption_datasets/`` subfolder) and the image folder ``flickr30k-images/<filename>`` (also accepted:
  ``flickr30k_images/``, ``images/`` or the manual folder itself);
* ``coco_karpathy``: ``dataset_coco.json`` and the COCO 2014 folders ``<filepath>/<filename>``
  (``train2014/``, ``val2014/``), directly in the manual folder or under ``images/``.

The JSON is ``{"images": [{"filename", "filepath" (COCO), "split", "sentences": [{"raw", ...}],
"imgid", "cocoid" (COCO)}, ...]}``. Splits: ``train`` (Karpathy ``train`` plus ``restval``, as in
the paper's COCO setting), ``validation`` (``val``: 1000 Flickr / 5000 COCO images) and ``test`` (1000
/ 5000). ``image_id`` is the COCO id, or the Flickr file name's stem. Entries whose image is missing or
broken, or whose captions are unusable, are counted and skipped (`builders.base`).
"""
from __future__ import annotations

import json
import os

from etils import epath

from fastslow_jax.data.builders.base import ManualBuilder, Problem, Row, RowProblem, decode_text, inside

_SPLIT = {"train": "train", "restval": "train", "val": "validation", "test": "test"}


class _Karpathy(ManualBuilder):
    JSON_NAME = ""
    IMAGE_ROOTS: tuple[str, ...] = ()
    HOMEPAGE = "https://cs.stanford.edu/people/karpathy/deepimagesent/"
    _parsed: tuple[str, list] | None = None

    def _json_path(self, manual_dir: epath.Path) -> epath.Path:
        for cand in (manual_dir / self.JSON_NAME, manual_dir / "caption_datasets" / self.JSON_NAME):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"{self.JSON_NAME} not found in {manual_dir} (nor in its caption_datasets/)")

    def _images(self, manual_dir: epath.Path) -> list:
        path = self._json_path(manual_dir)
        if self._parsed is None or self._parsed[0] != os.fspath(path):
            text = decode_text(path.read_bytes())  # bytes that are not UTF-8 reach clean_captions as such
            try:
                data = json.loads(text)
            except ValueError as err:
                raise ValueError(f"{path} is not valid JSON: {err}") from None
            if not isinstance(data, dict) or not isinstance(data.get("images"), list):
                raise ValueError(f'{path} has no "images" list: is it the Karpathy split file?')
            self._parsed = (os.fspath(path), data["images"])
        return self._parsed[1]

    def _image_id(self, entry: dict) -> str:
        raise NotImplementedError

    def _image_path(self, manual_dir: epath.Path, entry: dict) -> str:
        rel = os.path.join(str(entry.get("filepath", "")), str(entry["filename"]))
        first = None
        for root in self.IMAGE_ROOTS:
            path = inside(manual_dir / root if root != "." else manual_dir, rel)
            first = first or path
            if os.path.isfile(path):
                return path
        return first  # missing: counted as image_missing when read

    def _rows(self, manual_dir: epath.Path, split: str):
        name = self._json_path(manual_dir).name
        for n, entry in enumerate(self._images(manual_dir)):
            where = f"{name} images[{n}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
                yield Problem("bad_row", f"images[{n}]", 'entry without a "filename"', where)
                continue
            if _SPLIT.get(entry.get("split")) != split:
                if entry.get("split") not in _SPLIT and split == "train":
                    yield Problem("bad_row", entry["filename"], f"unknown split {entry.get('split')!r}", where)
                continue
            sents = entry.get("sentences")
            if not isinstance(sents, list):
                yield Problem("bad_row", entry["filename"], 'no "sentences" list', where)
                continue
            caps = [s.get("raw", "") if isinstance(s, dict) else s for s in sents]
            row_id = self._image_id(entry)
            try:
                image = self._image_path(manual_dir, entry)
            except RowProblem as p:
                yield Problem(p.kind, row_id, p.detail, where)
                continue
            yield Row(row_id, image, caps, where)


class Flickr30k(_Karpathy):
    """Flickr30K images with 5 captions each, in the Karpathy train / val / test split (29000/1014/1000)."""

    JSON_NAME = "dataset_flickr30k.json"
    IMAGE_ROOTS = ("flickr30k-images", "flickr30k_images", "images", ".")
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("put dataset_flickr30k.json (Karpathy's caption_datasets.zip) and the "
                                    "flickr30k-images/ folder in the manual folder")

    def _image_id(self, entry: dict) -> str:
        return os.path.splitext(os.path.basename(entry["filename"]))[0]


class CocoKarpathy(_Karpathy):
    """COCO 2014 images with their captions, in the Karpathy split (113287 train+restval / 5000 / 5000)."""

    JSON_NAME = "dataset_coco.json"
    IMAGE_ROOTS = (".", "images")
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("put dataset_coco.json (Karpathy's caption_datasets.zip) and the COCO 2014 "
                                    "train2014/ and val2014/ folders in the manual folder")

    def _image_id(self, entry: dict) -> str:
        if "cocoid" in entry:
            return str(entry["cocoid"])
        return os.path.splitext(os.path.basename(entry["filename"]))[0]
