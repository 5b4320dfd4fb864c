"""The shared base of the builders that read users' files (`jsonl`, `flickr30k`, `coco_karpathy`, `cc3m`).

A subclass only lists its rows: ``_rows(manual_dir, split)`` yields `Row` (an id, an image given as a
path, bytes or a loader, and its captions) or `Problem` (a row the source itself rejects, e.g. a JSON
line that does not parse or an image path outside the dataset's folder). The base turns every row into
one record or one counted reason for skipping it:

* images: missing, corrupt and truncated files are skipped; grayscale, CMYK, palette, 16-bit, alpha,
  EXIF-rotated and other modes are converted to 8-bit RGB; images larger than ``max_side`` on their
  longer side are shrunk; images with more than ``max_pixels`` pixels (decompression bombs) are skipped;
* captions: empty or whitespace-only captions are dropped, internal runs of whitespace collapsed,
  captions that were not valid UTF-8 re-decoded (cp1252, else latin-1), captions longer than
  ``max_caption_chars`` cut at a word boundary, repeated captions of one image dropped; a row left
  with no caption is skipped;
* ids: the second and later rows with an id already written are skipped.

Every repair and every skip is counted per split and kept with up to `MAX_EXAMPLES` examples; the
report is printed at the end of the build (`format_report`) and written next to the data as
``build_report.json`` (`read_report`). Rows are written in source order (no shuffling) and a JPEG
or PNG that needs no repair is stored byte for byte, so building twice gives identical records (the
array_record files themselves can differ between processes: TFDS serialises each record's feature
map in protobuf's per-process hash order).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from typing import Callable, Iterable, Iterator, Union

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

REPORT_FILE = "build_report.json"
MAX_EXAMPLES = 5

# kind -> (action, meaning). Every problem a builder can meet is listed here, so the report explains it.
KINDS: dict[str, tuple[str, str]] = {
    "image_missing": ("skipped", "the image file does not exist"),
    "image_corrupt": ("skipped", "the image file cannot be decoded"),
    "image_truncated": ("skipped", "the image file ends early"),
    "image_too_large": ("skipped", "the image has more pixels than max_pixels"),
    "image_path_outside": ("skipped", "the image path leaves the dataset's folder"),
    "bad_row": ("skipped", "the source row cannot be parsed or lacks a field"),
    "no_caption": ("skipped", "no usable caption is left"),
    "duplicate_id": ("skipped", "an earlier row of the split has the same id"),
    "row_error": ("skipped", "an unexpected error while preparing the row"),
    "image_render_error": ("skipped", "the vector image (SVG) cannot be rendered"),
    "image_empty": ("skipped", "the image renders blank (nothing but white or transparency)"),
    "duplicate_image": ("skipped", "the same drawing was already read under another path (a copy or symlink)"),
    "image_grayscale": ("repaired", "grayscale image converted to RGB"),
    "image_cmyk": ("repaired", "CMYK image converted to RGB"),
    "image_palette": ("repaired", "palette image converted to RGB"),
    "image_16bit": ("repaired", "16-bit or float image scaled to 8 bits"),
    "image_alpha": ("repaired", "transparent image composited on white"),
    "image_other_mode": ("repaired", "image in another colour mode converted to RGB"),
    "image_exif_rotated": ("repaired", "EXIF orientation applied"),
    "image_resized": ("repaired", "image longer than max_side shrunk"),
    "video_short": ("repaired", "clip has fewer frames than num_frames; frames repeated"),
    "video_frame_size": ("repaired", "pre-extracted frames of unequal size resized to the first frame's"),
    "caption_empty": ("repaired", "empty or whitespace-only caption dropped"),
    "caption_whitespace": ("repaired", "newlines, tabs or repeated spaces collapsed"),
    "caption_not_utf8": ("repaired", "caption bytes were not UTF-8; re-decoded as cp1252/latin-1"),
    "caption_too_long": ("repaired", "caption longer than max_caption_chars cut at a word boundary"),
    "caption_duplicate": ("repaired", "repeated caption of the same image dropped"),
    "caption_title_cleaned": ("repaired", "noisy title cleaned (file-name-like, camelCase, ids, 'by author', case)"),
    "caption_from_filename": ("repaired", "collection or junk title replaced by the words of the file name"),
    "caption_keyword_dropped": ("repaired", "generic or junk keyword dropped (e.g. 'hash', 'icons', an id)"),
}
SKIP_KINDS = frozenset(k for k, (a, _) in KINDS.items() if a == "skipped")


class RowProblem(Exception):
    """Raised while preparing a row: ``kind`` (a `KINDS` key) and a one-line ``detail``."""

    def __init__(self, kind: str, detail: str):
        assert kind in KINDS, kind
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


ImageSource = Union[str, os.PathLike, bytes, Callable[[], bytes]]


@dataclasses.dataclass
class Row:
    """One source row: ``image`` is a file path, encoded bytes, or a zero-argument loader returning bytes
    (raising `RowProblem` or OSError when it cannot); ``captions`` are str (or bytes); ``extra`` holds
    any further features the builder declares."""

    id: str
    image: ImageSource
    captions: list
    where: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Problem:
    """A row rejected by the source itself (``kind`` is a skip kind of `KINDS`)."""

    kind: str
    id: str
    detail: str
    where: str = ""


# ---------------------------------------------------------------------------------------------- report


class BuildReport:
    """Counts of rows read / written / skipped and of each problem kind, per split, with examples."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.splits: dict[str, dict] = {}

    def _split(self, split: str) -> dict:
        return self.splits.setdefault(split, {"rows": 0, "written": 0, "skipped": 0, "problems": {}})

    def add(self, split: str, kind: str, row_id: str, detail: str, where: str = "") -> None:
        action, _ = KINDS[kind]
        p = self._split(split)["problems"].setdefault(kind, {"action": action, "count": 0, "examples": []})
        p["count"] += 1
        if len(p["examples"]) < MAX_EXAMPLES:
            p["examples"].append({"id": row_id, "where": where, "detail": detail})

    def row(self, split: str, written: bool) -> None:
        s = self._split(split)
        s["rows"] += 1
        s["written" if written else "skipped"] += 1

    def count(self, kind: str, split: str | None = None) -> int:
        splits = [split] if split else list(self.splits)
        return sum(self.splits[s]["problems"].get(kind, {}).get("count", 0) for s in splits if s in self.splits)

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "splits": self.splits}

    @classmethod
    def from_json(cls, data: dict) -> "BuildReport":
        r = cls(data["dataset"])
        r.splits = data["splits"]
        return r


