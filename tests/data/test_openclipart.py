"""The openclipart builder on a small folder in the layout of Debian's openclipart-svg (svg/<category>/...,
RDF metadata inside each SVG), with a broken file, a blank one, a junk title, a copy and a symlink."""
import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cairosvg")

from fastslow_jax.data.builders import base  # noqa: E402
from fastslow_jax.data.builders.openclipart import (Openclipart, OpenclipartConfig, clean_keyword,  # noqa: E402
                                                    clean_title)


def _svg(title, keywords=(), author="Jane Doe", body='<rect x="0" y="0" width="100" height="50" fill="#ff0000"/>',
         size='width="100" height="50"'):
    lis = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/"
     xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" {size}>
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title><dc:description>a drawing</dc:description>
    <dc:subject><rdf:Bag>{lis}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>{author}</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
  {body}
</svg>"""


def _validation_rule(file_name):  # the docstring's rule, written out independently of the builder
    return int(hashlib.sha1(file_name.encode()).hexdigest(), 16) % 50 == 0


def _write(root):
    svg = root / "svg"

    def put(rel, text):
        path = svg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    put("animals/happy_cat_jane_doe_01.svg", _svg("Happy Cat", ["cat", "hash", "animal", "icons", ""],
                                                  body='<circle cx="50" cy="25" r="20" fill="#0000ff"/>'))
    put("animals/mammals/happy_cat_jane_doe_01.svg",  # the same drawing filed under a second category
        _svg("Happy Cat", ["cat", "mammal"], body='<circle cx="50" cy="25" r="20" fill="#0000ff"/>'))
    put("transportation/blue_car_front_jane_do_01.svg", _svg("blue_carFront_02", ["car", "united_nations_member"]))
    put("people/smilies/smiley105.svg", _svg("Clipart by Nicu Buculei - smiley111", ["smiley"], author="Nicu Buculei",
                                             body='<circle cx="25" cy="25" r="20" fill="#00ff00"/>',
                                             size='width="50" height="50"'))
    put("unsorted/broken_drawing_jane_doe_01.svg", _svg("Broken drawing")[:-40])  # cut off: not XML
    put("shapes/blank_sheet_jane_doe_01.svg", _svg("Blank sheet", body=""))
    # a junk title and a file name without words; its drawing (the default one) is also the blue car's, which is
    # kept: a file skipped for its caption does not make the next copy of its drawing a duplicate
    put("computer/icons/70a014.svg", _svg("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)"))
    put("computer/icons/mail_delete.svg", _svg("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)",
                                               body='<rect x="10" y="10" width="30" height="30" fill="#000000"/>'))
    n = next(i for i in range(1000) if _validation_rule(f"lamp{i}.svg"))
    put(f"office/lamp{n}.svg", _svg("Desk lamp by Jane Doe", ["lamp", "office"],
                                    body='<rect x="0" y="0" width="50" height="50" fill="#ffff00"/>',
                                    size='width="50" height="50"'))
    os.symlink("../animals/happy_cat_jane_doe_01.svg", svg / "people" / "cat_link.svg")
    return f"office/lamp{n}.svg"


def _build(root, data_dir, config=None):
    import tensorflow_datasets as tfds
    b = Openclipart(config=config, data_dir=str(data_dir))
    b.download_and_prepare(file_format="array_record",
                           download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    b = Openclipart(config=config, data_dir=str(data_dir))
    return b, base.read_report(b)


def _records(builder, split):
    src = builder.as_data_source(split)
    out = {}
    for i in range(len(src)):
        ex = src[i]
        key = ex["image_id"].decode() if isinstance(ex["image_id"], bytes) else str(ex["image_id"])
        out[key] = ex
    return out


def _caps(ex):
    return [c.decode() if isinstance(c, bytes) else str(c) for c in ex["captions"]]


def _image(ex):
    im = ex["image"]
    if isinstance(im, (bytes, bytearray)):
        im = np.asarray(Image.open(io.BytesIO(im)).convert("RGB"))
    return np.asarray(im)


def test_openclipart_records_captions_split_and_report(tmp_path):
    lamp = _write(tmp_path / "openclipart")
    builder, report = _build(tmp_path / "openclipart", tmp_path / "data")
    train, val = _records(builder, "train"), _records(builder, "validation")

    assert {k: _caps(v) for k, v in train.items()} == {
        "animals/happy_cat_jane_doe_01.svg": ["happy cat", "cat", "animal"],
        "computer/icons/mail_delete.svg": ["mail delete"],
        "people/smilies/smiley105.svg": ["smiley"],
        "transportation/blue_car_front_jane_do_01.svg": ["blue car front", "car", "united nations member"],
    }
    assert {k: _caps(v) for k, v in val.items()} == {lamp: ["desk lamp"]}  # title only in validation

    problems = {k: p["count"] for k, p in report.splits["train"]["problems"].items()}
    assert problems == {"image_corrupt": 1, "image_empty": 1, "no_caption": 1,
                        "duplicate_image": 2,  # a symlink and a copy
                        "caption_title_cleaned": 2, "caption_from_filename": 1, "caption_keyword_dropped": 3,
                        "caption_duplicate": 1}  # the smiley's keyword 'smiley' repeats its title
    examples = {k: [e["id"] for e in p["examples"]] for k, p in report.splits["train"]["problems"].items()}
    assert examples["image_corrupt"] == ["unsorted/broken_drawing_jane_doe_01.svg"]
    assert examples["image_empty"] == ["shapes/blank_sheet_jane_doe_01.svg"]
    assert examples["no_caption"] == ["computer/icons/70a014.svg"]
    assert sorted(examples["duplicate_image"]) == ["animals/mammals/happy_cat_jane_doe_01.svg", "people/cat_link.svg"]
    s = report.splits["train"]
    assert (s["rows"], s["written"], s["skipped"]) == (9, 4, 5)
    assert "validation" in base.format_report(report)

    # images: 128 x 128 RGB on white, aspect kept (the 100 x 50 red rectangle fills the middle half)
    car = _image(train["transportation/blue_car_front_jane_do_01.svg"])
    assert car.shape == (128, 128, 3) and car.dtype == np.uint8
    assert (car[:30] == 255).all() and (car[-30:] == 255).all()  # padding above and below is white
    assert (car[40:88, :] == [255, 0, 0]).all()  # the rectangle spans the whole width, rows 32..95
    cat = _image(train["animals/happy_cat_jane_doe_01.svg"])
    assert (cat[0, 0] == 255).all() and (cat[64, 64] == [0, 0, 255]).all()  # transparent -> white; blue disc
    assert (_image(val[lamp]) == [255, 255, 0]).all()  # a square drawing fills the whole square


def test_openclipart_image_size_and_one_worker(tmp_path):
    _write(tmp_path / "openclipart")
    cfg = OpenclipartConfig(name="small", image_size=32, workers=1)
    builder, report = _build(tmp_path / "openclipart", tmp_path / "data", config=cfg)
    train = _records(builder, "train")
    assert len(train) == 4
    smiley = _image(train["people/smilies/smiley105.svg"])
    assert smiley.shape == (32, 32, 3) and (smiley[0, 0] == 255).all() and (smiley[16, 16] == [0, 255, 0]).all()


def test_clean_title_and_keywords():
    assert clean_title("Happy Cat") == ("happy cat", "")
    assert clean_title("blue_carFront_02") == ("blue car front", "cleaned")
    assert clean_title("Clipart by Nicu Buculei - birthday_cake") == ("birthday cake", "cleaned")
    assert clean_title("SVG Gradient Collection by Alan Horkan, 2004.", file_name="gradient-fruit-salad.svg") == \
        ("gradient fruit salad", "from_filename")
    assert clean_title("gramastar", file_name="star_53pt24step.svg", collection=True) == ("star", "from_filename")
    assert clean_title("Appunti", file_name="appunti_architetto_franc_01.svg",
                       authors=("Architetto Francesco Rollandin",)) == ("appunti", "")
    assert clean_title("", file_name="armadillo_architetto_fra_01.svg",
                       authors=("Architetto Francesco Rollandin",)) == ("armadillo", "from_filename")
    assert clean_title("Ice Cream Cone (2 Scoop) (B and W)") == ("ice cream cone black and white", "cleaned")
    assert clean_title("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)", file_name="7days.svg") == \
        ("7 days", "from_filename")
    assert clean_title("gold-theme", file_name="70a014.svg")[0] is None
    assert [clean_keyword(k) for k in ["united_nations_member", "hash", "lemon_theme_icon", None, "11", "Frog"]] == \
        ["united nations member", None, None, None, None, "frog"]
