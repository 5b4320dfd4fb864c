"""`shapes`: a hermetic, procedurally generated text-to-image retrieval dataset.

What the data contains
----------------------
Every image is a small RGB picture (default 64x64, uint8) of 1 to 3 flat-coloured objects on a plain
dark background (with a slight colour jitter). Each object has three attributes:

* shape: circle, square, triangle or diamond;
* color: red, green, blue, yellow, purple or white;
* size:  small or large.

Objects sit in distinct cells of a 3x3 grid (with a small position jitter inside the cell, never
overlapping), and no two objects of a scene share all three attributes. Each image comes with several
captions (default 5), all lower case and drawn from the fixed vocabulary `WORDS`, for example::

    a large red circle in the top left                                     (1 object)
    a small red circle left of a large blue square                         (2 objects)
    a large blue square to the right of a small red circle
    a small green triangle is above and to the left of a large white diamond and the diamond is
        below a small purple circle                                        (3 objects)

Caption semantics (the dataset's convention)
--------------------------------------------
Every caption is a *complete* description of its scene at the level captions describe: it names the
size, colour and shape of every object and pins down the relative position of every pair of objects
on the grid. A relation names both axes: "left of" means "strictly left, in the same row", "above"
means "strictly above, in the same column", and diagonal placements are "above and to the left of",
"to the lower right of", ... For three objects a caption states two relations and adds the third
whenever it does not follow by transitivity. A one-object caption names the object's cell
("in the top left", "at the bottom", "in the center", ...). Re-mentions may use the shortest unique
reference ("the diamond", "the red square"). All captions of an image therefore carry the same
*canonical key* (`canonical_key`), and keys are unique within a split, so a caption is true of
exactly one image of its split. By default, validation keys never occur in test and neither occurs in
train, so evaluation measures composition rather than memorised scenes.

Why it is hard for a pooled dual encoder
----------------------------------------
Scenes are generated in small *families*: a random base scene plus 1..`max_variants` confusers made by
swapping the colours, sizes, shapes or cells of two objects (attribute binding), or by mirroring the
scene left<->right or top<->bottom (relation flip). The confusers go into the same split, next to the
base (subject to key uniqueness), so a gallery holds many images with the same bag of attributes and
different bindings or relations. A model that pools image and text into bags of features ("red",
"circle", "large", "left") cannot tell them apart; retrieving the right image needs binding of
attributes to objects and spatial relations, which is what fine-grained cross-attention (Slow) offers.

Determinism
-----------
Everything is a pure function of `(ShapesSpec, split)`: the random generator is seeded from a SHA-256
of `(seed, split)` (never Python's `hash()`), and scene content does not depend on `image_size`.
Generating the 20k-image train split takes a few seconds on one core.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------------
# Attributes and their rendering.

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

# Well separated, saturated colours; all far from the dark background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 195, 65),
    "blue": (45, 95, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 220),
    "white": (240, 240, 240),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

SIZES: tuple[str, ...] = ("small", "large")
# Object "radius" as a fraction of the grid cell side.
SIZE_FRACTION: dict[str, float] = {"small": 0.22, "large": 0.40}
# Free space kept between an object and its cell border, as a fraction of the cell side.
_CELL_MARGIN = 0.06

BACKGROUND_BASE: tuple[int, int, int] = (28, 28, 32)
BACKGROUND_JITTER = 10  # each channel in [base - jitter, base + jitter]

GRID = 3  # the grid is GRID x GRID cells; row 0 is the top, column 0 the left.

# ----------------------------------------------------------------------------------------------------
# Language.

# Relation phrases keyed by (sx, sy): the sign of (column of A - column of B) and of (row of A - row
# of B), for a caption "A <phrase> B". Rows grow downwards, so sy = -1 means A is above B.
RELATION_PHRASES: dict[tuple[int, int], tuple[str, ...]] = {
    (-1, 0): ("left of", "to the left of", "on the left of"),
    (1, 0): ("right of", "to the right of", "on the right of"),
    (0, -1): ("above", "over"),
    (0, 1): ("below", "under", "beneath"),
    (-1, -1): ("above and to the left of", "to the upper left of", "left of and above"),
    (1, -1): ("above and to the right of", "to the upper right of", "right of and above"),
    (-1, 1): ("below and to the left of", "to the lower left of", "left of and below"),
    (1, 1): ("below and to the right of", "to the lower right of", "right of and below"),
}

# Position phrases for one-object scenes, keyed by (row, col).
POSITION_PHRASES: dict[tuple[int, int], tuple[str, ...]] = {
    (0, 0): ("in the top left", "in the top left corner", "at the top left"),
    (0, 1): ("at the top", "in the top middle", "at the top center"),
    (0, 2): ("in the top right", "in the top right corner", "at the top right"),
    (1, 0): ("on the left", "on the left side", "at the left"),
    (1, 1): ("in the center", "in the middle"),
    (1, 2): ("on the right", "on the right side", "at the right"),
    (2, 0): ("in the bottom left", "in the bottom left corner", "at the bottom left"),
    (2, 1): ("at the bottom", "in the bottom middle", "at the bottom center"),
    (2, 2): ("in the bottom right", "in the bottom right corner", "at the bottom right"),
}

_FUNCTION_WORDS = ("a", "the", "there", "is", "and", "while", "with", "where", "single", "one")


def _vocabulary() -> tuple[str, ...]:
    words: list[str] = []
    phrases = [*SHAPES, *COLOR_NAMES, *SIZES, *_FUNCTION_WORDS]
    phrases += [p for ps in RELATION_PHRASES.values() for p in ps]
    phrases += [p for ps in POSITION_PHRASES.values() for p in ps]
    for phrase in phrases:
        for w in phrase.split():
            if w not in words:
                words.append(w)
    return tuple(words)


#: Every word any caption may use (build a WordPiece vocabulary from these).
WORDS: tuple[str, ...] = _vocabulary()

SPLITS: tuple[str, ...] = ("train", "validation", "test")

# ----------------------------------------------------------------------------------------------------
# Scenes.


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One object: attributes, grid cell, and jitter (in [-1, 1], scaled by the free space in the cell)."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    jx: float = 0.0
    jy: float = 0.0

    @property
    def attributes(self) -> tuple[str, str, str]:
        return (self.shape, self.color, self.size)

    @property
    def phrase(self) -> str:
        """The full noun phrase, e.g. "small red circle"."""
        return f"{self.size} {self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int] = BACKGROUND_BASE

    @property
    def num_objects(self) -> int:
        return len(self.objects)


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
    """Everything that determines the dataset. Scene content does not depend on `image_size`."""

    image_size: int = 64
    num_train: int = 20000
    num_val: int = 1000
    num_test: int = 1000
    captions_per_image: int = 5
    seed: int = 0
    # Relative frequency of *base* scenes with 1, 2, 3 objects (renormalised). Three-object scenes
    # have more confusers per family, and a count whose distinct scenes run out inside a split
    # stops being drawn (there are only 432 one-object scenes), so images end up roughly 2% / 30% /
    # 68% for the default spec.
    object_count_weights: tuple[float, float, float] = (0.1, 0.45, 0.45)
    # Each base scene brings 1..max_variants confusers (0 disables families).
    max_variants: int = 3
    # Keys of validation never occur in test, keys of validation/test never occur in train.
    disjoint_splits: bool = True

    def num_examples(self, split: str) -> int:
        _check_split(split)
        return {"train": self.num_train, "validation": self.num_val, "test": self.num_test}[split]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"shapes: unknown split {split!r}; expected one of {', '.join(SPLITS)}.")


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def relation(a: ShapeObject, b: ShapeObject) -> tuple[int, int]:
    """(sx, sy) of object `a` relative to `b`: -1 = left/above, 0 = same column/row, 1 = right/below."""
    return (_sign(a.col - b.col), _sign(a.row - b.row))


def canonical_key(scene: Scene) -> tuple:
    """What every caption of `scene` says: attributes of all objects + all pairwise relations
    (the cell for a single object). Two scenes with equal keys are indistinguishable by captions."""
    objs = sorted(scene.objects, key=lambda o: o.attributes)
    attrs = tuple(o.attributes for o in objs)
    if len(objs) == 1:
        return (attrs, (objs[0].row, objs[0].col))
    rels = tuple(relation(a, b) for a, b in itertools.combinations(objs, 2))
    return (attrs, rels)


def attribute_bag(scene: Scene) -> tuple[tuple[str, str, str], ...]:
    """The sorted bag of (shape, color, size) triples: what a bag-of-words model could see."""
    return tuple(sorted(o.attributes for o in scene.objects))


def _valid(scene: Scene) -> bool:
    attrs = [o.attributes for o in scene.objects]
    cells = [(o.row, o.col) for o in scene.objects]
    return len(set(attrs)) == len(attrs) and len(set(cells)) == len(cells)


def random_scene(rng: np.random.Generator, num_objects: int) -> Scene:
    """A random scene with `num_objects` objects in distinct cells with distinct attribute triples."""
    cells = rng.choice(GRID * GRID, size=num_objects, replace=False)
    objects: list[ShapeObject] = []
    seen: set[tuple[str, str, str]] = set()
    for cell in cells:
        while True:
            attrs = (
                SHAPES[rng.integers(len(SHAPES))],
                COLOR_NAMES[rng.integers(len(COLOR_NAMES))],
                SIZES[rng.integers(len(SIZES))],
            )
            if attrs not in seen:
                break
        seen.add(attrs)
        jx, jy = rng.uniform(-1.0, 1.0, size=2)
        objects.append(ShapeObject(*attrs, row=int(cell) // GRID, col=int(cell) % GRID,
                                   jx=round(float(jx), 4), jy=round(float(jy), 4)))
    background = tuple(
        int(c) for c in np.asarray(BACKGROUND_BASE)
        + rng.integers(-BACKGROUND_JITTER, BACKGROUND_JITTER + 1, size=3))
    return Scene(tuple(objects), background)  # type: ignore[arg-type]


# Confuser transforms. Each returns a new scene, or None where it does not apply.

def _swap_attr(scene: Scene, i: int, j: int, field: str) -> Scene | None:
    a, b = scene.objects[i], scene.objects[j]
    if field == "cell":
        na = dataclasses.replace(a, row=b.row, col=b.col, jx=b.jx, jy=b.jy)
        nb = dataclasses.replace(b, row=a.row, col=a.col, jx=a.jx, jy=a.jy)
    else:
        if getattr(a, field) == getattr(b, field):
            return None
        na = dataclasses.replace(a, **{field: getattr(b, field)})
        nb = dataclasses.replace(b, **{field: getattr(a, field)})
    objs = list(scene.objects)
    objs[i], objs[j] = na, nb
    out = dataclasses.replace(scene, objects=tuple(objs))
    return out if _valid(out) else None


def _mirror(scene: Scene, horizontal: bool) -> Scene:
    if horizontal:
        objs = [dataclasses.replace(o, col=GRID - 1 - o.col, jx=-o.jx) for o in scene.objects]
    else:
        objs = [dataclasses.replace(o, row=GRID - 1 - o.row, jy=-o.jy) for o in scene.objects]
    return dataclasses.replace(scene, objects=tuple(objs))


VARIANT_KINDS: tuple[str, ...] = (
    "swap_color", "swap_size", "swap_shape", "swap_cell", "mirror_lr", "mirror_tb")


def make_variant(scene: Scene, kind: str, rng: np.random.Generator) -> Scene | None:
    """A confuser of `scene`: same bag of colours/shapes/sizes, different binding or relations."""
    if kind == "mirror_lr":
        return _mirror(scene, horizontal=True)
    if kind == "mirror_tb":
        return _mirror(scene, horizontal=False)
    n = scene.num_objects
    if n < 2:
        return None
    i, j = (int(k) for k in rng.choice(n, size=2, replace=False))
    field = {"swap_color": "color", "swap_size": "size", "swap_shape": "shape",
             "swap_cell": "cell"}[kind]
    return _swap_attr(scene, i, j, field)


# ----------------------------------------------------------------------------------------------------
# Rendering.


def object_geometry(obj: ShapeObject, image_size: int) -> tuple[float, float, float]:
    """(cx, cy, radius) in pixels; the object lies within its cell, inside the margin."""
    cell = image_size / GRID
    radius = SIZE_FRACTION[obj.size] * cell
    free = max(0.0, cell / 2 - radius - _CELL_MARGIN * cell)
    cx = (obj.col + 0.5) * cell + obj.jx * free
    cy = (obj.row + 0.5) * cell + obj.jy * free
    return cx, cy, radius


def render(scene: Scene, image_size: int = 64) -> np.ndarray:
    """Draws `scene` as a uint8 array [image_size, image_size, 3]."""
    img = Image.new("RGB", (image_size, image_size), tuple(scene.background))
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        cx, cy, r = object_geometry(obj, image_size)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            h = 0.82 * r
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + 0.95 * r, cy + 0.8 * r), (cx - 0.95 * r, cy + 0.8 * r)],
                         fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:
            raise ValueError(f"shapes: unknown shape {obj.shape!r}")
    return np.array(img, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------
# Captions.


def _short_reference(obj: ShapeObject, scene: Scene) -> str:
    """The shortest noun phrase that identifies `obj` among the scene's objects."""
    candidates = (
        (obj.shape,),
        (obj.color, obj.shape),
        (obj.size, obj.shape),
        (obj.size, obj.color, obj.shape),
    )
    others = [o for o in scene.objects if o is not obj]
    for words in candidates:
        if not any(all(w in (o.shape, o.color, o.size) for w in words) for o in others):
            return " ".join(words)
    return obj.phrase