def format_report(report: BuildReport) -> str:
    """The end-of-build summary: per split rows / written / skipped, then each problem with examples."""
    lines = [f"build report for {report.dataset}:"]
    for split, s in report.splits.items():
        left_out = " (no row written: the split is left out)" if s.get("left_out") else ""
        lines.append(f"  {split}: {s['rows']} rows read, {s['written']} written, {s['skipped']} skipped{left_out}")
        for kind, p in sorted(s["problems"].items()):
            lines.append(f"    {p['action']:8s} {p['count']:6d} {kind}: {KINDS[kind][1]}")
            for ex in p["examples"]:
                where = f" ({ex['where']})" if ex["where"] else ""
                lines.append(f"             e.g. {ex['id']}{where}: {ex['detail']}")
    if not report.splits:
        lines.append("  (no split was generated)")
    return "\n".join(lines)


def read_report(builder: tfds.core.DatasetBuilder) -> BuildReport:
    """The report written by the build of ``builder`` (FileNotFoundError if it was not built by this base)."""
    path = epath.Path(builder.data_dir) / REPORT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {REPORT_FILE} in {builder.data_dir}: the dataset was not built by this version")
    return BuildReport.from_json(json.loads(path.read_text()))


# ---------------------------------------------------------------------------------------------- captions


