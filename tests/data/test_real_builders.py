"""The builders over users' files (jsonl, flickr30k, coco_karpathy, cc3m) on tiny fixtures written in the
published layouts, broken files included: every defect is counted, reported, and the other rows intact."""
import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from fastslow_jax.data.builders import base
from fastslow_jax.data.builders.cc3m import Cc3m
from fastslow_jax.data.builders.jsonl import Jsonl
from fastslow_jax.data.builders.karpathy import CocoKarpathy, Flickr30k


def _pixels(i: int, size: int = 16) -> np.ndarray:
    """A distinct image per index (gradient + index-dependent colour)."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([(x * 16 + i) % 256, (y * 16 + 3 * i) % 256, np.full_like(x, (7 * i) % 256)], -1).astype(np.uint8)


def _save(path, arr, fmt=None, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, **kw)
    return path


def _build(cls, manual, data_dir, config=None):
    import tensorflow_datasets as tfds
    b = cls(config=config, data_dir=str(data_dir))
    b.download_and_prepare(file_format="array_record",
                           download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    b = cls(config=config, data_dir=str(data_dir))
    return b, base.read_report(b)


def _records(builder, split):
    src = builder.as_data_source(split)
    return [src[i] for i in range(len(src))]


def _text(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def _caps(ex):
    return [_text(c) for c in ex["captions"]]


def _problems(report, split):
    return {k: p["count"] for k, p in report.splits[split]["problems"].items()}


# ------------------------------------------------------------------ the done-when fixture: 100 rows, 15 broken


def _write_hundred(root):
    """100 jsonl rows: 3 missing, 3 corrupt, 4 truncated images; 2 empty, 1 whitespace-only, 1 non-UTF-8 and
    1 very long caption; the other 85 rows plain. Returns the expected good rows {id: (pixels, captions)}."""
    os.makedirs(root / "imgs", exist_ok=True)
    lines, good = [], {}
    missing, corrupt, truncated = {5, 17, 60}, {8, 33, 71}, {12, 44, 80, 99}
    empty, blank, latin, long_ = {21, 52}, {63}, {27}, {90}
    for i in range(100):
        rel = f"imgs/{i:03d}." + ("png" if i % 2 else "jpg")
        arr = _pixels(i)
        caption = f"picture number {i}"
        if i not in missing:
            _save(str(root / rel), arr, quality=95)
        if i in corrupt:
            (root / rel).write_bytes(b"this is not an image" * 3)
        if i in truncated:
            data = (root / rel).read_bytes()
            (root / rel).write_bytes(data[: len(data) * 2 // 3])
        if i in empty:
            caption = ""
        if i in blank:
            caption = "  \n\t "
        if i in long_:
            caption = "word " * 400
        line = json.dumps({"image": rel, "caption": [caption] if i % 3 else caption, "id": f"r{i:03d}"}).encode()
        if i in latin:
            line = line.replace(f"picture number {i}".encode(), b"caf\xe9 number 27")
        lines.append(line)
        if i not in missing | corrupt | truncated | empty | blank:
            decoded = np.asarray(Image.open(root / rel).convert("RGB"))
            cap = {27: "café number 27"}.get(i, caption)
            good[f"r{i:03d}"] = (decoded, cap)
    (root / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return good


def test_hundred_rows_with_ten_broken_images_and_five_broken_captions(tmp_path, capsys):
    manual = tmp_path / "manual"
    good = _write_hundred(manual)
    builder, report = _build(Jsonl, manual, tmp_path / "data")
    s = report.splits["train"]
    assert (s["rows"], s["written"], s["skipped"]) == (100, 87, 13)
    assert _problems(report, "train") == {
        "image_missing": 3, "image_corrupt": 3, "image_truncated": 4,  # the 10 broken images
        "caption_empty": 3, "caption_not_utf8": 1, "caption_too_long": 1,  # the 5 broken captions
        "no_caption": 3,  # the rows left without a caption (empty / whitespace-only), skipped
    }
    probs = s["problems"]
    assert sorted(e["id"] for e in probs["image_missing"]["examples"]) == ["r005", "r017", "r060"]
    assert sorted(e["id"] for e in probs["image_truncated"]["examples"]) == ["r012", "r044", "r080", "r099"]
    assert sorted(e["id"] for e in probs["no_caption"]["examples"]) == ["r021", "r052", "r063"]
    assert probs["image_corrupt"]["action"] == "skipped" and probs["caption_too_long"]["action"] == "repaired"
    text = base.format_report(report)
    assert "87 written, 13 skipped" in text and "image_truncated" in text and "r044" in text

    recs = _records(builder, "train")
    assert [_text(r["image_id"]) for r in recs] == sorted(good)  # source order, nothing else dropped
    for r in recs:
        pixels, cap = good[_text(r["image_id"])]
        np.testing.assert_array_equal(r["image"], pixels)  # stored byte for byte: decodes identically
        if r["image_id"] in (b"r090", "r090"):
            (c,) = _caps(r)
            assert len(c) <= 512 and c.startswith("word word") and c.endswith("word")
        else:
            assert _caps(r) == [cap]

    # rebuilding is idempotent: the same records in the same order, and the same report. (The array_record
    # files are equal byte for byte only within one process: TFDS serialises each tf.Example's feature map
    # in protobuf's hash order, which changes between processes.)
    def snapshot():
        return [(_text(r["image_id"]), _caps(r), r["image"].tobytes()) for r in _records(builder, "train")]
    before = snapshot()
    from fastslow_jax.data import build
    out = []
    build.build("jsonl", manual_dir=str(manual), data_dir=str(tmp_path / "data"), force=True, out=out.append)
    assert snapshot() == before
    assert base.read_report(builder).to_json() == report.to_json()
    assert "87 written, 13 skipped" in out[0] and out[-1].startswith("jsonl: 87 train examples")


def test_image_modes_are_converted_and_reported(tmp_path):
    m = tmp_path / "m"
    rows = []

    def add(name, img, fmt, **kw):
        os.makedirs(m / "i", exist_ok=True)
        img.save(m / "i" / name, format=fmt, **kw)
        rows.append({"image": f"i/{name}", "caption": name})

    add("gray.png", Image.fromarray(np.full((8, 8), 77, np.uint8), "L"), "PNG")
    add("cmyk.tif", Image.new("CMYK", (8, 8), (0, 0, 255, 0)), "TIFF")
    pal = Image.new("P", (8, 8))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 1)
    add("pal.png", pal, "PNG")
    add("deep.png", Image.fromarray(np.full((8, 8), 32896, np.uint16)), "PNG")  # 16-bit gray, half scale
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    rgba[0, 0, 3] = 0
    add("alpha.png", Image.fromarray(rgba, "RGBA"), "PNG")
    add("huge.png", Image.fromarray(np.zeros((100, 3000, 3), np.uint8)), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    add("rot.jpg", Image.fromarray(np.zeros((10, 20, 3), np.uint8)), "JPEG", exif=exif)
    rows.append({"image": "i/gray.png", "caption": "again", "id": "i/gray.png"})  # duplicate id
    _save(str(tmp_path / "outside.png"), _pixels(2))
    rows.append({"image": "../outside.png", "caption": "escape"})
    rows.append({"image": str(m / "i" / "gray.png"), "caption": "absolute"})
    os.symlink(str(tmp_path / "elsewhere.png"), m / "i" / "link.png")
    _save(str(tmp_path / "elsewhere.png"), _pixels(1))
    rows.append({"image": "i/link.png", "caption": "symlink out"})
    lines = [json.dumps(r) for r in rows] + ["not json", '{"image": 3, "caption": "x"}', ""]
    (m / "test.jsonl").write_text("\n".join(lines))

    builder, report = _build(Jsonl, m, tmp_path / "d")
    assert _problems(report, "test") == {
        "image_grayscale": 1, "image_cmyk": 1, "image_palette": 1, "image_16bit": 1, "image_alpha": 1,
        "image_resized": 1, "image_exif_rotated": 1, "duplicate_id": 1, "image_path_outside": 3, "bad_row": 2}
    recs = {_text(r["image_id"]): r["image"] for r in _records(builder, "test")}
    assert sorted(recs) == ["i/alpha.png", "i/cmyk.tif", "i/deep.png", "i/gray.png", "i/huge.png", "i/pal.png",
                            "i/rot.jpg"]
    assert (recs["i/gray.png"] == 77).all()
    assert (recs["i/cmyk.tif"] == [255, 255, 0]).all()  # yellow ink only
    assert tuple(recs["i/pal.png"][0, 0]) == (200, 100, 50) and tuple(recs["i/pal.png"][1, 1]) == (10, 20, 30)
    assert (recs["i/deep.png"] == 128).all()  # 32896 / 65535 * 255
    assert tuple(recs["i/alpha.png"][0, 0]) == (255, 255, 255)  # fully transparent -> white
    np.testing.assert_allclose(recs["i/alpha.png"][1, 1], [255, 127, 127], atol=1)  # half red over white
    assert recs["i/huge.png"].shape == (34, 1024, 3)  # 3000x100 -> 1024 x round(34.1)
    assert recs["i/rot.jpg"].shape == (20, 10, 3)  # upright

    # the same folder with absolute / outside paths allowed: those rows are written
    builder, report = _build(Jsonl, m, tmp_path / "d2", config="allow_absolute")
    assert "image_path_outside" not in _problems(report, "test")
    assert len(_records(builder, "test")) == 7 + 3


def test_nothing_usable_is_one_clear_error(tmp_path):
    m = tmp_path / "m"
    os.makedirs(m)
    (m / "train.jsonl").write_text(json.dumps({"image": "gone.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="no row of jsonl in .* could be used") as err:
        _build(Jsonl, m, tmp_path / "d")
    assert "image_missing" in str(err.value) and "gone.png" in str(err.value)


def test_an_unexpected_error_skips_only_its_row(tmp_path):
    def broken_loader():
        raise ValueError("boom in a decoder")

    b = Jsonl(data_dir=str(tmp_path))
    report = base.BuildReport("jsonl")
    assert b._example(base.Row("r1", broken_loader, ["a cap"]), "train", set(), report) is None
    assert report.splits["train"]["problems"]["row_error"]["examples"][0]["detail"] == "ValueError: boom in a decoder"
    ok = b._example(base.Row("r2", _jpeg(_pixels(0)), ["a cap"]), "train", set(), report)
    assert ok["image_id"] == "r2" and ok["captions"] == ["a cap"]


def test_prepare_image_limits():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(buf, format="JPEG")
    with pytest.raises(base.RowProblem) as err:
        base.prepare_image(buf.getvalue(), max_side=512, max_pixels=1999)
    assert err.value.kind == "image_too_large" and "2000 pixels" in err.value.detail
    data, notes = base.prepare_image(buf.getvalue(), max_side=512, max_pixels=2000)
    assert data == buf.getvalue() and notes == []  # untouched JPEG: stored as is
    with pytest.raises(base.RowProblem) as err:
        base.prepare_image(b"", max_side=512, max_pixels=10)
    assert err.value.kind == "image_corrupt"


def test_clean_captions():
    caps, notes = base.clean_captions(["  a  dog\n runs ", "a dog runs", "", b"na\xefve", "x" * 30], max_chars=20)
    assert caps == ["a dog runs", "naïve", "x" * 20]
    assert [k for k, _ in notes] == ["caption_whitespace", "caption_duplicate", "caption_empty",
                                     "caption_not_utf8", "caption_too_long"]


# ------------------------------------------------------------------ Karpathy splits


def _sent(raw):
    return {"tokens": raw.lower().split(), "raw": raw, "imgid": 0, "sentid": 0}


def test_flickr30k_karpathy_layout(tmp_path):
    m = tmp_path / "flickr"
    images = []
    for n, (fn, split) in enumerate([("1000092795.jpg", "train"), ("10002456.jpg", "train"),
                                     ("1000268201.jpg", "val"), ("1000344755.jpg", "test"),
                                     ("1000366164.jpg", "test"), ("missing.jpg", "train")]):
        if fn != "missing.jpg":
            _save(str(m / "flickr30k-images" / fn), _pixels(n), quality=95)
        images.append({"sentids": [5 * n + k for k in range(5)], "imgid": n, "split": split, "filename": fn,
                       "sentences": [_sent(f"Image {n} caption {k} .") for k in range(5)]})
    images[1]["sentences"] = [_sent(" "), _sent("")]  # no usable caption
    images.append(dict(images[0]))  # the same image listed twice
    images[2]["sentences"][0] = _sent("Caf@ on a corner .")
    raw = json.dumps({"images": images, "dataset": "flickr30k"}).encode().replace(b"Caf@", b"Caf\xe9")
    (m / "dataset_flickr30k.json").write_bytes(raw)  # one latin-1 byte in an otherwise UTF-8 file
    builder, report = _build(Flickr30k, m, tmp_path / "d")
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == \
        {"train": 1, "validation": 1, "test": 2}
    assert _problems(report, "train") == {"image_missing": 1, "no_caption": 1, "caption_empty": 2,
                                          "duplicate_id": 1}
    (test0, test1) = _records(builder, "test")
    assert _text(test0["image_id"]) == "1000344755" and _text(test1["image_id"]) == "1000366164"
    assert _caps(test0) == [f"Image 3 caption {k} ." for k in range(5)]
    assert _caps(_records(builder, "validation")[0])[0] == "Café on a corner ."
    assert _problems(report, "validation") == {"caption_not_utf8": 1}
    np.testing.assert_array_equal(
        test1["image"], np.asarray(Image.open(m / "flickr30k-images" / "1000366164.jpg").convert("RGB")))


def test_coco_karpathy_layout_with_restval(tmp_path):
    m = tmp_path / "coco"
    entries = [("val2014", "COCO_val2014_000000391895.jpg", 391895, "test"),
               ("val2014", "COCO_val2014_000000522418.jpg", 522418, "restval"),
               ("train2014", "COCO_train2014_000000318556.jpg", 318556, "train"),
               ("val2014", "COCO_val2014_000000184613.jpg", 184613, "val"),
               ("val2014", "COCO_val2014_000000060623.jpg", 60623, "test")]
    images = []
    for n, (fp, fn, cid, split) in enumerate(entries):
        path = _save(str(m / fp / fn), _pixels(n), quality=95)
        if cid == 60623:
            open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # corrupt
        images.append({"filepath": fp, "sentids": [n], "filename": fn, "imgid": n, "split": split,
                       "sentences": [_sent(f"coco {cid} a"), _sent(f"coco {cid} b")], "cocoid": cid})
    (m / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    builder, report = _build(CocoKarpathy, m, tmp_path / "d")
    ids = {s: [_text(r["image_id"]) for r in _records(builder, s)] for s in ("train", "validation", "test")}
    assert ids == {"train": ["522418", "318556"], "validation": ["184613"], "test": ["391895"]}
    assert _problems(report, "test") == {"image_corrupt": 1}
    assert _caps(_records(builder, "test")[0]) == ["coco 391895 a", "coco 391895 b"]


# ------------------------------------------------------------------ CC3M + img2dataset


def test_cc3m_tsv_with_img2dataset_files_and_webdataset(tmp_path):
    m = tmp_path / "cc3m"
    os.makedirs(m, exist_ok=True)
    urls = [f"http://example.com/img{i}.jpg" for i in range(8)]
    caps = [f"actor attends the premiere {i}" for i in range(8)]
    (m / "Train_GCC-training.tsv").write_text("".join(f"{c}\t{u}\n" for c, u in zip(caps[:6], urls[:6])))
    (m / "Validation_GCC-1.1.0-Validation.tsv").write_text(
        "caption\turl\n" + "".join(f"{c}\t{u}\n" for c, u in zip(caps[6:], urls[6:])) + "only one field\n")
    # img2dataset "files" output: rows 0, 2 of train; row 6 of validation
    for key, i in (("000000000", 0), ("000000002", 2), ("000000003", 6)):
        _save(str(m / "train_out" / "00000" / f"{key}.jpg"), _pixels(i), quality=95)
        (m / "train_out" / "00000" / f"{key}.json").write_text(json.dumps({"url": urls[i], "key": key,
                                                                            "status": "success"}))
    # img2dataset "webdataset" output: rows 3 and 5 in one shard
    os.makedirs(m / "wds", exist_ok=True)
    with tarfile.open(m / "wds" / "00001.tar", "w") as tar:
        for key, i in (("000010003", 3), ("000010005", 5)):
            for name, data in ((f"{key}.jpg", _jpeg(_pixels(i))), (f"{key}.txt", caps[i].encode()),
                               (f"{key}.json", json.dumps({"url": urls[i]}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    # a shard cut short by an interrupted download: the sample before the damage is kept, the cut one is
    # counted as a truncated image
    with tarfile.open(m / "wds" / "00002.tar", "w") as tar:
        for key, i in (("000020006", 6), ("000020007", 7)):
            data = _jpeg(_pixels(i, 64))
            for name, payload in ((f"{key}.json", json.dumps({"url": urls[i]}).encode()), (f"{key}.jpg", data)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    whole = (m / "wds" / "00002.tar").read_bytes()
    (m / "wds" / "00002.tar").write_bytes(whole[: whole.rindex(_jpeg(_pixels(7, 64))) + 300])
    builder, report = _build(Cc3m, m, tmp_path / "d")
    train = _records(builder, "train")
    assert [_text(r["image_id"]) for r in train] == ["train_0000000", "train_0000002", "train_0000003",
                                                     "train_0000005"]
    assert [_caps(r) for r in train] == [[caps[i]] for i in (0, 2, 3, 5)]
    np.testing.assert_array_equal(train[2]["image"], np.asarray(Image.open(io.BytesIO(_jpeg(_pixels(3))))))
    assert _problems(report, "train") == {"image_missing": 2}  # rows 1 and 4 were never downloaded
    assert _problems(report, "validation") == {"image_truncated": 1, "bad_row": 1}
    assert [_text(r["image_id"]) for r in _records(builder, "validation")] == ["validation_0000000"]


def _jpeg(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ------------------------------------------------------------------ the one data path and the CLI


def test_jsonl_feeds_the_grain_pipeline_and_cli(tmp_path, capsys):
    from fastslow_jax import cli
    from fastslow_jax.data import pipeline
    from tests.conftest import tiny_config

    m = tmp_path / "m"
    rows = []
    for i in range(8):
        _save(str(m / "im" / f"{i}.png"), _pixels(i, 64))
        rows.append({"image": f"im/{i}.png", "caption": [f"a red circle {i % 2}", "a blue square"]})
    for split in ("train", "test"):
        (m / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert cli.main(["data", "build", "jsonl", "--manual-dir", str(m), "--data-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "train: 8 rows read, 8 written, 0 skipped" in out and "jsonl: 8 train, 8 test examples" in out
    assert cli.main(["data", "build", "jsonl", "--manual-dir", str(tmp_path / "nope")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert cli.main(["data", "build", "flickr30k", "--manual-dir", str(tmp_path / "empty"),
                     "--data-dir", str(tmp_path / "d")]) == 1
    assert "is missing or empty (pass --manual-dir): put dataset_flickr30k.json" in capsys.readouterr().err

    cfg = tiny_config()
    with cfg.unlocked():
        cfg.data.name, cfg.data.data_dir = "jsonl", str(tmp_path / "d")
        cfg.train.batch_size = 4
    batch = pipeline.train_dataset(cfg, pipeline.make_tokenizer(cfg.data))[0]
    assert batch["image"].shape == (4, 64, 64, 3)
    pixels = {_pixels(i, 64).tobytes() for i in range(8)}
    assert all(img.tobytes() in pixels for img in batch["image"])
    ev = pipeline.EvalSplit(cfg.data, "test")
    assert ev.image_ids == [f"im/{i}.png" for i in range(8)] and len(ev.captions) == 16


def test_mixed_image_sizes_batch_with_data_image_size(tmp_path):
    """Real datasets have images of many sizes: data.image_size resizes (shorter side to 8/7 of it) and
    centre-crops each one, for training and evaluation alike."""
    from fastslow_jax.data import pipeline
    from tests.conftest import tiny_config

    m = tmp_path / "m"
    rows = []
    for i, (h, w) in enumerate([(40, 70), (90, 30), (32, 32), (200, 100)]):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., i % 3] = 50 + 40 * i  # one flat colour: unchanged by any resize
        img[:, : w // 8] = 255  # a white strip on the left that the centre crop removes when w > h
        _save(str(m / f"{i}.png"), img)
        rows.append({"image": f"{i}.png", "caption": f"colour {i}"})
    for split in ("train", "test"):
        (m / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = tiny_config()
    with cfg.unlocked():
        cfg.data.name, cfg.data.data_dir, cfg.data.manual_dir = "jsonl", str(tmp_path / "d"), str(m)
        cfg.data.image_size = 16
        cfg.train.batch_size = 4
    batch = pipeline.train_dataset(cfg, pipeline.make_tokenizer(cfg.data))[0]
    assert batch["image"].shape == (4, 16, 16, 3)
    ev = pipeline.EvalSplit(cfg.data, "test")
    images = ev.images([0, 1, 2, 3])
    assert images.shape == (4, 16, 16, 3)
    # image 0 (40x70): shorter side 40 -> 18, width 32; the centre 16 columns miss the 4-column strip
    expected0 = np.zeros(3, np.uint8)
    expected0[0] = 50
    assert (images[0] == expected0).all()
    assert (images[2][:, 2:] == [0, 0, 130]).all() and (images[2][:, 0] == 255).all()  # 32x32: strip kept
    stacked = np.concatenate([b[:n] for b, n in ev.image_batches(3)])
    np.testing.assert_array_equal(stacked, images)


# ------------------------------------------------------------------ VATEX: published JSON + clips or frames


def _write_clip(path, values, size=(32, 24), codec="mpeg4"):
    import av
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"qscale": "2"}
        for v in values:
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), v, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_vatex_clips_and_frames(tmp_path):
    from fastslow_jax.data import pipeline
    from fastslow_jax.data.builders.vatex import Vatex, sample_indices

    assert sample_indices(12, 4) == [1, 4, 7, 10] and sample_indices(5, 4) == [0, 1, 3, 4]
    assert sample_indices(3, 4) == [0, 1, 1, 2]
    m = tmp_path / "vatex"
    _write_clip(m / "clips" / "Ptf_2VRj-V0_000122_000132.mp4", [20 * i for i in range(12)])
    _write_clip(m / "clips" / "short_000001_000011.mp4", [30, 120, 210])
    (m / "clips").joinpath("corrupt_000000_000010.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"garbage" * 20)
    for i, v in enumerate([10, 60, 110, 160, 210]):
        _save(str(m / "frames" / "frames0_000005_000015" / f"{i + 1:06d}.png"),
              np.full((24, 32, 3) if i != 1 else (12, 16, 3), v, np.uint8))  # one sampled frame smaller
    caps = lambda v: [f"{v} caption {k}" for k in range(10)]  # noqa: E731
    entries = [{"videoID": v, "enCap": caps(v), "chCap": ["中文"] * 10}
               for v in ("Ptf_2VRj-V0_000122_000132", "short_000001_000011", "corrupt_000000_000010",
                         "frames0_000005_000015", "missing_000000_000010")]
    entries.append({"videoID": "../etc", "enCap": ["x"]})
    (m / "vatex_validation_v1.0.json").write_text(json.dumps(entries))
    builder, report = _build(Vatex, m, tmp_path / "d", config="t4")
    assert list(builder.info.splits) == ["validation"]
    assert _problems(report, "validation") == {"image_corrupt": 1, "image_missing": 1, "image_path_outside": 1,
                                               "video_short": 1, "video_frame_size": 1}
    recs = {_text(r["image_id"]): r for r in _records(builder, "validation")}
    for r in recs.values():  # TFDS returns the frames as a list; the pipeline's _decode_image stacks them
        r["image"] = pipeline._decode_image(r["image"])
    assert sorted(recs) == ["Ptf_2VRj-V0_000122_000132", "frames0_000005_000015", "short_000001_000011"]
    clip = recs["Ptf_2VRj-V0_000122_000132"]
    assert clip["image"].shape == (4, 24, 32, 3) and _caps(clip) == caps("Ptf_2VRj-V0_000122_000132")
    np.testing.assert_allclose(clip["image"].reshape(4, -1).mean(1), [20, 80, 140, 200], atol=6)
    np.testing.assert_allclose(recs["short_000001_000011"]["image"].reshape(4, -1).mean(1), [30, 120, 120, 210],
                               atol=6)
    frames = recs["frames0_000005_000015"]["image"]
    assert frames.shape == (4, 24, 32, 3)
    np.testing.assert_allclose(frames.reshape(4, -1).mean(1), [10, 60, 160, 210], atol=2)


# ------------------------------------------------------------------ emoji: npm tarballs' layout


def _split_by_rule(base):  # the rule, written out independently of the builder
    h = int(hashlib.sha1(base.upper().replace("-FE0F", "").encode()).hexdigest(), 16)
    return "test" if h % 5 == 0 else "validation" if h % 20 == 1 else "train"


def _write_emoji(m):
    """The three npm packages' layout with 3 concepts (1 test, 2 train, by the rule), skin tones, a hexcode
    written with FE0F, an image without a CLDR label, and a missing Twitter image."""
    pool = [f"1F{n:03X}" for n in range(0x300, 0x700)]
    test_base = next(c for c in pool if _split_by_rule(c) == "test")
    train_bases = [c for c in pool if _split_by_rule(c) == "train"][:2]
    labels, listing = [], []
    for k, code in enumerate([test_base, *train_bases]):
        skins = [{"label": f"thing {k}: light skin tone", "hexcode": f"{code}-1F3FB"}] if k != 2 else []
        labels.append({"label": f"thing {k}", "hexcode": code, "tags": [f"tag{k}", f"thing {k}"], "skins": skins})
        variations = {"1F3FB": {"unified": f"{code}-1F3FB", "image": f"{code.lower()}-1f3fb.png"}} if k != 2 else {}
        listing.append({"unified": code + "-FE0F" if k == 1 else code, "image": f"{code.lower()}.png",
                        "sort_order": k, "skin_variations": variations})
    listing.append({"unified": "1F9FF", "image": "1f9ff.png", "sort_order": 9})  # no CLDR label
    for vendor in ("google", "twitter"):
        root = m / f"emoji-datasource-{vendor}"
        os.makedirs(root / "img" / vendor / "64", exist_ok=True)
        (root / "emoji.json").write_text(json.dumps(listing))
        for n, e in enumerate(listing):
            for v in [e, *e.get("skin_variations", {}).values()]:
                rgba = np.zeros((64, 64, 4), np.uint8)
                rgba[16:48, 16:48] = [200, 10 * n, 100 if vendor == "google" else 0, 255]
                if v["image"] != f"{train_bases[1].lower()}.png" or vendor == "google":  # twitter one is missing
                    Image.fromarray(rgba, "RGBA").save(root / "img" / vendor / "64" / v["image"])
    os.makedirs(m / "emojibase-data" / "en")
    (m / "emojibase-data" / "en" / "data.json").write_text(json.dumps(labels))
    return test_base, train_bases


def test_emoji_layout_concept_split_and_captions(tmp_path):
    from fastslow_jax.data.builders.emoji import Emoji, concept_split, normalize_hexcode

    assert _split_by_rule("1F9FF") == "test"

    assert normalize_hexcode("263a-fe0f") == "263A" and normalize_hexcode("1F441-FE0F-200D-1F5E8-FE0F") == \
        "1F441-200D-1F5E8"
    m = tmp_path / "emoji"
    test_base, train_bases = _write_emoji(m)
    assert concept_split(test_base) == "test" and {concept_split(c) for c in train_bases} == {"train"}
    builder, report = _build(Emoji, m, tmp_path / "d", config="benchmark")
    test = _records(builder, "test")
    assert [_text(r["image_id"]) for r in test] == [f"google/{test_base}", f"google/{test_base}-1F3FB"]
    assert [_caps(r) for r in test] == [["thing 0"], ["thing 0: light skin tone"]]  # queries: CLDR labels only
    img = test[0]["image"]
    assert tuple(img[0, 0]) == (255, 255, 255) and tuple(img[32, 32]) == (200, 0, 100)  # on white
    train = {_text(r["image_id"]): _caps(r) for r in _records(builder, "train")}
    b1, b2 = train_bases
    assert sorted(train) == sorted([f"google/{b1}", f"google/{b1}-1F3FB", f"google/{b2}",
                                    f"twitter/{b1}", f"twitter/{b1}-1F3FB"])
    assert train[f"google/{b1}"] == ["thing 1", "tag1"]  # label, then keywords ("thing 1" repeated: dropped)
    assert train[f"twitter/{b1}-1F3FB"] == ["thing 1: light skin tone", "tag1", "thing 1"]
    # the twitter image of b2 is missing; "thing k" repeated among b1's and b2's keywords (both vendors)
    assert _problems(report, "train") == {"image_missing": 1, "caption_duplicate": 4}
    assert _problems(report, "test") == {"bad_row": 1}  # 1F9FF (a test concept by the rule) has no label
    # no concept of the fixture falls in validation: the split is left out and reported, the build goes on
    assert report.splits["validation"]["left_out"] and "validation" not in builder.info.splits
    assert "(no row written: the split is left out)" in base.format_report(report)
    assert "image_alpha" not in _problems(report, "test")  # transparency is expected here, not a defect


def test_emoji_configs_and_tiny_fast_run_end_to_end(tmp_path):
    """The emoji configs load (full: pretrained MiniLM + EfficientNet-Lite0), and the tiny Fast variant
    trains and evaluates on the fixture folder through `fastslow train` / `fastslow eval`."""
    from fastslow_jax import cli
    from fastslow_jax import config as config_lib
    from tests.conftest import CONFIGS

    for name in ("emoji_fast", "emoji_slow", "emoji_distill"):
        full = config_lib.load_config(os.path.join(CONFIGS, f"{name}.py"))
        assert full.data.name == "emoji/benchmark" and full.data.tokenizer == "minilm"
        assert full.model.vision.name == "efficientnet_lite0" and full.model.vision.pretrained == "efficientnet-lite0"
        if name != "emoji_slow":
            assert full.model.text.pretrained == "minilm"
    m = tmp_path / "emoji"
    _write_emoji(m)
    work = tmp_path / "run"
    args = [f"--config.data.manual_dir={m}", f"--config.data.data_dir={tmp_path / 'd'}"]
    assert cli.main(["train", "--config", os.path.join(CONFIGS, "emoji_fast.py:tiny"), "--workdir", str(work),
                     "--no-progress", *args]) == 0
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--workdir", str(work), "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    row = rows[0] if isinstance(rows, list) else rows
    assert row["gallery"] == 2  # the two google images of the test concept (base + skin tone)


def test_paper_configs_pretrain_on_cc3m_then_finetune_on_flickr30k(tmp_path):
    """paper_fast.py:cc3m_tiny trains on a CC3M fixture; :flickr30k_tiny starts from it (model.init_from):
    with lr 0 the fine-tuned weights equal the pretrained ones exactly."""
    import jax
    from fastslow_jax import cli
    from fastslow_jax import config as config_lib
    from fastslow_jax.train import loop
    from tests.conftest import CONFIGS

    for task in ("fast", "slow", "distill"):
        for ds in ("cc3m", "flickr30k", "coco"):
            full = config_lib.load_config(os.path.join(CONFIGS, f"paper_{task}.py:{ds}"))
            assert full.model.vision.name == "resnet50" and full.data.image_size == 224
    with pytest.raises(ValueError, match="takes one of"):
        config_lib.load_config(os.path.join(CONFIGS, "paper_fast.py:imagenet"))
    cc = tmp_path / "cc3m"
    rows = []
    for i in range(6):
        url = f"http://example.com/{i}.jpg"
        rows.append(f"caption number {i}\t{url}\n")
        _save(str(cc / "out" / "00000" / f"{i:09d}.jpg"), _pixels(i, 40), quality=95)
        (cc / "out" / "00000" / f"{i:09d}.json").write_text(json.dumps({"url": url}))
    (cc / "Train_GCC-training.tsv").write_text("".join(rows[:4]))
    (cc / "Validation_GCC-1.1.0-Validation.tsv").write_text("".join(rows[4:]))
    fl = tmp_path / "flickr"
    images = []
    for n, split in enumerate(["train", "train", "val", "test", "test"]):
        _save(str(fl / "flickr30k-images" / f"{n}.jpg"), _pixels(n, 48), quality=95)
        images.append({"filename": f"{n}.jpg", "split": split, "imgid": n,
                       "sentences": [_sent(f"photo {n} caption {k}") for k in range(2)]})
    (fl / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))
    common = [f"--config.data.data_dir={tmp_path / 'd'}", "--no-progress"]
    pre, fine = tmp_path / "cc3m_fast", tmp_path / "flickr_fast"
    assert cli.main(["train", "--config", os.path.join(CONFIGS, "paper_fast.py:cc3m_tiny"), "--workdir", str(pre),
                     f"--config.data.manual_dir={cc}", *common]) == 0
    assert cli.main(["train", "--config", os.path.join(CONFIGS, "paper_fast.py:flickr30k_tiny"), "--workdir",
                     str(fine), f"--config.data.manual_dir={fl}", f"--config.model.init_from={pre}",
                     "--config.optim.lr=0.0", "--config.train.steps=1", *common]) == 0
    (_, a), (_, b) = loop.load_trained(str(pre)), loop.load_trained(str(fine))
    leaves_a, leaves_b = jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