class _Mentions:
    """Tracks which objects were already introduced in a caption: "a <full>" then "the <ref>"."""

    def __init__(self, scene: Scene, short: bool):
        self.scene, self.short, self.seen = scene, short, set()

    def __call__(self, obj: ShapeObject) -> str:
        if id(obj) in self.seen:
            return "the " + (_short_reference(obj, self.scene) if self.short else obj.phrase)
        self.seen.add(id(obj))
        return "a " + obj.phrase


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _clause(a: ShapeObject, b: ShapeObject, rng: np.random.Generator) -> tuple[ShapeObject, str,
                                                                                ShapeObject]:
    """A relation clause between `a` and `b` in a random direction."""
    if rng.random() < 0.5:
        a, b = b, a
    return a, _pick(rng, RELATION_PHRASES[relation(a, b)]), b


def _caption_one(scene: Scene, rng: np.random.Generator) -> str:
    (obj,) = scene.objects
    where = _pick(rng, POSITION_PHRASES[(obj.row, obj.col)])
    template = int(rng.integers(5))
    if template == 0:
        return f"a {obj.phrase} {where}"
    if template == 1:
        return f"there is a {obj.phrase} {where}"
    if template == 2:
        return f"a single {obj.phrase} {where}"
    if template == 3:
        return f"one {obj.phrase} {where}"
    return f"a {obj.phrase} is {where}"


