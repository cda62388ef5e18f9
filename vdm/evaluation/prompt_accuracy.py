"""Prompt accuracy of images against their captions (GenEval-style, Ghosh et al. 2023), on the `shapes` data set.

    report = prompt_accuracy(samples, prompts, classifier)   # classifier(uint8 [N, 32, 32, 3]) -> objects [N, M, 5]
    report["held_out"]["overall"]   # {'accuracy', 'se', 'n'}

Objects are int32 rows (shape, colour, size, row, col) of vdm.data.shapes.OBJECT_FIELDS, -1 for none. The truth
is `shapes.parse_caption(prompt)`; the prediction is what an attribute classifier reads off the image (any number
of objects, at most one per cell of the 3 x 3 grid for the per-cell classifier). Each true object is matched to at
most one predicted object (`match_objects`): the one-to-one assignment with the most agreeing attributes (shape,
colour, size, position = the cell), ties to the most positions, then to the first in order, so a red circle drawn
in the wrong cell still counts for its shape and colour. Then per true object, shape / colour / size / position:
the matched object has it (no match: wrong); per prompt, count: as many predicted objects as true ones; overall:
the count and every attribute of every object right. Each accuracy p over n units has the binomial standard
error sqrt(p (1 - p) / n). A prompt is held out if any of its objects has a pair of shapes.HELD_OUT (the test
split's images all are, the train split's none); the report has 'all', 'seen' and 'held_out'.

Everything here is numpy over attribute arrays; the classifier is any callable (vdm.tasks.attribute_task loads
the trained one).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from vdm.core import encoding
from vdm.data import shapes

NUM_CELLS = len(shapes.ROWS) * len(shapes.COLS)
OBJECT_ATTRIBUTES = ("shape", "colour", "size", "position")  # per true object
PROMPT_ATTRIBUTES = ("count", "overall")  # per prompt
ATTRIBUTES = OBJECT_ATTRIBUTES + PROMPT_ATTRIBUTES
GROUPS = ("all", "seen", "held_out")
Classifier = Callable[[np.ndarray], np.ndarray]  # uint8 images [N, H, W, 3] -> predicted objects int32 [N, M, 5]


def objects_to_cells(objects: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cell targets int32 [N, 9] of objects [N, K, 5] (cell = 3 row + col): 'present' 0/1, and 'shape',
    'colour', 'size' of the cell's object (-1 where empty). ValueError if two objects share a cell."""
    objects = np.asarray(objects, np.int32)
    n = len(objects)
    out = {"present": np.zeros((n, NUM_CELLS), np.int32)}
    out |= {k: np.full((n, NUM_CELLS), -1, np.int32) for k in ("shape", "colour", "size")}
    for k in range(objects.shape[1]):
        rows = np.flatnonzero(objects[:, k, 0] >= 0)
        cell = objects[rows, k, 3] * len(shapes.COLS) + objects[rows, k, 4]
        if np.any(out["present"][rows, cell]):
            raise ValueError("two objects of one image share a cell; the per-cell targets need one object per cell.")
        out["present"][rows, cell] = 1
        for field, name in enumerate(("shape", "colour", "size")):
            out[name][rows, cell] = objects[rows, k, field]
    return out