def decode_text(raw: bytes) -> str:
    """Bytes -> str, keeping bytes that are not UTF-8 as lone surrogates (`clean_captions` repairs them)."""
    return raw.decode("utf-8", errors="surrogateescape")


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def clean_captions(captions: Iterable, max_chars: int) -> tuple[list[str], list[tuple[str, str]]]:
    """The usable captions of a row and the repairs made, as (kind, detail) pairs."""
    out: list[str] = []
    notes: list[tuple[str, str]] = []
    for cap in captions:
        if isinstance(cap, (bytes, bytearray)):
            cap = decode_text(bytes(cap))
        elif cap is None:
            cap = ""
        elif not isinstance(cap, str):
            cap = str(cap)
        if _has_surrogates(cap):
            raw = cap.encode("utf-8", errors="surrogateescape")
            try:
                cap = raw.decode("cp1252")
            except UnicodeDecodeError:
                cap = raw.decode("latin-1")
            notes.append(("caption_not_utf8", f"{raw[:60]!r} -> {cap[:60]!r}"))
        norm = " ".join(cap.split())
        if not norm:
            notes.append(("caption_empty", repr(cap[:60])))
            continue
        if norm != cap.strip():
            notes.append(("caption_whitespace", repr(cap[:60])))
        if len(norm) > max_chars:
            cut = norm[:max_chars]
            if " " in cut[max_chars // 2:]:
                cut = cut[: cut.rindex(" ")]
            notes.append(("caption_too_long", f"{len(norm)} -> {len(cut)} characters"))
            norm = cut
        if norm in out:
            notes.append(("caption_duplicate", repr(norm[:60])))
            continue
        out.append(norm)
    return out, notes


# ---------------------------------------------------------------------------------------------- images


def _read_source(image: ImageSource) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if callable(image):
        return image()
    path = os.fspath(image)
    if not os.path.isfile(path):
        raise RowProblem("image_missing", f"{path} does not exist")
    with open(path, "rb") as f:
        return f.read()


def _to_rgb(im: Image.Image, notes: list[tuple[str, str]], report_alpha: bool = True) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        notes.append(("image_16bit", f"mode {mode}"))
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        notes.append(("image_palette", "mode P"))
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    elif mode in ("L", "1"):
        notes.append(("image_grayscale", f"mode {mode}"))
        return im.convert("RGB")
    elif mode == "LA":
        notes.append(("image_grayscale", "mode LA"))
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode == "CMYK":
        notes.append(("image_cmyk", "mode CMYK"))
        return im.convert("RGB")
    if mode in ("RGBA", "RGBa", "PA"):
        im = im.convert("RGBA")
        alpha = np.asarray(im)[..., 3]
        if alpha.min() < 255 and report_alpha:
            notes.append(("image_alpha", f"{int((alpha < 255).sum())} transparent pixels"))
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    notes.append(("image_other_mode", f"mode {mode}"))
    return im.convert("RGB")


def prepare_image(data: bytes, *, max_side: int, max_pixels: int,
                  report_alpha: bool = True) -> tuple[bytes, list[tuple[str, str]]]:
    """Encoded image bytes -> (8-bit RGB JPEG or PNG bytes, repairs made); raises `RowProblem`.

    A JPEG or PNG that is already 8-bit RGB, upright and no larger than ``max_side`` is returned as is."""
    notes: list[tuple[str, str]] = []
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
    except Image.DecompressionBombError as err:
        raise RowProblem("image_too_large", str(err)) from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for undecodable headers
        if not data:
            raise RowProblem("image_corrupt", "empty file") from None
        if isinstance(err, Image.UnidentifiedImageError):
            raise RowProblem("image_corrupt", f"not a known image format ({len(data)} bytes starting "
                                              f"{data[:8]!r})") from None
        kind = "image_truncated" if _looks_truncated(err) else "image_corrupt"
        raise RowProblem(kind, _describe(err)) from None
    if w * h > max_pixels:
        raise RowProblem("image_too_large", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
    fmt = im.format
    original = im
    if fmt == "JPEG" and max(w, h) > max_side:
        im.draft("RGB", (max_side, max_side))  # decode at a reduced scale: much cheaper for huge JPEGs
    try:
        im.load()
    except Exception as err:  # noqa: BLE001
        kind = "image_truncated" if _looks_truncated(err) else "image_corrupt"
        raise RowProblem(kind, _describe(err)) from None
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth losing the image for
        orientation = 1
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append(("image_exif_rotated", f"orientation {orientation}"))
    im = _to_rgb(im, notes, report_alpha)
    upright = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if im.size != upright:
        notes.append(("image_resized", f"{upright[0]}x{upright[1]} -> {im.size[0]}x{im.size[1]}"))
    if not notes and fmt in ("JPEG", "PNG") and im.mode == "RGB" and im is original:
        return data, notes
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=95)
    else:
        im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), notes