def _caption_many(scene: Scene, rng: np.random.Generator) -> str:
    objs = list(scene.objects)
    order = [objs[int(k)] for k in rng.permutation(len(objs))]
    # A chain of relations order[0]-order[1]-order[2], plus order[0]-order[2] when the chain does not
    # determine it on both axes (e.g. both left of the middle object).
    pairs = list(zip(order, order[1:]))
    if len(order) == 3:
        r01, r12 = relation(order[0], order[1]), relation(order[1], order[2])
        implied = all(s == 0 or t == 0 or s == t for s, t in zip(r01, r12))
        if not implied:
            pairs.append((order[0], order[2]))
    clauses = [_clause(a, b, rng) for a, b in pairs]
    if rng.random() < 0.3:
        # Introduce all objects first, then relate them with short references:
        # "a X and a Y [and a Z] where the X is left of the Y ..." / "... with the X left of the Y ...".
        mention = _Mentions(scene, short=True)
        intro = " and ".join(mention(o) for o in order)
        glue = _pick(rng, ("where", "with"))
        copula = " is" if glue == "where" else ""
        body = " and ".join(f"{mention(a)}{copula} {phrase} {mention(b)}" for a, phrase, b in clauses)
        return f"{intro} {glue} {body}"
    # A chain of clauses: "[there is] a X [is] left of a Y and the Y is above a Z ...".
    mention = _Mentions(scene, short=bool(rng.random() < 0.5))
    prefix = _pick(rng, ("", "", "there is "))
    first_copula = " is" if (not prefix and rng.random() < 0.5) else ""
    parts = []
    for k, (a, phrase, b) in enumerate(clauses):
        if k == 0:
            parts.append(f"{prefix}{mention(a)}{first_copula} {phrase} {mention(b)}")
        else:
            parts.append(f"{_pick(rng, ('and', 'while'))} {mention(a)} is {phrase} {mention(b)}")
    return " ".join(parts)


