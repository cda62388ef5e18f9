"""A procedural captioned scene data set: 32x32 RGB images of one or two shapes, each with a caption written
from its attributes, every example a pure function of (seed, split, index).

    "a small red circle at the top left"
    "a large blue square in the centre and a medium white triangle at the bottom right"

Each object has a shape (SHAPES), a colour (COLOURS), a size (SIZES: its half-extent r in pixels,
HALF_EXTENT) and a cell of the 3 x 3 grid (ROWS x COLS, named by POSITIONS), its centre jittered by whole
pixels within the cell; the objects of an image sit in different cells and never overlap. The renderer is
numpy: each pixel's coverage by a shape is measured on a 4 x 4 grid of sample points (antialiasing), and the
objects are painted in order over a black background.

Compositional split: the (shape, colour) pairs of HELD_OUT never appear in 'train'; every 'test' image has
exactly one object of a held-out pair (any other object has a training pair), so the test split measures
generalisation to new combinations of seen words. Ground truth is kept with every image: `objects` int32
[N, MAX_OBJECTS, 5] (OBJECT_FIELDS: shape, colour, size, row, col; -1 for an absent object) and `centres`
float32 [N, MAX_OBJECTS, 2] (y, x in pixels, y down). The label is the first object's pair index
shape * len(COLOURS) + colour.
"""

from __future__ import annotations

import re

import numpy as np

NAME = "shapes"
SPLITS = ("train", "test")
IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 220),
    "white": (245, 245, 245),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "medium", "large")
HALF_EXTENT = (2.5, 3.5, 4.5)  # r per size: the shape fills a box of side 2r (areas in `area`)
JITTER = (2, 1, 0)  # per size: the centre moves by up to this many whole pixels each way
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
CELL_CENTRES = (5.5, 16.5, 26.5)  # pixel centres; r + jitter <= 4.5, so neighbours' boxes keep a pixel apart
POSITIONS = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the centre", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)
HELD_OUT = (("circle", "blue"), ("square", "yellow"), ("triangle", "red"), ("diamond", "green"))
OBJECT_FIELDS = ("shape", "colour", "size", "row", "col")
MAX_OBJECTS = 2
NUM_CLASSES = len(SHAPES) * len(COLOURS)
SUPERSAMPLE = 4
_HELD_PAIRS = [(SHAPES.index(s), COLOUR_NAMES.index(c)) for s, c in HELD_OUT]
_TRAIN_PAIRS = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS)) if (s, c) not in _HELD_PAIRS]


def area(shape: int, size: int) -> float:
    """The shape's area in pixels at half-extent r: circle pi r^2, square 4 r^2, triangle and diamond 2 r^2."""
    r = HALF_EXTENT[size]
    return {"circle": np.pi * r * r, "square": 4 * r * r, "triangle": 2 * r * r, "diamond": 2 * r * r}[SHAPES[shape]]


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} of {NAME!r}; valid: {', '.join(SPLITS)}.")
    return SPLITS.index(split)