def cells_to_objects(present: np.ndarray, shape: np.ndarray, colour: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Objects int32 [N, 9, 5] of per-cell predictions [N, 9] (present bool/0-1; the rest class indices): row c is
    the object in cell c (row, col = divmod(c, 3)), or all -1 where the cell is empty."""
    present = np.asarray(present).astype(bool)
    n = present.shape[0]
    row, col = np.divmod(np.arange(NUM_CELLS), len(shapes.COLS))
    fields = [shape, colour, size, np.broadcast_to(row, (n, NUM_CELLS)), np.broadcast_to(col, (n, NUM_CELLS))]
    objects = np.stack([np.asarray(f, np.int32) for f in fields], axis=-1)
    return np.where(present[..., None], objects, -1).astype(np.int32)


def is_held_out(objects: np.ndarray) -> np.ndarray:
    """bool [N]: whether any present object of objects [N, K, 5] has a (shape, colour) pair of shapes.HELD_OUT."""
    objects = np.asarray(objects)
    held = np.zeros(objects.shape[:2], bool)
    for s, c in shapes.HELD_OUT:
        held |= (objects[..., 0] == shapes.SHAPES.index(s)) & (objects[..., 1] == shapes.COLOUR_NAMES.index(c))
    return held.any(axis=1)


def _agreement(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """bool [N, K, M, 4]: per true object k and predicted object m, shape, colour, size and cell equal."""
    t, p = true[:, :, None, :], predicted[:, None, :, :]
    same_cell = (t[..., 3] == p[..., 3]) & (t[..., 4] == p[..., 4])
    return np.stack([t[..., 0] == p[..., 0], t[..., 1] == p[..., 1], t[..., 2] == p[..., 2], same_cell], axis=-1)


def match_objects(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """int32 [N, K]: the predicted object (index into M) matched to each true object of true [N, K, 5] among
    predicted [N, M, 5], -1 for none (and for absent true objects); one-to-one, maximising the agreeing attributes,
    ties to the most agreeing positions, then to the first assignment in order."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    n, k_max, m_max = true.shape[0], true.shape[1], predicted.shape[1]
    agree = _agreement(true, predicted)
    # (K + 1) * attributes + positions: a lexicographic order, since at most K positions agree.
    score = (k_max + 1) * agree.sum(-1) + agree[..., 3]
    allowed = (true[:, :, None, 0] >= 0) & (predicted[:, None, :, 0] >= 0)
    score = np.where(allowed, score, -1)  # -1: this pair may not be matched
    best_total = np.full(n, -1, np.int64)
    best = np.full((n, k_max), -1, np.int32)
    for choice in itertools.product(range(-1, m_max), repeat=k_max):  # -1: unmatched
        used = [c for c in choice if c >= 0]
        if len(used) != len(set(used)):
            continue
        parts = [np.zeros(n) if c < 0 else score[:, k, c] for k, c in enumerate(choice)]
        total = np.where(np.min(parts, axis=0) < 0, -1, np.sum(parts, axis=0))
        better = total > best_total
        best_total = np.where(better, total, best_total)
        best[better] = choice
    return best


def _rate(hits: np.ndarray) -> dict[str, float]:
    """{'accuracy': p, 'se': sqrt(p (1 - p) / n), 'n'} of 0/1 hits [n] (nan for n = 0)."""
    n = int(hits.size)
    p = float(np.mean(hits)) if n else float("nan")
    return {"accuracy": p, "se": math.sqrt(p * (1 - p) / n) if n else float("nan"), "n": n}


def object_hits(true: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Per-unit hits: 'shape', 'colour', 'size', 'position' bool [N, K] (False where no true object, see 'valid'),
    'count' and 'overall' bool [N], 'valid' bool [N, K] (a true object there)."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    if predicted.shape[1] == 0:  # no object slots: one absent one, so that every index below exists
        predicted = np.full((len(predicted), 1, len(shapes.OBJECT_FIELDS)), -1, np.int32)
    match = match_objects(true, predicted)
    agree = _agreement(true, predicted)
    picked = np.take_along_axis(agree, np.maximum(match, 0)[:, :, None, None], axis=2)[:, :, 0]  # [N, K, 4]
    valid = true[..., 0] >= 0
    picked &= (match >= 0)[..., None] & valid[..., None]
    hits = {name: picked[..., i] for i, name in enumerate(OBJECT_ATTRIBUTES)}
    hits["count"] = (predicted[..., 0] >= 0).sum(1) == valid.sum(1)
    hits["overall"] = hits["count"] & np.all(picked.all(-1) | ~valid, axis=1)
    hits["valid"] = valid
    return hits


def attribute_accuracy(true: np.ndarray, predicted: np.ndarray) -> dict[str, dict[str, float]]:
    """{attribute: {'accuracy', 'se', 'n'}} for ATTRIBUTES: per true object for shape, colour, size, position (n =
    true objects), per image for count and overall (n = images)."""
    hits = object_hits(true, predicted)
    out = {a: _rate(hits[a][hits["valid"]]) for a in OBJECT_ATTRIBUTES}
    return out | {a: _rate(hits[a]) for a in PROMPT_ATTRIBUTES}


def accuracy_report(true: np.ndarray, predicted: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """{'all' | 'seen' | 'held_out': attribute_accuracy} of true [N, K, 5] against predicted [N, M, 5]; held out:
    any true object of a shapes.HELD_OUT pair."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    held = is_held_out(true)
    masks = {"all": np.ones(len(true), bool), "seen": ~held, "held_out": held}
    return {g: attribute_accuracy(true[m], predicted[m]) for g, m in masks.items()}


def to_uint8(samples: np.ndarray, encoding_name: str = "endpoints") -> np.ndarray:
    """uint8 images [N, H, W, 3]: uint8 as they are, floats in [-1, 1] (as sampling returns them) decoded to 8 bits."""
    samples = np.asarray(samples)
    if samples.ndim != 4 or samples.shape[-1] != 3:
        raise ValueError(f"samples must be RGB images [N, H, W, 3], got shape {samples.shape}.")
    if samples.dtype == np.uint8:
        return samples
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"samples must be uint8 in [0, 255] or floats in [-1, 1], got {samples.dtype}.")
    return np.asarray(encoding.decode(samples, encoding_name), np.uint8)


def prompt_accuracy(
    samples: np.ndarray, prompts: Sequence[str], classifier: Classifier, *, encoding_name: str = "endpoints"
) -> dict[str, dict[str, dict[str, float]]]:
    """accuracy_report of the images `samples` (uint8, or floats in [-1, 1] of `encoding_name`) against the captions
    `prompts` (one per image, parsed by shapes.parse_caption), the objects read off by `classifier`."""
    images = to_uint8(samples, encoding_name)
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} samples but {len(prompts)} prompts; give one prompt per sample.")
    true = np.stack([shapes.parse_caption(str(p)) for p in prompts]) if len(prompts) else np.zeros((0, 2, 5), int)
    return accuracy_report(true, np.asarray(classifier(images)))


def summary_line(report: dict[str, dict[str, dict[str, float]]]) -> str:
    """One line: overall accuracy +- se (n) of each group, then every attribute's accuracy over all prompts."""
    groups = "  ".join(
        f"{g} {r['overall']['accuracy']:.4f} +- {r['overall']['se']:.4f} (n={r['overall']['n']})"
        for g, r in report.items()
        if r["overall"]["n"]
    )
    attrs = ", ".join(f"{a} {report['all'][a]['accuracy']:.4f}" for a in ATTRIBUTES if a != "overall")
    return f"prompt accuracy (overall): {groups}; all prompts: {attrs}"


def flat_metrics(report: dict[str, dict[str, dict[str, float]]], prefix: str) -> dict[str, float]:
    """{'PREFIX/GROUP/ATTRIBUTE': accuracy, ... '_se': its standard error} of the groups with any prompt."""
    out = {}
    for g, r in report.items():
        for a, v in r.items():
            if v["n"]:
                out[f"{prefix}/{g}/{a}"] = v["accuracy"]
                out[f"{prefix}/{g}/{a}_se"] = v["se"]
    return out
