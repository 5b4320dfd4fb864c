"""TFDS builder ``openclipart``: Debian's ``openclipart-svg`` clip art (public domain), titles and keywords.

Install with ``apt-get install openclipart-svg`` and build with ``fastslow data build openclipart
--manual-dir /usr/share/openclipart`` (needs ``pip install -e '.[openclipart]'`` for cairosvg, which uses
the system cairo library ``libcairo2``). Layout of the package's folder::

    svg/<category>[/<subcategory>...]/<name>.svg      7,458 files and 663 symlinks in 0.18+dfsg-19

Each SVG carries its metadata in ``<metadata><rdf:RDF><cc:Work>``: ``dc:title``, ``dc:description``,
``dc:subject/rdf:Bag/rdf:li`` (the keywords) and ``dc:creator/cc:Agent/dc:title`` (the author). Many
drawings are filed under two categories, as a symlink or as a copy with slightly different keywords.

Images: rendered with cairosvg to ``image_size`` x ``image_size`` (config field, default 128), aspect
kept (centred, padded), composited on white and stored as PNG. An SVG that does not parse
(``image_corrupt``), that the renderer rejects (``image_render_error``) or that renders blank
(``image_empty``) is skipped; so is a symlink or a file whose drawing (the SVG without its metadata) was
already read (``duplicate_image``). Rendering runs in ``workers`` processes (default: every core).

Captions (`clean_title`, `clean_keyword`): the title, cleaned (``caption_title_cleaned``: underscores,
camelCase and file-name-like titles split into words, "by <author>" / "Clipart by <author> -" and
dates, ids and counters removed, lower case); a collection title (one that names at least
``COLLECTION_TITLE_FILES`` different drawings, or says "collection", "theme", "cliparts", ...) or a
title left empty is replaced by the words of the file name less the author's name and counters
(``caption_from_filename``); a row with neither is skipped (``no_caption``). In the train split the
cleaned keywords follow as extra captions (generic ones such as "hash" or "icons" dropped:
``caption_keyword_dropped``); validation has the title only (like ``emoji``).

Split by a fixed rule of the file name (so that the copies of one drawing in several categories fall in
one split): ``validation`` when ``int(sha1(file_name).hexdigest(), 16) % 50 == 0`` (2 %), else ``train``.
Ids are the paths below ``svg/`` (e.g. ``animals/bat_orlando_karam_.svg``).

Real build (openclipart-svg 1:0.18+dfsg-19, 2 shared cores, 2 workers, commit 8890838): 10 min 48 s wall,
8,121 files read, 6,692 train + 134 validation written; skipped: 1,105 duplicate_image (663 symlinks + copies),
127 image_empty, 22 image_render_error (cairosvg: '100%' sizes, forbidden XML entities, zero sizes),
41 no_caption; e.g. 'Etiquette Icons' (ant.svg) -> 'ant', 'AZ-lizard' -> 'az lizard', 'Rana02' -> 'rana'.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import logging
import multiprocessing
import os
import re
import unicodedata
import xml.etree.ElementTree as ET

import numpy as np
from etils import epath
from PIL import Image

from fastslow_jax.data.builders.base import ManualBuilder, ManualConfig, Problem, Row, RowProblem, _describe

log = logging.getLogger(__name__)

COLLECTION_TITLE_FILES = 8  # a title shared by this many different drawings names a collection, not a drawing
VALIDATION_MODULUS = 50  # 1 in 50 file names (2 %) is in validation
EMPTY_LEVEL = 8  # a render whose every pixel is within this of white (255) is blank

_NS = {"dc": "http://purl.org/dc/elements/1.1/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
       "cc": "http://web.resource.org/cc/"}
_CC_OLD = "http://creativecommons.org/ns#"  # newer Inkscape files use this namespace for cc:Work
_COLLECTION_WORDS = re.compile(
    r"\b(collection|theme|cliparts|clip ?arts|various|miscellaneous|set of|svg|clipart)\b", re.I)
_GENERIC_KEYWORDS = frozenset("""hash icon icons appicon theme clipart clip art cliparts svg image images
    picture pictures drawing unsorted special misc miscellany various openclipart public domain none""".split())


def validation_file(file_name: str) -> bool:
    """The fixed split rule of the module docstring (``file_name``: the SVG's name without its folder)."""
    return int(hashlib.sha1(file_name.encode("utf-8")).hexdigest(), 16) % VALIDATION_MODULUS == 0


# ---------------------------------------------------------------------------------------------- captions


def _split_words(text: str) -> list[str]:
    """'AIGA_Symbol_Signs' -> ['AIGA', 'Symbol', 'Signs']; 'blueCarFront2' -> ['blue', 'Car', 'Front2']."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)  # camelCase
    return re.findall(r"[^\W_]+(?:'[^\W_]+)?", text)


_STOP_TAIL = frozenset("a an and or of the with in on for to by".split())


def _words(text: str) -> list[str]:
    """Lower-case words of a title, keyword or file name, without counters and ids: 'smiley111' -> 'smiley',
    '70a014', '53pt24step' and numbers of 3 or more digits dropped, '3d', '1st', '80s' and small numbers
    inside a phrase kept; single letters and trailing counters or stop words dropped."""
    text = re.sub(r"(?i)\bb ?(and|&|/|n) ?w\b", "black and white", text)
    words = []
    for w in _split_words(text):
        if w.isdigit():
            if len(w) <= 2:
                words.append(w)
            continue
        letters_then_digits = re.fullmatch(r"([^\W\d_]+)\d+", w)
        digits_then_word = re.fullmatch(r"(\d{1,2})([^\W\d_]{3,})", w)  # '7days', '2uparrow'
        if letters_then_digits:
            w = letters_then_digits.group(1)
        elif digits_then_word:
            words.append(digits_then_word.group(1))
            w = digits_then_word.group(2).lower()
        elif re.search(r"\d", w) and not re.fullmatch(r"\d{1,2}(d|st|nd|rd|th|s)", w.lower()):
            continue
        if len(w) > 1 or w.isdigit():
            words.append(w.lower())
    while words and (words[-1].isdigit() or words[-1] in _STOP_TAIL):
        words.pop()
    return words


def _strip_author(words: list[str], authors: list[str]) -> list[str]:
    """Debian's file names end with the first letters of the author's name ('appunti_architetto_franc_01'
    by Architetto Francesco Rollandin): drop the longest such tail (the last word may be cut short)."""
    for author in authors:
        name = [w.lower() for w in _split_words(author)]
        for n in range(min(len(words) - 1, len(name)), 0, -1):
            tail = words[-n:]
            if tail[:-1] == name[: n - 1] and name[n - 1].startswith(tail[-1]):
                return words[:-n]
    return words


def clean_title(title: str, *, file_name: str = "", authors: tuple[str, ...] = (),
                collection: bool = False) -> tuple[str | None, str]:
    """(caption or None, how): the cleaned title; ``how`` is '' (unchanged but for case and spaces),
    'cleaned', 'from_filename' or the reason no caption is left."""
    raw = unicodedata.normalize("NFKC", title or "").strip()
    text = raw
    by = re.match(r"(?i)^clip ?art by [^-:]+[-:]\s*(.+)$", text)  # 'Clipart by Nicu Buculei - smiley111'
    if by:
        text = by.group(1)
    elif re.match(r"(?i)^clip ?art by ", text):
        text = ""
    text = re.sub(r"\([^)]*\d[^)]*\)", " ", text)  # '(Wed Aug 25 23:29:46 2004)'
    text = re.sub(r"(?i)\s+by\s+\S.*$", "", text)  # 'Gradient Collection by Alan Horkan, 2004.'
    text = re.sub(r"(?i)\.(svg|png)$", "", text.strip())
    named_collection = by is None and bool(_COLLECTION_WORDS.search(text))
    words = [] if named_collection else _words(text)
    if words and not collection:
        caption = " ".join(words)
        return caption, "" if caption == " ".join(raw.split()).lower() else "cleaned"
    stem = os.path.splitext(file_name)[0]
    from_file = _strip_author(_words(stem), list(authors))
    if from_file:
        return " ".join(from_file), "from_filename"
    if words:  # a title many drawings share, but words all the same (e.g. 'lightning')
        return " ".join(words), "cleaned"
    return None, f"title {raw[:60]!r} and file name {file_name!r} leave no words"


def clean_keyword(keyword: str | None) -> str | None:
    """'united_nations_member' -> 'united nations member'; generic or id-like keywords -> None."""
    words = _words(unicodedata.normalize("NFKC", keyword or ""))
    text = " ".join(words)
    if not text or text in _GENERIC_KEYWORDS or all(w in _GENERIC_KEYWORDS for w in words) or "theme" in words:
        return None
    return text


# ---------------------------------------------------------------------------------------------- metadata


@dataclasses.dataclass
class SvgInfo:
    rel: str  # path below svg/
    title: str = ""
    keywords: tuple[str | None, ...] = ()
    authors: tuple[str, ...] = ()
    drawing: str = ""  # sha1 of the file without its <metadata>: equal drawings are copies
    error: str = ""  # why the file does not parse


def read_info(path: str, rel: str) -> SvgInfo:
    """The title, keywords and authors of one SVG file (``error`` set when it is not an SVG document)."""
    info = SvgInfo(rel)
    try:
        with open(path, "rb") as f:
            data = f.read()
        root = ET.fromstring(data)
    except (ET.ParseError, OSError, ValueError) as err:
        info.error = _describe(err)
        return info
    if not root.tag.endswith("}svg") and root.tag != "svg":
        info.error = f"the root element is <{root.tag}>, not <svg>"
        return info
    info.drawing = hashlib.sha1(re.sub(rb"<metadata.*?</metadata>", b"", data, flags=re.S)).hexdigest()
    work = root.find(".//cc:Work", _NS)
    if work is None:
        work = root.find(f".//{{{_CC_OLD}}}Work")
    if work is None:
        return info
    info.title = (work.findtext("dc:title", "", _NS) or "").strip()
    info.keywords = tuple(li.text for li in work.findall("dc:subject/rdf:Bag/rdf:li", _NS))
    if not info.keywords and (work.findtext("dc:subject", "", _NS) or "").strip():
        info.keywords = tuple(re.split(r"[,;]\s*", work.findtext("dc:subject", "", _NS).strip()))
    info.authors = tuple(t.strip() for t in (a.findtext("dc:title", "", _NS) for a in
                                             work.findall("dc:creator/*", _NS) + work.findall("dc:publisher/*", _NS))
                         if t and t.strip())
    return info


# ---------------------------------------------------------------------------------------------- rendering


def render_svg(data: bytes, size: int) -> bytes:
    """SVG bytes -> PNG bytes of a size x size RGB image (aspect kept, centred, on white); raises `RowProblem`."""
    import cairosvg

    try:
        png = cairosvg.svg2png(bytestring=data, output_width=size, output_height=size)
        im = Image.open(io.BytesIO(png))
        im.load()
    except Exception as err:  # noqa: BLE001 - cairosvg raises many types for what it cannot draw
        raise RowProblem("image_render_error", _describe(err)[:200]) from None
    im = im.convert("RGBA")
    if im.size != (size, size):  # cairosvg centres within the box already; pad if it did not
        im.thumbnail((size, size))
        box = Image.new("RGBA", (size, size), (255, 255, 255, 0))
        box.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
        im = box
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, im).convert("RGB")
    if int(255 - np.asarray(rgb).min()) < EMPTY_LEVEL:
        raise RowProblem("image_empty", f"every pixel of the {size}x{size} render is white or transparent")
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _render_file(task: tuple[str, int]) -> tuple[str, bytes | str, str]:
    """Worker: (path, size) -> ('ok', png, '') or ('problem', kind, detail)."""
    path, size = task
    try:
        with open(path, "rb") as f:
            return "ok", render_svg(f.read(), size), ""
    except RowProblem as p:
        return "problem", p.kind, p.detail
    except OSError as err:
        return "problem", "image_missing" if isinstance(err, FileNotFoundError) else "image_corrupt", _describe(err)


def _check_renderer() -> None:
    try:
        import cairosvg  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"openclipart needs cairosvg and the cairo library ({err}): run "
                           "pip install -e '.[openclipart]' -c requirements/constraints.txt, and "
                           "apt-get install libcairo2 where cairo is missing") from None
    except OSError as err:
        raise RuntimeError(f"cairosvg cannot load the cairo library ({err}): apt-get install libcairo2") from None


# ---------------------------------------------------------------------------------------------- builder


@dataclasses.dataclass
class OpenclipartConfig(ManualConfig):
    image_size: int = 128  # square side of the rendered images
    workers: int = 0  # render processes; 0: every core, 1: in this process


class Openclipart(ManualBuilder):
    """Debian's openclipart-svg drawings rendered to 128 px, captioned with cleaned titles and keywords."""

    BUILDER_CONFIGS = [OpenclipartConfig(name="default", description="128 px renders on white")]
    SPLITS = ("train", "validation")
    HOMEPAGE = "https://packages.debian.org/openclipart-svg"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("apt-get install openclipart-svg and pass --manual-dir /usr/share/openclipart "
                                    "(the folder holding svg/)")
    _index: tuple[str, list, collections.Counter] | None = None

    def _svg_root(self, manual_dir: epath.Path) -> str:
        root = os.fspath(manual_dir)
        if os.path.isdir(os.path.join(root, "svg")):
            return os.path.join(root, "svg")
        raise FileNotFoundError(f"no svg/ folder in {root}: {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")

    def _read_index(self, manual_dir: epath.Path):
        """Every SVG below svg/ in path order: [(rel, SvgInfo or symlink target)], and the number of
        different drawings that carry each title (for the collection-title rule)."""
        root = self._svg_root(manual_dir)
        if self._index is None or self._index[0] != root:
            from tqdm.auto import tqdm

            paths = []
            for folder, dirs, files in os.walk(root):
                dirs.sort()
                paths += [os.path.relpath(os.path.join(folder, f), root) for f in files if f.lower().endswith(".svg")]
            paths.sort()
            entries, drawings = [], collections.defaultdict(set)
            for rel in tqdm(paths, desc=f"{self.name} metadata", unit=" files", disable=None, leave=False):
                full = os.path.join(root, rel)
                if os.path.islink(full):
                    entries.append((rel, os.path.relpath(os.path.realpath(full), os.path.realpath(root))))
                    continue
                info = read_info(full, rel)
                entries.append((rel, info))
                if info.title and not info.error:
                    drawings[" ".join(info.title.split()).lower()].add(info.drawing)
            titles = collections.Counter({t: len(d) for t, d in drawings.items()})
            self._index = (root, entries, titles)
        return self._index

    def _rows(self, manual_dir: epath.Path, split: str):
        cfg = self.builder_config
        root, entries, titles = self._read_index(manual_dir)
        _check_renderer()
        seen_drawings: dict[str, str] = {}
        todo: list[tuple[SvgInfo, list, list]] = []  # (info, captions, notes) of the rows to render
        for rel, info in entries:
            in_split = "validation" if validation_file(os.path.basename(rel)) else "train"
            if isinstance(info, str):  # symlink
                if in_split == split:
                    yield Problem("duplicate_image", rel, f"symlink to {info}", rel)
                continue
            if info.error:
                if in_split == split:
                    yield Problem("image_corrupt", rel, f"not an SVG document: {info.error}"[:200], rel)
                continue
            collection = titles[" ".join(info.title.split()).lower()] >= COLLECTION_TITLE_FILES
            title, how = clean_title(info.title, file_name=os.path.basename(rel), authors=info.authors,
                                     collection=collection)
            if title is None:
                if in_split == split:
                    yield Problem("no_caption", rel, how, rel)
                continue
            # the first captioned file of each drawing, over both splits: a copy is never in the other split
            first = seen_drawings.setdefault(info.drawing, rel)
            if in_split != split:
                continue
            if first != rel:
                yield Problem("duplicate_image", rel, f"same drawing as {first}", rel)
                continue
            notes = []
            if how == "cleaned":
                notes.append(("caption_title_cleaned", f"{info.title[:60]!r} -> {title!r}"))
            elif how == "from_filename":
                notes.append(("caption_from_filename", f"{info.title[:60]!r} -> {title!r}"))
            captions = [title]
            if split == "train":
                for kw in info.keywords:
                    clean = clean_keyword(kw)
                    if clean is None:
                        notes.append(("caption_keyword_dropped", repr(kw)))
                    else:
                        captions.append(clean)
            todo.append((info, captions, notes))
        tasks = [(os.path.join(root, info.rel), cfg.image_size) for info, _, _ in todo]
        for (info, captions, notes), (status, a, b) in zip(todo, self._render_all(tasks)):
            if status == "ok":
                yield _ClipRow(info.rel, a, captions, info.rel, notes=notes)
            else:
                yield Problem(a, info.rel, b, info.rel)

    def _render_all(self, tasks):
        workers = self.builder_config.workers or os.cpu_count() or 1
        if workers <= 1 or len(tasks) < 2:
            yield from map(_render_file, tasks)
            return
        # spawn: the parent may hold JAX / TFDS threads, which fork would copy in an unsafe state
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            yield from pool.imap(_render_file, tasks, chunksize=4)

    def _visual(self, row: Row):
        return row.image, []  # already a size x size RGB PNG (render_svg)

    def _example(self, row, split, seen, report):
        example = super()._example(row, split, seen, report)
        if example is not None:
            for kind, detail in getattr(row, "notes", ()):
                report.add(split, kind, row.id, detail, row.where)
        return example


@dataclasses.dataclass
class _ClipRow(Row):
    notes: list = dataclasses.field(default_factory=list)