def example_attributes(seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(objects int32 [MAX_OBJECTS, 5], centres float32 [MAX_OBJECTS, 2]) of example `index`: its own stream
    np.random.default_rng((seed, split, index)), so an example never depends on the split's size."""
    rng = np.random.default_rng((seed, _check_split(split), index))
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    held = int(rng.integers(count)) if split == "test" else -1  # the object that gets a held-out pair
    cells = rng.choice(9, size=count, replace=False)
    objects = np.full((MAX_OBJECTS, len(OBJECT_FIELDS)), -1, np.int32)
    centres = np.full((MAX_OBJECTS, 2), np.nan, np.float32)
    for k in range(count):
        pairs = _HELD_PAIRS if k == held else _TRAIN_PAIRS
        shape, colour = pairs[int(rng.integers(len(pairs)))]
        size = int(rng.integers(len(SIZES)))
        row, col = divmod(int(cells[k]), 3)
        jitter = rng.integers(-JITTER[size], JITTER[size] + 1, size=2)
        objects[k] = (shape, colour, size, row, col)
        centres[k] = (CELL_CENTRES[row] + jitter[0], CELL_CENTRES[col] + jitter[1])
    return objects, centres


_LEVEL = (  # f(dy, dx, r): < 0 inside the shape of half-extent r centred at offset 0, 0 on its edge (y down)
    lambda dy, dx, r: dy * dy + dx * dx - r * r,  # circle
    lambda dy, dx, r: np.maximum(np.abs(dx), np.abs(dy)) - r,  # square
    lambda dy, dx, r: np.maximum(np.abs(dy) - r, np.abs(dx) - (dy + r) / 2),  # triangle: apex up, base 2r
    lambda dy, dx, r: np.abs(dx) + np.abs(dy) - r,  # diamond
)


def render(objects: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """uint8 [N, 32, 32, 3] images of objects [N, K, 5] at centres [N, K, 2]: per object, pixel = (1 - c) pixel
    + c colour, c its coverage of the pixel (fraction of 4 x 4 sample points inside, those on the edge half), over black."""
    n = len(objects)
    s = SUPERSAMPLE
    points = (np.arange(IMAGE_SIZE * s) + 0.5) / s  # sample coordinates; pixel (i, j) spans [i, i+1) x [j, j+1)
    image = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    for k in range(objects.shape[1]):
        shape, colour, size = objects[:, k, 0], objects[:, k, 1], objects[:, k, 2]
        present = shape >= 0
        r = np.where(present, np.asarray(HALF_EXTENT, np.float32)[size], 0.0)[:, None, None]
        dy = points[None, :, None] - np.nan_to_num(centres[:, k, 0])[:, None, None]
        dx = points[None, None, :] - np.nan_to_num(centres[:, k, 1])[:, None, None]
        inside = np.zeros((n, len(points), len(points)), np.float32)  # 1 inside, 1/2 on the edge, 0 outside
        for i, level in enumerate(_LEVEL):
            sel = shape == i
            inside[sel] = 0.5 * (1 - np.sign(level(dy[sel], dx[sel], r[sel])))
        cover = inside.reshape(n, IMAGE_SIZE, s, IMAGE_SIZE, s).mean(axis=(2, 4))[..., None]
        rgb = np.asarray(list(COLOURS.values()), np.float32)[np.maximum(colour, 0)][:, None, None, :]
        image = (1 - cover) * image + cover * rgb
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def generate(num: int, seed: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [num, 32, 32, 3], labels int32 [num], objects int32 [num, 2, 5], centres float32 [num, 2, 2])."""
    attributes = [example_attributes(seed, split, i) for i in range(num)]
    objects = np.stack([a[0] for a in attributes]) if num else np.zeros((0, MAX_OBJECTS, 5), np.int32)
    centres = np.stack([a[1] for a in attributes]) if num else np.zeros((0, MAX_OBJECTS, 2), np.float32)
    images = np.concatenate([render(objects[i : i + 256], centres[i : i + 256]) for i in range(0, max(num, 1), 256)])
    labels = (objects[:, 0, 0] * len(COLOURS) + objects[:, 0, 1]).astype(np.int32)
    return images[:num], labels, objects, centres


def caption(objects: np.ndarray) -> str:
    """'a SIZE COLOUR SHAPE POSITION' per present object of objects [K, 5], joined by ' and '."""
    parts = [
        f"a {SIZES[size]} {COLOUR_NAMES[colour]} {SHAPES[shape]} {POSITIONS[row][col]}"
        for shape, colour, size, row, col in np.asarray(objects).tolist()
        if shape >= 0
    ]
    return " and ".join(parts)


_OBJECT_RE = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOUR_NAMES)}) ({'|'.join(SHAPES)}) "
    rf"({'|'.join(p for row in POSITIONS for p in row)})"
)


def parse_caption(text: str) -> np.ndarray:
    """The objects int32 [MAX_OBJECTS, 5] that `caption` wrote as `text` (the inverse of caption; ValueError if none)."""
    objects = np.full((MAX_OBJECTS, len(OBJECT_FIELDS)), -1, np.int32)
    parts = text.split(" and ")
    if len(parts) > MAX_OBJECTS:
        raise ValueError(f"{text!r} names {len(parts)} objects; at most {MAX_OBJECTS}.")
    positions = [p for row in POSITIONS for p in row]
    for k, part in enumerate(parts):
        m = _OBJECT_RE.fullmatch(part)
        if m is None:
            raise ValueError(f"{part!r} is not 'a SIZE COLOUR SHAPE POSITION' of the shapes data set.")
        row, col = divmod(positions.index(m[4]), 3)
        objects[k] = (SHAPES.index(m[3]), COLOUR_NAMES.index(m[2]), SIZES.index(m[1]), row, col)
    return objects
