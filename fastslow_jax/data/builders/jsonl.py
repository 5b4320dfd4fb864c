"""TFDS builder ``jsonl``: users' own image-caption data, one JSON object a line.

Layout of ``--manual-dir``: ``train.jsonl``, ``validation.jsonl`` and/or ``test.jsonl`` (the splits are
the files present). Each line is ``{"image": PATH, "caption": STR or [STR, ...]}`` with an optional
``"id"`` (default: the image path as written, so two lines naming one image count as a duplicate id).
``PATH`` is relative to the JSONL file's folder; a path that leaves that folder (``..``, an absolute
path or a symlink pointing elsewhere) is counted and skipped, unless the config ``allow_absolute`` is
used (``--config.data.name=jsonl/allow_absolute`` or ``fastslow data build jsonl/allow_absolute``).
Blank lines are ignored; a line that is not a JSON object with those fields is counted as ``bad_row``.
Every other defect is handled as `builders.base` describes. Build a separate ``--data-dir`` per dataset:
the prepared data is stored under ``DATA_DIR/jsonl/<config>/1.0.0``.
"""
from __future__ import annotations

import dataclasses
import json

from etils import epath

from fastslow_jax.data.builders.base import ManualBuilder, ManualConfig, Problem, Row, RowProblem, decode_text, inside


@dataclasses.dataclass
class JsonlConfig(ManualConfig):
    allow_absolute: bool = False


class Jsonl(ManualBuilder):
    """Users' own images and captions listed in JSONL files (paths relative to each file)."""

    BUILDER_CONFIGS = [
        JsonlConfig(name="default", description="image paths must stay inside the JSONL file's folder"),
        JsonlConfig(name="allow_absolute", allow_absolute=True,
                    description="absolute paths and paths outside the JSONL file's folder are allowed"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("put train.jsonl / validation.jsonl / test.jsonl in the manual folder, "
                                    'one {"image": path, "caption": str or [str]} per line')

    def _splits(self, manual_dir: epath.Path) -> list[str]:
        return [s for s in self.SPLITS if (manual_dir / f"{s}.jsonl").is_file()]

    def _rows(self, manual_dir: epath.Path, split: str):
        path = manual_dir / f"{split}.jsonl"
        root = str(path.parent)
        with open(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                where = f"{path.name}:{n}"
                text = decode_text(raw).strip()
                if not text:
                    continue
                try:
                    obj = json.loads(text)
                except ValueError as err:
                    yield Problem("bad_row", f"line {n}", f"not JSON: {err}", where)
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or "caption" not in obj:
                    yield Problem("bad_row", f"line {n}", 'not an object with "image" (str) and "caption"', where)
                    continue
                caps = obj["caption"]
                if isinstance(caps, str):
                    caps = [caps]
                if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                    yield Problem("bad_row", f"line {n}", '"caption" is neither a string nor a list of strings', where)
                    continue
                row_id = str(obj.get("id", obj["image"]))
                try:
                    image = inside(root, obj["image"], allow_outside=self.builder_config.allow_absolute)
                except RowProblem as p:
                    yield Problem(p.kind, row_id, p.detail, where)
                    continue
                yield Row(row_id, image, caps, where)
