"""Tests for the `shapes` generator and its TFDS builder.

Captions are checked against the rendered pixels with a small independent parser: every caption must
name every object with its true size/colour/shape and determine every pairwise relation, and those
must match the object positions and colours found in the image.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from fastslow_jax.data import shapes

SPEC = shapes.ShapesSpec(num_train=300, num_val=80, num_test=120)

SIZE_WORDS = {"small", "large"}
COLOR_WORDS = set(shapes.COLORS)
SHAPE_WORDS = {"circle", "square", "triangle", "diamond"}
LEFT, RIGHT = {"left"}, {"right"}
UP, DOWN = {"above", "over", "upper"}, {"below", "under", "beneath", "lower"}


def _examples(spec: shapes.ShapesSpec, split: str) -> list[dict]:
    return list(shapes.generate_split(spec, split))


@pytest.fixture(scope="module")
def test_split() -> list[dict]:
    return _examples(SPEC, "test")


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


# ----------------------------------------------------------------------------------------------------
# An independent reading of captions.


def parse_caption(caption: str) -> tuple[list[tuple[str, str, str]], dict, tuple[int, int] | None]:
    """-> (objects as (shape, color, size), relations {(A, B): (sx, sy)}, cell of a lone object)."""
    tokens = caption.split()
    mentions, segments, current = [], [], []
    i = 0
    while i < len(tokens):
        if tokens[i] in ("a", "the", "one"):
            j = i + 1
            if j < len(tokens) and tokens[j] == "single":
                j += 1
            attrs = []
            while j < len(tokens) and tokens[j] in SIZE_WORDS | COLOR_WORDS:
                attrs.append(tokens[j])
                j += 1
            if j < len(tokens) and tokens[j] in SHAPE_WORDS:
                mentions.append((tokens[i], attrs, tokens[j]))
                segments.append(current)
                current = []
                i = j + 1
                continue
        current.append(tokens[i])
        i += 1
    segments.append(current)  # segments[k] precedes mention k; the last one follows the last mention

    objects: list[tuple[str, str, str]] = []
    resolved = []
    for article, attrs, shape in mentions:
        if article in ("a", "one"):  # a first mention is complete
            size = [w for w in attrs if w in SIZE_WORDS]
            color = [w for w in attrs if w in COLOR_WORDS]
            assert len(size) == 1 and len(color) == 1, caption
            obj = (shape, color[0], size[0])
            assert obj not in objects, f"object introduced twice: {caption}"
            objects.append(obj)
        else:  # "the ..." must refer to exactly one object introduced before
            matches = [o for o in objects if o[0] == shape and all(w in o for w in attrs)]
            assert len(matches) == 1, f"ambiguous or dangling reference in {caption!r}"
            obj = matches[0]
        resolved.append(obj)

    relations = {}
    for k in range(1, len(resolved)):
        seg = set(segments[k])
        if seg & (LEFT | RIGHT | UP | DOWN):
            sx = -1 if seg & LEFT else (1 if seg & RIGHT else 0)
            sy = -1 if seg & UP else (1 if seg & DOWN else 0)
            a, b = resolved[k - 1], resolved[k]
            assert (a, b) not in relations, caption
            relations[(a, b)] = (sx, sy)
            relations[(b, a)] = (-sx, -sy)
    cell = None
    if len(objects) == 1:
        tail = set(segments[-1])
        cell = (0 if "top" in tail else 2 if "bottom" in tail else 1,
                0 if "left" in tail else 2 if "right" in tail else 1)
    return objects, relations, cell


def _close(objects, relations):
    """Fills missing pairwise relations by transitivity; fails if one is not determined."""
    rel = dict(relations)
    for a, b in itertools.permutations(objects, 2):
        if (a, b) in rel:
            continue
        found = None
        for c in objects:
            if (a, c) in rel and (c, b) in rel:
                r1, r2 = rel[(a, c)], rel[(c, b)]
                axes = []
                for s, t in zip(r1, r2):
                    axes.append(t if s == 0 else s if t == 0 else s if s == t else None)
                if None not in axes:
                    found = tuple(axes)
        assert found is not None, f"relation {a} / {b} not determined"
        rel[(a, b)] = found
    return rel


def scene_facts_from_pixels(example, scene) -> tuple[list, dict, tuple[int, int]]:
    """Objects, relations and cells measured on the rendered image (centre pixel colour, x/y order)."""
    image, size = example["image"], example["image"].shape[0]
    cell_px = size / shapes.GRID
    found, centres = [], {}
    for obj in scene.objects:
        cx, cy, _ = shapes.object_geometry(obj, size)
        pixel = tuple(int(v) for v in image[int(cy), int(cx)])
        colors = [name for name, rgb in shapes.COLORS.items() if rgb == pixel]
        assert colors == [obj.color], f"pixel {pixel} at the centre of a {obj.phrase}"
        found.append(obj.attributes)
        centres[obj.attributes] = (cx, cy)
    rel = {}
    for a, b in itertools.permutations(found, 2):
        (ax, ay), (bx, by) = centres[a], centres[b]
        same_col = int(ax // cell_px) == int(bx // cell_px)
        same_row = int(ay // cell_px) == int(by // cell_px)
        rel[(a, b)] = (0 if same_col else _sign(ax - bx), 0 if same_row else _sign(ay - by))
    (cx, cy) = centres[found[0]]
    return found, rel, (int(cy // cell_px), int(cx // cell_px))


# ----------------------------------------------------------------------------------------------------


def test_vocabulary_and_caption_form(test_split):
    assert len(set(shapes.WORDS)) == len(shapes.WORDS)
    assert all(w.isalpha() and w.islower() for w in shapes.WORDS)
    for ex in test_split:
        assert len(ex["captions"]) == SPEC.captions_per_image
        assert len(set(ex["captions"])) == SPEC.captions_per_image  # paraphrases, not copies
        for caption in ex["captions"]:
            assert caption == caption.lower().strip()
            assert set(caption.split()) <= set(shapes.WORDS), caption


def test_counts_ids_and_images():
    for split, count in (("train", 300), ("validation", 80), ("test", 120)):
        examples = _examples(SPEC, split)
        assert len(examples) == count
        assert [e["image_id"] for e in examples] == [f"{split}_{i:06d}" for i in range(count)]
        for e in examples:
            assert e["image"].shape == (64, 64, 3) and e["image"].dtype == np.uint8
            assert e["num_objects"] in (1, 2, 3)
        assert {e["num_objects"] for e in examples} >= {2, 3}
    small = next(shapes.generate_split(shapes.ShapesSpec(image_size=32, num_test=4), "test"))
    assert small["image"].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="unknown split"):
        next(shapes.generate_split(SPEC, "dev"))


def _digest(spec: shapes.ShapesSpec, split: str) -> str:
    h = hashlib.sha256()
    for e in shapes.generate_split(spec, split):
        h.update(e["image_id"].encode() + e["image"].tobytes() + "|".join(e["captions"]).encode())
    return h.hexdigest()


def test_determinism_in_process_and_across_hash_seeds():
    spec = shapes.ShapesSpec(num_train=64, num_val=32, num_test=32)
    first = _digest(spec, "test")
    shapes._split_scenes.cache_clear()
    assert _digest(spec, "test") == first
    assert _digest(dataclasses.replace(spec, seed=1), "test") != first
    assert _digest(spec, "validation") != first
    # Python's hash() is salted per process; the data must not depend on it.
    code = (
        "import hashlib; from fastslow_jax.data import shapes; h = hashlib.sha256()\n"
        "for e in shapes.generate_split(shapes.ShapesSpec(num_train=64, num_val=32, num_test=32), 'test'):\n"
        "    h.update(e['image_id'].encode() + e['image'].tobytes() + '|'.join(e['captions']).encode())\n"
        "print(h.hexdigest())")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True,
                             capture_output=True, text=True).stdout.strip()
        assert out == first


def test_image_size_does_not_change_content():
    a = shapes.split_scenes(shapes.ShapesSpec(image_size=64, num_test=50), "test")
    b = shapes.split_scenes(shapes.ShapesSpec(image_size=96, num_test=50), "test")
    assert a == b


def test_canonical_keys_unique_within_split_and_disjoint_across():
    keys = {}
    for split in shapes.SPLITS:
        scenes = shapes.split_scenes(SPEC, split)
        split_keys = [shapes.canonical_key(s) for s in scenes]
        assert len(set(split_keys)) == len(split_keys), split
        keys[split] = set(split_keys)
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]


def test_captions_match_rendered_scene(test_split):
    scenes = shapes.split_scenes(SPEC, "test")
    assert len(scenes) == len(test_split)
    for ex, scene in zip(test_split, scenes):
        objects, true_rel, cell = scene_facts_from_pixels(ex, scene)
        for caption in ex["captions"]:
            said, said_rel, said_cell = parse_caption(caption)
            assert sorted(said) == sorted(objects), caption
            if len(objects) == 1:
                assert said_cell == cell, (caption, cell)
            else:
                assert _close(said, said_rel) == true_rel, caption


def test_left_of_matches_x_coordinates(test_split):
    scenes = shapes.split_scenes(SPEC, "test")
    checked = 0
    for ex, scene in zip(test_split, scenes):
        by_attr = {o.attributes: o for o in scene.objects}
        for caption in ex["captions"]:
            _, rel, _ = parse_caption(caption)
            for (a, b), (sx, sy) in rel.items():
                ax, ay, _ = shapes.object_geometry(by_attr[a], 64)
                bx, by, _ = shapes.object_geometry(by_attr[b], 64)
                if sx:
                    assert _sign(ax - bx) == sx and abs(ax - bx) > 10, caption
                if sy:
                    assert _sign(ay - by) == sy and abs(ay - by) > 10, caption
                checked += 1
    assert checked > 500


def test_object_sizes_visible_in_pixels(test_split):
    scenes = shapes.split_scenes(SPEC, "test")
    areas = collections.defaultdict(list)
    for ex, scene in zip(test_split, scenes):
        for obj in scene.objects:
            c = 64 / 3
            patch = ex["image"][int(obj.row * c):int((obj.row + 1) * c),
                                int(obj.col * c):int((obj.col + 1) * c)]
            areas[obj.size].append(int(np.all(patch == shapes.COLORS[obj.color], axis=-1).sum()))
    assert min(areas["large"]) > max(areas["small"]) > 0


def test_confuser_families_exist():
    scenes = shapes.split_scenes(SPEC, "test")
    by_bag = collections.defaultdict(list)
    by_marginals = collections.defaultdict(set)
    for s in scenes:
        by_bag[shapes.attribute_bag(s)].append(s)
        marginals = tuple(sorted(getattr(o, f) for o in s.objects) for f in ("shape", "color", "size"))
        by_marginals[str(marginals)].add(shapes.attribute_bag(s))
    # Relation confusers: same (shape, colour, size) triples, different layout (relations or cell).
    relation_groups = [g for g in by_bag.values() if len(g) > 1]
    assert sum(len(g) for g in relation_groups) >= 0.2 * len(scenes)
    # Binding confusers: same colours, shapes and sizes overall, bound differently to objects.
    binding_groups = [bags for bags in by_marginals.values() if len(bags) > 1]
    assert len(binding_groups) >= 10
    # Every image of a relation group differs from the others in what its captions say.
    for group in relation_groups:
        assert len({shapes.canonical_key(s) for s in group}) == len(group)


def test_variant_transforms():
    rng = np.random.default_rng(0)
    scene = shapes.Scene((
        shapes.ShapeObject("circle", "red", "small", row=1, col=0),
        shapes.ShapeObject("square", "blue", "large", row=1, col=2),
    ))
    mirrored = shapes.make_variant(scene, "mirror_lr", rng)
    assert shapes.attribute_bag(mirrored) == shapes.attribute_bag(scene)
    assert shapes.canonical_key(mirrored) != shapes.canonical_key(scene)
    swapped = shapes.make_variant(scene, "swap_color", rng)
    assert {o.attributes for o in swapped.objects} == {("circle", "blue", "small"),
                                                        ("square", "red", "large")}
    caps = shapes.describe(scene, np.random.default_rng(0), 5)
    assert any(c.startswith("a small red circle") and "left of" in c for c in caps) or any(
        "right of a small red circle" in c for c in caps)


def test_tfds_tiny_round_trip(tmp_path):
    from fastslow_jax.data.builders.shapes import Shapes

    builder = Shapes(config="tiny", data_dir=str(tmp_path))
    builder.download_and_prepare(file_format="array_record")
    spec = builder.builder_config.spec
    assert (spec.num_train, spec.num_val, spec.num_test) == (256, 64, 64)
    for split, count in (("train", 256), ("validation", 64), ("test", 64)):
        assert len(builder.as_data_source(split)) == count
    source = builder.as_data_source("test")
    for i, expected in enumerate(shapes.generate_split(spec, "test")):
        got = source[i]
        # Text features come back as bytes from as_data_source.
        assert got["image_id"] == expected["image_id"].encode()
        assert got["image"].dtype == np.uint8
        np.testing.assert_array_equal(got["image"], expected["image"])
        assert [c.decode() for c in got["captions"]] == expected["captions"]
        assert int(got["num_objects"]) == expected["num_objects"]