def describe(scene: Scene, rng: np.random.Generator, num_captions: int = 5) -> list[str]:
    """`num_captions` captions of `scene`, distinct where the templates allow. Each is complete:
    it gives every object's size, colour and shape, and determines every pairwise relation."""
    make = _caption_one if scene.num_objects == 1 else _caption_many
    captions: list[str] = []
    for _ in range(20 * num_captions):
        if len(captions) == num_captions:
            break
        c = make(scene, rng)
        if c not in captions:
            captions.append(c)
    while len(captions) < num_captions:  # templates exhausted: repeat (does not happen in practice)
        captions.append(make(scene, rng))
    return captions


# ----------------------------------------------------------------------------------------------------
# Splits.


def split_rng(seed: int, split: str, purpose: str = "scenes") -> np.random.Generator:
    """A generator seeded from SHA-256 of (seed, split, purpose): stable across runs and machines."""
    digest = hashlib.sha256(f"fastslow_jax.shapes/{seed}/{split}/{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


_EXCLUDED_BY = {"test": (), "validation": ("test",), "train": ("validation", "test")}


@functools.lru_cache(maxsize=16)
def _split_scenes(seed: int, split: str, count: int, weights: tuple[float, ...], max_variants: int,
                  excluded: frozenset) -> tuple[Scene, ...]:
    rng = split_rng(seed, split)
    used: set = set(excluded)
    scenes: list[Scene] = []
    counts = [n for n, w in zip((1, 2, 3), weights) if w > 0]
    probs = np.array([w for w in weights if w > 0], dtype=np.float64)
    failures = dict.fromkeys(counts, 0)
    while len(scenes) < count:
        if not counts:
            raise ValueError(
                f"shapes: split {split!r} asks for {count} scenes but the distinct scenes ran out "
                f"after {len(scenes)}; lower the count or change object_count_weights.")
        n = counts[int(rng.choice(len(counts), p=probs / probs.sum()))]
        base = random_scene(rng, n)
        key = canonical_key(base)
        if key in used:
            failures[n] += 1
            if failures[n] >= 50:  # this object count is saturated in this split: stop drawing it
                k = counts.index(n)
                counts.pop(k)
                probs = np.delete(probs, k)
            continue
        failures[n] = 0
        used.add(key)
        family = [base]
        if max_variants > 0:
            kinds = [k for k in VARIANT_KINDS if n >= 2 or k.startswith("mirror")]
            num = int(rng.integers(1, max_variants + 1))
            for kind in rng.permutation(kinds)[:num]:
                variant = make_variant(base, str(kind), rng)
                if variant is None:
                    continue
                vkey = canonical_key(variant)
                if vkey in used:
                    continue
                used.add(vkey)
                family.append(variant)
        scenes.extend(family[: count - len(scenes)])
    order = rng.permutation(len(scenes))
    return tuple(scenes[int(i)] for i in order)


def split_scenes(spec: ShapesSpec, split: str) -> tuple[Scene, ...]:
    """The scenes of `split`, in order (cached). Deterministic from (spec.seed, split)."""
    _check_split(split)
    excluded: set = set()
    if spec.disjoint_splits:
        for other in _EXCLUDED_BY[split]:
            excluded.update(canonical_key(s) for s in split_scenes(spec, other))
    return _split_scenes(spec.seed, split, spec.num_examples(split),
                         tuple(float(w) for w in spec.object_count_weights), spec.max_variants,
                         frozenset(excluded))


def generate_split(spec: ShapesSpec, split: str) -> Iterator[dict]:
    """Yields the examples of `split` in a deterministic order, exactly `spec.num_examples(split)`:
    {"image_id": "test_000042", "image": uint8 [S, S, 3], "captions": list[str], "num_objects": int}.
    """
    scenes = split_scenes(spec, split)
    rng = split_rng(spec.seed, split, "captions")
    for i, scene in enumerate(scenes):
        yield {
            "image_id": f"{split}_{i:06d}",
            "image": render(scene, spec.image_size),
            "captions": describe(scene, rng, spec.captions_per_image),
            "num_objects": scene.num_objects,
        }
