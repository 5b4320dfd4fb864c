"""TFDS builder ``emoji``: real, fine-grained image-text data from npm (Google / Twitter emoji + CLDR labels).

Fetch with ``bash launch/fetch_emoji.sh DIR`` (see /work/shared/ASSETS.md for sources and licences), then
``fastslow data build emoji/benchmark --manual-dir DIR``. Layout of ``DIR``::

    emoji-datasource-google/emoji.json, img/google/64/<image>.png     (64x64 RGBA)
    emoji-datasource-twitter/emoji.json, img/twitter/64/<image>.png
    emojibase-data/en/data.json                                        (CLDR label, tags, skins)

(the tarballs' ``package/`` folder is accepted in place of each of the three folders too). Images and
labels are joined on the hexcode, upper-case with FE0F removed. Captions: the CLDR label (e.g.
"woman teacher: medium-dark skin tone"); in the train split the emojibase keywords (``tags``, of the
base emoji for skin-tone variants) follow as extra captions. Images are composited on white.

Split by concept with a fixed rule: a base emoji and all its skin-tone variants are in ``test`` when
``int(sha1(base_hexcode).hexdigest(), 16) % 5 == 0``; otherwise in ``validation`` when the same number
``% 20 == 1``, else in ``train``. Configs:

* ``benchmark``: train = Google and Twitter images of the train concepts (ids ``google/<hexcode>``,
  ``twitter/<hexcode>``); validation and test = Google images of their concepts;
* ``google``, ``twitter``: one vendor's images in all three splits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import tensorflow_datasets as tfds
from etils import epath

from fastslow_jax.data.builders.base import ManualBuilder, ManualConfig, Problem, Row

PACKAGES = {"google": "emoji-datasource-google", "twitter": "emoji-datasource-twitter"}
LABELS = "emojibase-data"


def normalize_hexcode(code: str) -> str:
    """'263a-fe0f' -> '263A': upper-case, FE0F (variation selector 16) removed."""
    return "-".join(p for p in code.upper().split("-") if p and p != "FE0F")


def concept_split(base_hexcode: str) -> str:
    """The split of a base emoji and its skin-tone variants (the fixed rule of the module docstring)."""
    h = int(hashlib.sha1(normalize_hexcode(base_hexcode).encode()).hexdigest(), 16)
    return "test" if h % 5 == 0 else "validation" if h % 20 == 1 else "train"


@dataclasses.dataclass
class EmojiConfig(ManualConfig):
    train_vendors: tuple[str, ...] = ("google",)
    eval_vendor: str = "google"


def _package(manual_dir: epath.Path, name: str) -> epath.Path:
    root = manual_dir / name
    return root / "package" if (root / "package").is_dir() and not (root / "emoji.json").exists() \
        and not (root / "en").exists() else root


def load_labels(manual_dir: epath.Path) -> dict[str, dict]:
    """normalised hexcode -> {label, tags, base} for every emoji and skin-tone variant of emojibase."""
    path = _package(manual_dir, LABELS) / "en" / "data.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run launch/fetch_emoji.sh {manual_dir}")
    out: dict[str, dict] = {}
    for e in json.loads(path.read_text(encoding="utf-8")):
        base = normalize_hexcode(e["hexcode"])
        tags = list(e.get("tags") or [])
        out[base] = {"label": e.get("label", ""), "tags": tags, "base": base}
        for s in e.get("skins") or []:
            out[normalize_hexcode(s["hexcode"])] = {"label": s.get("label", ""), "tags": tags, "base": base}
    return out


class Emoji(ManualBuilder):
    """Google and Twitter emoji images (64 px) captioned with their Unicode CLDR names and keywords."""

    BUILDER_CONFIGS = [
        EmojiConfig(name="benchmark", train_vendors=("google", "twitter"), eval_vendor="google", expect_alpha=True,
                    description="train: Google + Twitter images of train concepts; validation/test: Google"),
        EmojiConfig(name="google", train_vendors=("google",), eval_vendor="google", expect_alpha=True,
                    description="Google (Noto) images in every split"),
        EmojiConfig(name="twitter", train_vendors=("twitter",), eval_vendor="twitter", expect_alpha=True,
                    description="Twitter (Twemoji) images in every split"),
    ]
    DEFAULT_CONFIG_NAME = "benchmark"
    EXTRA_FEATURES = {"hexcode": tfds.features.Text(), "concept": tfds.features.Text(),
                      "vendor": tfds.features.Text()}
    HOMEPAGE = "https://github.com/iamcal/emoji-data"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "run `bash launch/fetch_emoji.sh DIR` and pass --manual-dir DIR"
    _labels: tuple[str, dict] | None = None

    def _label_index(self, manual_dir: epath.Path) -> dict[str, dict]:
        if self._labels is None or self._labels[0] != os.fspath(manual_dir):
            self._labels = (os.fspath(manual_dir), load_labels(manual_dir))
        return self._labels[1]

    def _rows(self, manual_dir: epath.Path, split: str):
        cfg = self.builder_config
        labels = self._label_index(manual_dir)
        vendors = cfg.train_vendors if split == "train" else (cfg.eval_vendor,)
        for vendor in vendors:
            pkg = _package(manual_dir, PACKAGES[vendor])
            listing = pkg / "emoji.json"
            if not listing.is_file():
                raise FileNotFoundError(f"{listing} not found: run launch/fetch_emoji.sh {manual_dir}")
            entries = sorted(json.loads(listing.read_text(encoding="utf-8")), key=lambda e: e.get("sort_order", 0))
            for e in entries:
                variants = [e] + [v for _, v in sorted((e.get("skin_variations") or {}).items())]
                for v in variants:
                    code = normalize_hexcode(v["unified"])
                    row_id, where = f"{vendor}/{code}", f"{listing.parent.name}/emoji.json {code}"
                    info = labels.get(code)
                    if info is None:
                        if concept_split(normalize_hexcode(e["unified"])) == split:
                            yield Problem("bad_row", row_id, "no CLDR label in emojibase-data for this hexcode",
                                          where)
                        continue
                    if concept_split(info["base"]) != split:
                        continue
                    caps = [info["label"]] + (info["tags"] if split == "train" else [])
                    image = os.fspath(pkg / "img" / vendor / "64" / v["image"])
                    yield Row(row_id, image, caps, where,
                              extra={"hexcode": code, "concept": info["base"], "vendor": vendor})