def _describe(err: Exception) -> str:
    """A reproducible one-line message (object addresses removed, so rebuilding gives the same report)."""
    return re.sub(r" at 0x[0-9a-f]+", "", f"{type(err).__name__}: {err}")


def _looks_truncated(err: Exception) -> bool:
    msg = str(err).lower()
    return isinstance(err, EOFError) or "truncat" in msg or "end of file" in msg or "premature" in msg


# ---------------------------------------------------------------------------------------------- builder


@dataclasses.dataclass
class ManualConfig(tfds.core.BuilderConfig):
    """Limits applied to every row (see the module docstring)."""

    max_side: int = 1024  # longer side; larger images are shrunk (training crops them later: data.image_size)
    max_pixels: int = 64_000_000
    max_caption_chars: int = 512
    expect_alpha: bool = False  # transparent images are normal here: composite on white without reporting


class ManualBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the builders over users' files: robust per-row handling and an end-of-build report.

    Subclasses define ``_rows(manual_dir, split)`` and ``SPLITS`` (or override ``_splits(manual_dir)``),
    and may add features in ``EXTRA_FEATURES``. Records: ``image_id`` (str), ``image`` (uint8 [H, W, 3]),
    ``captions`` (list of str), plus the extras."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [ManualConfig(name="default")]
    DEFAULT_CONFIG_NAME = "default"
    SPLITS: tuple[str, ...] = ("train", "validation", "test")
    EXTRA_FEATURES: dict = {}
    HOMEPAGE = ""
    report: BuildReport | None = None

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:  # see builders/shapes.py: avoids tfds' importlib_resources lookup
        import inspect
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(type(self).__doc__ or "").strip().split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "image_id": tfds.features.Text(),
                "image": self._image_feature(),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                **self.EXTRA_FEATURES,
            }),
            supervised_keys=None,
            disable_shuffling=True,  # source order: record i is the i-th row written
            homepage=self.HOMEPAGE or None,
        )

    def _image_feature(self):
        return tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")

    def _visual(self, row: Row) -> tuple[object, list[tuple[str, str]]]:
        """The stored ``image`` value of a row and the repairs made; raises `RowProblem` or OSError."""
        cfg = self.builder_config
        return prepare_image(_read_source(row.image), max_side=cfg.max_side, max_pixels=cfg.max_pixels,
                             report_alpha=not cfg.expect_alpha)

    def _download_and_prepare(self, dl_manager, download_config):  # noqa: D401 - tfds hook
        # TFDS cannot write a split without examples: a split whose every row is skipped is left out (and
        # reported) by building again without it, rather than failing the whole build
        self._empty_splits: dict[str, dict] = {}  # split -> its report section
        while True:
            self.report = BuildReport(f"{self.name}/{self.builder_config.name}")
            known = set(self._empty_splits)
            try:
                super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
                break
            except AssertionError as err:
                if "No examples were yielded" not in str(err) or set(self._empty_splits) == known:
                    raise
        for split, section in sorted(self._empty_splits.items()):
            self.report.splits[split] = {**section, "left_out": True}
        (epath.Path(self.data_dir) / REPORT_FILE).write_text(json.dumps(self.report.to_json(), indent=1))
        log.debug("%s", format_report(self.report))

    def _manual_dir(self, dl_manager) -> epath.Path:
        try:
            manual = dl_manager.manual_dir
        except AssertionError:  # tfds: missing or empty folder
            manual = None
        if not manual or not epath.Path(manual).is_dir() or not any(epath.Path(manual).iterdir()):
            shown = manual or dl_manager._manual_dir  # noqa: SLF001 - only to name the folder in the error
            raise FileNotFoundError(f"manual data folder {shown} for {self.name} is missing or empty "
                                    f"(pass --manual-dir): {self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
        return epath.Path(manual)

    def _splits(self, manual_dir: epath.Path) -> list[str]:
        return list(self.SPLITS)

    def _split_generators(self, dl_manager):
        manual = self._manual_dir(dl_manager)
        splits = self._splits(manual)
        if not splits:
            raise FileNotFoundError(f"no split of {self.name} found in {manual}: "
                                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
        empty = getattr(self, "_empty_splits", {})
        if all(split in empty for split in splits):
            report = BuildReport(f"{self.name}/{self.builder_config.name}")
            report.splits = dict(empty)
            raise ValueError(f"no row of {self.name} in {manual} could be used:\n{format_report(report)}")
        return {split: self._generate_examples(manual, split) for split in splits if split not in empty}

    def _rows(self, manual_dir: epath.Path, split: str) -> Iterator[Row | Problem]:
        raise NotImplementedError

    def _generate_examples(self, manual_dir: epath.Path, split: str):
        from tqdm.auto import tqdm

        report = self.report if self.report is not None else BuildReport(self.name)
        seen: set[str] = set()
        bar = tqdm(desc=f"{self.name} {split}", unit=" rows", disable=None, leave=False)
        try:
            for item in self._rows(manual_dir, split):
                bar.update(1)
                if isinstance(item, Problem):
                    report.add(split, item.kind, item.id, item.detail, item.where)
                    report.row(split, written=False)
                    continue
                example = self._example(item, split, seen, report)
                report.row(split, written=example is not None)
                if example is not None:
                    seen.add(item.id)
                    yield item.id, example
        finally:
            bar.close()
        if not seen and hasattr(self, "_empty_splits"):
            self._empty_splits[split] = report.splits.get(split) or {"rows": 0, "written": 0, "skipped": 0,
                                                                      "problems": {}}

    def _example(self, row: Row, split: str, seen: set[str], report: BuildReport) -> dict | None:
        cfg = self.builder_config
        if row.id in seen:
            report.add(split, "duplicate_id", row.id, "id already written", row.where)
            return None
        captions, notes = clean_captions(row.captions, cfg.max_caption_chars)
        for kind, detail in notes:
            report.add(split, kind, row.id, detail, row.where)
        if not captions:
            report.add(split, "no_caption", row.id, f"{len(row.captions)} caption(s), none usable", row.where)
            return None
        try:
            data, notes = self._visual(row)
        except RowProblem as p:
            report.add(split, p.kind, row.id, p.detail, row.where)
            return None
        except OSError as err:
            report.add(split, "image_missing" if isinstance(err, FileNotFoundError) else "image_corrupt",
                       row.id, _describe(err), row.where)
            return None
        except RuntimeError:  # the environment, not the row (e.g. a missing decoder): stop with its message
            raise
        except Exception as err:  # noqa: BLE001 - one odd row must not stop a build of millions
            report.add(split, "row_error", row.id, _describe(err), row.where)
            return None
        for kind, detail in notes:
            report.add(split, kind, row.id, detail, row.where)
        return {"image_id": row.id, "image": data, "captions": captions, **row.extra}


def inside(root: str | os.PathLike, rel: str, *, allow_outside: bool = False) -> str:
    """``rel`` resolved against ``root``. Unless ``allow_outside``, raises `RowProblem` (image_path_outside)
    when ``rel`` is absolute or when the result (after ``..`` and symlinks) is not inside ``root``."""
    root_real = os.path.realpath(root)
    if allow_outside:
        return os.path.realpath(os.path.join(root_real, os.path.expanduser(rel)))
    if os.path.isabs(rel) or rel.startswith("~"):
        raise RowProblem("image_path_outside", f"{rel!r} is absolute (allowed only with allow_absolute)")
    path = os.path.realpath(os.path.join(root_real, rel))
    if os.path.commonpath([root_real, path]) != root_real:
        raise RowProblem("image_path_outside", f"{rel!r} resolves to {path}, outside {root_real}")
    return path
