"""TFDS builder ``cc3m``: Conceptual Captions 3M from the published TSV and an img2dataset image store.

Layout of ``--manual-dir``:

* the published TSVs, one ``caption<TAB>url`` a line: ``Train_GCC-training.tsv`` (split ``train``) and
  ``Validation_GCC-1.1.0-Validation.tsv`` (split ``validation``); ``train.tsv`` / ``validation.tsv``
  are accepted too, and a ``caption<TAB>url`` header line (which img2dataset needs) is skipped;
* anywhere below it, the output folder(s) of img2dataset in ``files`` format (``00000/000000012.jpg``
  next to ``000000012.json``) or ``webdataset`` format (``00000.tar`` holding ``000000012.jpg`` and
  ``000000012.json``). The sidecar JSON's ``url`` joins an image to its TSV row.

Rows whose URL has no downloaded image (img2dataset typically fetches 50-80% of CC3M) are counted as
``image_missing`` and skipped; ``image_id`` is ``<split>_<row number in the TSV, from 0>``. Everything
else is handled as `builders.base` describes.
"""
from __future__ import annotations

import json
import os
import tarfile

from etils import epath

from fastslow_jax.data.builders.base import ManualBuilder, Problem, Row, decode_text

_TSV = {"train": ("Train_GCC-training.tsv", "train.tsv"),
        "validation": ("Validation_GCC-1.1.0-Validation.tsv", "validation.tsv")}
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")


def _tar_reader(tar_path: str, offset: int, size: int):
    def read() -> bytes:
        with open(tar_path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    return read


def index_image_store(root: str) -> dict[str, object]:
    """url -> image source (a file path, or a loader of a tar member's bytes) for every img2dataset sample
    below ``root`` whose sidecar JSON names a URL. Unreadable shards and sidecars are ignored here (their
    rows are then counted as missing images)."""
    index: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        names = set(filenames)
        for fn in sorted(filenames):
            path = os.path.join(dirpath, fn)
            stem, ext = os.path.splitext(fn)
            if ext == ".json":
                image = next((stem + e for e in _IMAGE_EXT if stem + e in names), None)
                url = _sidecar_url(path)
                if image and url and url not in index:
                    index[url] = os.path.join(dirpath, image)
            elif ext == ".tar":
                for url, src in _index_tar(path):
                    index.setdefault(url, src)
    return index


def _sidecar_url(path_or_bytes) -> str | None:
    try:
        if isinstance(path_or_bytes, bytes):
            raw = path_or_bytes
        else:
            with open(path_or_bytes, "rb") as f:
                raw = f.read()
        meta = json.loads(raw)
    except (OSError, ValueError):
        return None
    url = meta.get("url") if isinstance(meta, dict) else None
    return url if isinstance(url, str) and url else None


def _index_tar(path: str):
    images: dict[str, tarfile.TarInfo] = {}
    urls: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                stem, ext = os.path.splitext(m.name)
                if ext.lower() in _IMAGE_EXT:
                    images[stem] = m
                elif ext == ".json":
                    url = _sidecar_url(tar.extractfile(m).read())
                    if url:
                        urls[stem] = url
    except (OSError, tarfile.TarError):
        pass  # a truncated shard keeps the samples read before the damage
    for stem, url in urls.items():
        if stem in images:
            m = images[stem]
            yield url, _tar_reader(path, m.offset_data, m.size)


class Cc3m(ManualBuilder):
    """Conceptual Captions (3.3M alt-text captions) joined with a local img2dataset download."""

    SPLITS = ("train", "validation")
    HOMEPAGE = "https://ai.google.com/research/ConceptualCaptions/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("put Train_GCC-training.tsv and/or Validation_GCC-1.1.0-Validation.tsv in the "
                                    "manual folder, with the img2dataset output (files or webdataset) below it")
    _index: tuple[str, dict] | None = None

    def _tsv(self, manual_dir: epath.Path, split: str) -> epath.Path | None:
        return next((manual_dir / n for n in _TSV[split] if (manual_dir / n).is_file()), None)

    def _splits(self, manual_dir: epath.Path) -> list[str]:
        return [s for s in self.SPLITS if self._tsv(manual_dir, s) is not None]

    def _store(self, manual_dir: epath.Path) -> dict:
        if self._index is None or self._index[0] != os.fspath(manual_dir):
            self._index = (os.fspath(manual_dir), index_image_store(os.fspath(manual_dir)))
        return self._index[1]

    def _rows(self, manual_dir: epath.Path, split: str):
        tsv = self._tsv(manual_dir, split)
        store = self._store(manual_dir)
        with open(tsv, "rb") as f:
            n = -1
            for line_no, raw in enumerate(f, start=1):
                text = decode_text(raw).rstrip("\r\n")
                if line_no == 1 and text.strip().lower() == "caption\turl":
                    continue
                if not text.strip():
                    continue
                n += 1
                row_id, where = f"{split}_{n:07d}", f"{tsv.name}:{line_no}"
                fields = text.split("\t")
                if len(fields) != 2 or not fields[1].strip():
                    yield Problem("bad_row", row_id, f"{len(fields)} tab-separated fields, expected caption and url",
                                  where)
                    continue
                caption, url = fields[0], fields[1].strip()
                image = store.get(url)
                if image is None:
                    yield Problem("image_missing", row_id, f"no downloaded image for {url[:80]}", where)
                    continue
                yield Row(row_id, image, [caption], where)
