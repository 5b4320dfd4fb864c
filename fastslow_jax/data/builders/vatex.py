"""TFDS builder ``vatex``: VATEX clips with their English captions, as ``image`` uint8 [T, H, W, 3].

Layout of ``--manual-dir``:

* the published annotation files: ``vatex_training_v1.0.json`` (split ``train``),
  ``vatex_validation_v1.0.json`` (``validation``) and ``vatex_public_test_english_v1.1.json``
  (``test``), each a list of ``{"videoID": "<youtube id>_<start>_<end>", "enCap": [10 captions], ...}``;
* the clips, either as video files ``clips/<videoID>.mp4`` (also ``.webm``, ``.mkv``, ``.avi``; decoded
  with PyAV, the ``video`` extra: ``pip install -e .[video]``) or as pre-extracted frames
  ``frames/<videoID>/*.jpg`` (or ``.png``; sorted by name). When both exist the frames win.

Each clip becomes ``num_frames`` frames (config ``default``: 8, ``t4``: 4) sampled uniformly over its
length (frame ``floor((i + 0.5) * N / T)``), shrunk to at most ``max_side`` (256) on the longer side.
A clip with fewer than T frames repeats frames (counted ``video_short``); a missing clip is
``image_missing``, an undecodable one ``image_corrupt`` (both skipped). ``image_id`` is the videoID.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from fastslow_jax.data.builders.base import (ManualBuilder, ManualConfig, Problem, Row, RowProblem, decode_text,
                                             prepare_image)

_JSON = {"train": "vatex_training_v1.0.json", "validation": "vatex_validation_v1.0.json",
         "test": "vatex_public_test_english_v1.1.json"}
_VIDEO_EXT = (".mp4", ".webm", ".mkv", ".avi")
_FRAME_EXT = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class VatexConfig(ManualConfig):
    num_frames: int = 8


def sample_indices(n: int, t: int) -> list[int]:
    """``t`` frame indices spread uniformly over ``n`` frames (repeating when ``n < t``)."""
    return [min(n - 1, (2 * i + 1) * n // (2 * t)) for i in range(t)]


def decode_clip(path: str, num_frames: int) -> tuple[list[Image.Image], int]:
    """(``num_frames`` frames sampled uniformly, total frame count) of a video file, decoded with PyAV."""
    try:
        import av
    except ImportError:
        raise RuntimeError("decoding VATEX clips needs PyAV: pip install -e .[video] "
                           "(or provide pre-extracted frames/<videoID>/*.jpg)") from None
    frames: list[Image.Image] = []
    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_image())
    except Exception as err:  # noqa: BLE001 - PyAV raises many types for broken containers/streams
        kind = "image_truncated" if frames else "image_corrupt"
        raise RowProblem(kind, f"{os.path.basename(path)} after {len(frames)} frames: "
                               f"{type(err).__name__}: {err}") from None
    if not frames:
        raise RowProblem("image_corrupt", f"{os.path.basename(path)} has no video frame")
    return [frames[i] for i in sample_indices(len(frames), num_frames)], len(frames)


class Vatex(ManualBuilder):
    """VATEX: 10-second YouTube clips with 10 English captions each."""

    BUILDER_CONFIGS = [VatexConfig(name="default", max_side=256, num_frames=8,
                                   description="8 frames a clip, at most 256 px"),
                       VatexConfig(name="t4", max_side=256, num_frames=4,
                                   description="4 frames a clip, at most 256 px")]
    HOMEPAGE = "https://eric-xw.github.io/vatex-website/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("put the VATEX JSON files (vatex_training_v1.0.json, ...) in the manual folder "
                                    "with the clips in clips/<videoID>.mp4 or frames in frames/<videoID>/*.jpg")

    def _image_feature(self):
        return tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                                      length=self.builder_config.num_frames)

    def _splits(self, manual_dir: epath.Path) -> list[str]:
        return [s for s in self.SPLITS if (manual_dir / _JSON[s]).is_file()]

    def _rows(self, manual_dir: epath.Path, split: str):
        path = manual_dir / _JSON[split]
        try:
            entries = json.loads(decode_text(path.read_bytes()))
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(entries, list):
            raise ValueError(f"{path} is not a list of clips: is it a VATEX annotation file?")
        for n, e in enumerate(entries):
            where = f"{path.name}[{n}]"
            vid = e.get("videoID") if isinstance(e, dict) else None
            caps = e.get("enCap") if isinstance(e, dict) else None
            if not isinstance(vid, str) or not vid or not isinstance(caps, list):
                yield Problem("bad_row", f"[{n}]", 'entry without a "videoID" string and an "enCap" list', where)
                continue
            if os.sep in vid or vid.startswith("."):
                yield Problem("image_path_outside", vid, "videoID is not a plain file name", where)
                continue
            yield Row(vid, self._clip_source(manual_dir, vid), caps, where)

    def _clip_source(self, manual_dir: epath.Path, vid: str) -> str:
        frames = manual_dir / "frames" / vid
        if frames.is_dir():
            return os.fspath(frames)
        for ext in _VIDEO_EXT:
            if (manual_dir / "clips" / (vid + ext)).is_file():
                return os.fspath(manual_dir / "clips" / (vid + ext))
        return os.fspath(manual_dir / "clips" / (vid + ".mp4"))

    def _visual(self, row: Row):
        cfg = self.builder_config
        src = os.fspath(row.image)
        notes: list[tuple[str, str]] = []
        if os.path.isdir(src):
            names = sorted(f for f in os.listdir(src) if f.lower().endswith(_FRAME_EXT))
            if not names:
                raise RowProblem("image_missing", f"{src} holds no .jpg/.png frame")
            picked = [names[i] for i in sample_indices(len(names), cfg.num_frames)]
            frames = []
            for name in picked:
                with open(os.path.join(src, name), "rb") as f:
                    raw = f.read()
                try:
                    data, _ = prepare_image(raw, max_side=10 ** 9, max_pixels=cfg.max_pixels)
                except RowProblem as p:
                    raise RowProblem(p.kind, f"frame {name}: {p.detail}") from None
                frames.append(Image.open(io.BytesIO(data)).convert("RGB"))
            n = len(names)
        elif os.path.isfile(src):
            frames, n = decode_clip(src, cfg.num_frames)
        else:
            raise RowProblem("image_missing", f"no clip {src} (nor frames/{row.id}/)")
        if n < cfg.num_frames:
            notes.append(("video_short", f"{n} frames < num_frames {cfg.num_frames}"))
        size = frames[0].size
        if any(f.size != size for f in frames):
            notes.append(("video_frame_size", f"sizes {sorted({f.size for f in frames})} -> {size}"))
            frames = [f if f.size == size else f.resize(size, Image.Resampling.BILINEAR) for f in frames]
        if max(size) > cfg.max_side:
            scale = cfg.max_side / max(size)
            target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            frames = [f.resize(target, Image.Resampling.BILINEAR) for f in frames]
        out = []
        for f in frames:
            buf = io.BytesIO()
            f.save(buf, format="JPEG", quality=90)
            out.append(buf.getvalue())
        return out, notes
