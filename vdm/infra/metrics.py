"""Run outputs: scalar metrics to a JSONL file and TensorBoard, sample grids to PNG.

Only process 0 of a multi-host job writes; the other processes get no-op writers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from vdm.core.encoding import bits_per_dim, decode


def _scalar(value) -> float:
    """A finite float, or None for NaN/inf (JSON has no NaN); raises for non-scalars."""
    v = float(np.asarray(value))
    return v if math.isfinite(v) else None


class MetricWriter:
    """Append {'step': k, name: value, ...} lines to workdir/metrics.jsonl and scalars to workdir/tb."""

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it

            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: Mapping[str, float], tags: Mapping | None = None) -> None:
        """Record scalar metrics at `step` (one JSON object per call; non-finite values as null); `tags`: JSON-only fields."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _scalar(v) for k, v in scalars.items()})
        record.update(tags or {})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, float(np.asarray(v)), int(step))
            self._tb.flush()

    def histogram(self, step: int, name: str, edges: np.ndarray, probs: np.ndarray) -> None:
        """Record a distribution over bins [edges_k, edges_k+1) with probabilities probs: JSON lists NAME/edges,
        NAME/probs in metrics.jsonl, and a TensorBoard histogram (add_histogram_raw, bucket limits = right edges)."""
        if not self.enabled:
            return
        edges, probs = np.asarray(edges, np.float64), np.asarray(probs, np.float64)
        self.write(step, {}, tags={f"{name}/edges": edges.tolist(), f"{name}/probs": probs.tolist()})
        if self._tb is not None:
            centres = 0.5 * (edges[1:] + edges[:-1])
            self._tb.add_histogram_raw(
                name,
                min=float(edges[0]),
                max=float(edges[-1]),
                num=float(probs.sum()),
                sum=float(np.sum(centres * probs)),
                sum_squares=float(np.sum(centres**2 * probs)),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=probs.tolist(),
                global_step=int(step),
            )
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the files."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def image_grid(
    images: np.ndarray, *, num_cols: int | None = None, pad: int = 2, encoding: str = "endpoints"
) -> np.ndarray:
    """Tile images [N, H, W, C] (C = 1 or 3, in [-1, 1]) into one uint8 [rows*(H+pad)+pad, ..., C] grid, row by row;
    num_cols=None: ceil(sqrt(N)) columns (a square grid when N is a square, else near-square)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"image_grid needs images [N, H, W, C] with C in (1, 3), got {images.shape}.")
    n, h, w, c = images.shape
    cols = num_cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(decode(images, encoding)):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = img
    return grid


def scatter_image(points: np.ndarray, *, size: int = 256, extent: float | None = None) -> np.ndarray:
    """A uint8 [size, size, 1] picture of 2-D points [N, 2] in [-extent, extent]^2 (white background).

    extent=None: 1.1 x the largest |coordinate| of the finite points (at least 1).
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"scatter_image needs points [N, 2], got {points.shape}.")
    points = points[np.all(np.isfinite(points), axis=1)]
    if extent is None:
        extent = max(1.0, 1.1 * float(np.max(np.abs(points), initial=0.0)))
    img = np.full((size, size, 1), 255, np.uint8)
    ij = np.round((points / extent + 1.0) * 0.5 * (size - 1)).astype(np.int64)
    keep = np.all((ij >= 0) & (ij < size), axis=1)
    img[size - 1 - ij[keep, 1], ij[keep, 0]] = 0  # y up
    return img


def class_rows(samples: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Samples reordered by class label (stable), and the grid's column count that puts one class in each row: the
    count per class when every class drawn has the same count, else None (a near-square grid, classes in order)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != len(samples):
        raise ValueError(f"class_rows needs one label per sample, got {labels.shape[0]} labels for {len(samples)}.")
    order = np.argsort(labels, kind="stable")
    counts = np.unique(labels, return_counts=True)[1]
    return np.asarray(samples)[order], int(counts[0]) if len(set(counts.tolist())) == 1 else None


def save_samples_png(
    path: str, samples: np.ndarray, encoding: str = "endpoints", *, scale: int = 4, labels: Any = None
) -> None:
    """Write samples as a PNG: a grid for images [N, H, W, C] (image_grid, each pixel scale x scale by nearest
    neighbour, for viewing; with labels, one class per row: class_rows), a scatter of the first two coordinates
    for flat [N, D>=2] (256 x 256, not scaled)."""
    samples = np.asarray(samples)
    if samples.ndim == 4:
        cols = None
        if labels is not None:
            samples, cols = class_rows(samples, labels)
        pixels = image_grid(samples, num_cols=cols, encoding=encoding)
        pixels = np.repeat(np.repeat(pixels, int(scale), axis=0), int(scale), axis=1)
    elif samples.ndim == 2 and samples.shape[1] >= 2:
        pixels = scatter_image(samples[:, :2])
    else:
        raise ValueError(f"can draw image batches [N, H, W, C] or flat points [N, D>=2], got {samples.shape}.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def read_metrics(workdir: str) -> list[dict]:
    """The records of workdir/metrics.jsonl, in file order (empty if the file does not exist)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_bpd(workdir: str, path: str | None = None, *, num_dims: int | None = None) -> str | None:
    """Draw test -ELBO bits/dim and its three terms against the step, from metrics.jsonl, to workdir/bpd.png.

    With num_dims, the training loss is drawn too, as loss / (D ln 2) (the -ELBO estimate in
    bits/dim when the weighting is 'elbo').
    """
    evals, train = {}, {}
    for r in read_metrics(workdir):  # a resumed run may repeat a step: the last record wins
        if r.get("eval/bpd") is not None and r.get("mode") is None:  # the loop's evals, not --mode=eval's
            evals[r["step"]] = r
        if r.get("train/loss") is not None:
            train[r["step"]] = r["train/loss"]
    if not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(evals)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    if num_dims and train:
        ts = sorted(train)
        ax.plot(ts, [bits_per_dim(train[s], num_dims) for s in ts], color="0.6", lw=1, label="train loss / (D ln 2)")
    # The diffusion term is nearly the total: the total is drawn wide and underneath, the terms
    # thin and dashed on top, so both stay visible where they overlap.
    for key, label, style in [
        ("eval/bpd", "total", dict(lw=5, alpha=0.45, marker="o", ms=9, zorder=2)),
        ("eval/bpd_diffusion", "diffusion", dict(lw=1.5, ls="--", marker="x", zorder=3)),
        ("eval/bpd_recon", "reconstruction", dict(lw=1.5, ls="--", marker="s", ms=4)),
        ("eval/bpd_prior", "prior", dict(lw=1.5, ls=":", marker="^", ms=4)),
        ("eval/bpd_cross_entropy", "latent cross-entropy", dict(lw=1.5, ls="--", marker="x")),
        ("eval/bpd_neg_entropy", "- encoder entropy", dict(lw=1.5, ls=":", marker="v", ms=4)),
    ]:
        values = [evals[s].get(key) for s in steps]
        if all(v is not None for v in values):
            ax.plot(steps, values, label=label, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim (test -ELBO: EMA params)")
    if num_dims and train:
        top = max(v.get("eval/bpd") or 0.0 for v in evals.values())
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]), top=max(3 * top, 1e-3))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = path or os.path.join(workdir, "bpd.png")
    fig.savefig(path)
    plt.close(fig)
    return path
