"""Inception FID and KID, offline, with the standard FID network (Inception-v3 of 2015-12-05).

    python -m vdm.tools.fid prepare                      # once: the weights (also `make fid-weights`)
    python -m vdm.tools.fid A B [--num=N] [--resize=tf1] # FID and KID between two sources

A source is an `.npz` of samples as `--mode=sample` writes (key `samples`: floats in [-1, 1],
decoded to 8 bits with the encoding of the config .json beside it, or uint8), a folder of PNGs, or
a data set split `NAME:SPLIT` (e.g. `fashion_mnist:test`; read through vdm.data.tfds_sets, statistics cached).

Features (`inception_features`): uint8 images [N, H, W, C], C in {1, 3}; grey repeated to RGB;
resized to 299x299 on floats, by default as TF1's resize_bilinear (source = dest * in/out, edges
clamped: NVIDIA's FID tool, TTUR, fid-helper's `nv_bilinear_float`), or with `resize='half_pixel'`
as pytorch-fid's bilinear interpolate; then (x - 128) / 128; 2048-d pool features in float32,
jitted and data-parallel over the local devices (vdm.infra.parallel). Equal to the TorchScript network
within ~2e-5 (tests/test_fid_network.py). FID and KID: vdm.evaluation.feature_metrics.

Reference statistics of a split are computed once and cached beside the data set, in
DATA_DIR/NAME/vdm_fid/, keyed by split, number of examples, resize mode and the weights' sha256:
mean and covariance (float64) of all of them, and the features of the first KID_FEATURES for KID.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import tqdm
from PIL import Image

from vdm.core import encoding
from vdm.data import tfds_sets
from vdm.evaluation import fid_weights
from vdm.evaluation.feature_metrics import (
    fid_from_features,
    frechet_distance,
    frechet_distance_of_samples,
    gaussian_stats,
    kid_from_features,
    kid_subsets,
)
from vdm.infra import parallel
from vdm.infra.fileio import atomic_write
from vdm.models import inception

__all__ = [
    "inception_features",
    "fid_from_features",
    "kid_from_features",
    "frechet_distance",
    "frechet_distance_of_samples",
    "gaussian_stats",
    "load_inception",
    "reference_stats",
    "score_samples",
    "compare",
    "load_source",
    "RESIZE_MODES",
]

RESIZE_MODES = inception.RESIZE_MODES
DEFAULT_BATCH = 32
_log = logging.getLogger(__name__)
KID_FEATURES = 10_000  # reference rows kept for KID (its subsets are 1000 by default)


class Inception(NamedTuple):
    """The loaded FID network: fn(params, uint8 batch) -> features, sharded over `mesh`."""

    fn: Callable
    params: Any
    mesh: Any
    resize: str
    weights_sha256: str


def load_inception(resize: str = "tf1", *, weights_dir: str | None = None) -> Inception:
    """The FID Inception from the checked weight cache, jitted, data-parallel over this process's devices."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize!r}; valid: {RESIZE_MODES}.")
    flat, digest = fid_weights.load(weights_dir)
    params = inception.params_from_torch(flat)
    inception.check_params(params)
    net = inception.InceptionV3()
    mesh = parallel.make_mesh(jax.local_devices())

    def per_device(p, images, _key):
        return net.apply({"params": p}, inception.preprocess(images, resize))

    fn = parallel.data_parallel_eval(per_device, mesh)
    return Inception(fn, parallel.replicate(params, mesh), mesh, resize, digest)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(
            f"images must be uint8 [N, H, W, C] with N >= 1 and C in (1, 3); got "
            f"{images.dtype} {images.shape} (decode floats in [-1, 1] with vdm.core.encoding.decode)."
        )
    return images


def inception_features(
    images: np.ndarray,
    *,
    net: Inception | None = None,
    resize: str = "tf1",
    batch_size: int = DEFAULT_BATCH,
    progress: bool | str = False,
) -> np.ndarray:
    """uint8 [N, H, W, C], C in {1, 3} -> float32 [N, 2048] pool features of the FID Inception-v3 (Heusel et al. 2017).

    net: a `load_inception()` to reuse across calls (else the weights are loaded and compiled per
    call); batches of `batch_size` (rounded up to a multiple of the local device count, the last
    one zero-padded) go through the jitted shard_map over this process's devices. progress: a tqdm
    bar of images with its ETA on stderr (a string: its label; ~0.1 s an image on a CPU core).
    """
    images = _check_images(images)
    net = net or load_inception(resize)
    ndev = net.mesh.devices.size
    bs = -(-max(int(batch_size), 1) // ndev) * ndev  # a multiple of the device count
    key = jax.random.key(0)  # unused: the network is deterministic
    label = progress if isinstance(progress, str) else "inception features"
    if progress:
        _log.info("%s: %d images (the first batch also compiles the network)", label, len(images))
    bar = tqdm.tqdm(
        total=len(images),
        desc=label,
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    out = []
    with bar:
        for start in range(0, len(images), bs):
            batch = images[start : start + bs]
            pad = bs - len(batch)  # one compiled shape: pad the last batch
            if pad:
                batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), np.uint8)])
            feats = net.fn(net.params, parallel.shard_batch(batch, net.mesh), key)
            out.append(np.asarray(feats)[: bs - pad])
            bar.update(bs - pad)
    return np.concatenate(out).astype(np.float32, copy=False)


def parse_split(spec: str) -> tuple[str, str]:
    """'fashion_mnist:test' -> ('fashion_mnist', 'test'); ValueError naming the valid data sets and splits."""
    name, _, split = spec.partition(":")
    if name not in tfds_sets.IMAGE_DATASETS or split not in ("train", "test"):
        raise ValueError(
            f"{spec!r} is not a data set split: expected NAME:SPLIT with NAME in "
            f"{tfds_sets.IMAGE_DATASETS} and SPLIT in ('train', 'test')."
        )
    return name, split


def _stats_path(name: str, split: str, num: int, resize: str, digest: str, data_dir: str) -> str:
    folder = os.path.join(data_dir, name, "vdm_fid")
    return os.path.join(folder, f"{split}_n{num}_{resize}_{digest[:16]}.npz")


def reference_stats(
    spec: str,
    *,
    num: int | None = None,
    net: Inception | None = None,
    resize: str = "tf1",
    data_dir: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """{'mu', 'cov' (float64), 'num', 'features' (the first KID_FEATURES)} of a split's first `num` examples (None: all), cached.

    Computed once per (data set, split, num, resize, weights sha256) and stored in
    DATA_DIR/NAME/vdm_fid/ (DATA_DIR: vdm.data.tfds_sets.resolve_data_dir); a file whose recorded key
    does not match is recomputed. Computing shows a progress bar with its ETA (progress=False: none):
    the whole 60,000-image train split of Fashion-MNIST takes 1.5-2 h on 2 CPU cores, 2,000 a few minutes.
    """
    name, split = parse_split(spec)
    data_dir = tfds_sets.resolve_data_dir(data_dir)
    images, _ = tfds_sets.load_split(name, data_dir, split)
    num = len(images) if num is None else int(num)
    if not 2 <= num <= len(images):
        raise ValueError(f"num must be in [2, {len(images)}] for {spec}, got {num}.")
    net = net or load_inception(resize)
    path = _stats_path(name, split, num, net.resize, net.weights_sha256, data_dir)
    key = json.dumps(
        {"dataset": name, "split": split, "num": num, "resize": net.resize, "weights_sha256": net.weights_sha256}
    )
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return {k: z[k] for k in ("mu", "cov", "features", "num")}
        except (OSError, ValueError, KeyError):
            pass  # unreadable: recompute below
    label = f"FID reference {spec}[:{num}]" if progress else False
    feats = inception_features(images[:num], net=net, batch_size=batch_size, progress=label)
    mu, cov = gaussian_stats(feats)
    stats = {"mu": mu, "cov": cov, "features": feats[:KID_FEATURES], "num": np.asarray(num)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, key=np.asarray(key), **stats), binary=True)
    return stats


def _npz_images(path: str, encoding_name: str | None) -> np.ndarray:
    """The `samples` of an .npz: uint8 as is; floats in [-1, 1] decoded with the encoding of the .json beside it."""
    with np.load(path, allow_pickle=False) as z:
        if "samples" not in z.files:
            raise ValueError(f"{path} has no 'samples' array (keys: {z.files}); --mode=sample writes one.")
        x = z["samples"]
    if x.dtype == np.uint8:
        return x
    if encoding_name is None:
        cfg = os.path.splitext(path)[0] + ".json"
        encoding_name = (
            json.load(open(cfg)).get("data", {}).get("encoding", "endpoints") if os.path.exists(cfg) else "endpoints"
        )
    return encoding.decode(x, encoding_name)


def _png_images(folder: str) -> np.ndarray:
    """Every *.png of a folder (sorted by name), as uint8 [N, H, W, C]; all must share one size."""
    paths = sorted(glob.glob(os.path.join(folder, "*.png")))
    if not paths:
        raise ValueError(f"{folder} has no .png files.")

    def read(path: str) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("L" if im.mode in ("L", "1", "I", "I;16") else "RGB"))

    images = [read(p) for p in paths]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"the PNGs of {folder} have different shapes: {sorted(shapes)[:4]}.")
    x = np.stack(images)
    return x[..., None] if x.ndim == 3 else x


def load_source(source: str, *, encoding_name: str | None = None, data_dir: str | None = None) -> np.ndarray:
    """uint8 images [N, H, W, C] of a source: an .npz of samples, a folder of PNGs, or NAME:SPLIT."""
    if os.path.isdir(source):
        return _png_images(source)
    if source.endswith(".npz"):
        if not os.path.exists(source):
            raise ValueError(f"{source}: no such file.")
        return _npz_images(source, encoding_name)
    if ":" in source:
        name, split = parse_split(source)
        return np.asarray(tfds_sets.load_split(name, tfds_sets.resolve_data_dir(data_dir), split)[0])
    raise ValueError(
        f"{source!r} is not a source: give an .npz of samples, a folder of PNGs, or "
        f"NAME:SPLIT with NAME in {tfds_sets.IMAGE_DATASETS}."
    )


def _source_stats(source: str, net: Inception, num: int | None, **kw) -> dict:
    """{'mu', 'cov', 'num', 'features'} of a source: a split through the reference cache, else computed."""
    if not source.endswith(".npz") and not os.path.isdir(source) and ":" in source:
        return reference_stats(
            source,
            num=num,
            net=net,
            data_dir=kw.get("data_dir"),
            batch_size=kw.get("batch_size", DEFAULT_BATCH),
            progress=kw.get("progress", False),
        )
    images = load_source(source, encoding_name=kw.get("encoding_name"), data_dir=kw.get("data_dir"))
    images = images[:num] if num else images
    progress = f"FID features of {os.path.basename(source.rstrip(os.sep))}" if kw.get("progress", False) else False
    feats = inception_features(images, net=net, batch_size=kw.get("batch_size", DEFAULT_BATCH), progress=progress)
    mu, cov = gaussian_stats(feats)
    return {"mu": mu, "cov": cov, "features": feats, "num": np.asarray(len(feats))}


def _scores(sa: dict, sb: dict, num_subsets: int, kid_subset_size: int) -> dict[str, float]:
    """FID of the two fits; KID and its standard error over disjoint subsets, with how many of how many rows."""
    fid = frechet_distance(sa["mu"], sa["cov"], sb["mu"], sb["cov"])
    kid, kid_se = kid_from_features(
        sa["features"], sb["features"], num_subsets=num_subsets, subset_size=kid_subset_size
    )
    k, m = kid_subsets(len(sa["features"]), len(sb["features"]), num_subsets, kid_subset_size)
    return {"fid": fid, "kid": kid, "kid_se": kid_se, "kid_subsets": k, "kid_subset_size": m}


def compare(
    a: str,
    b: str,
    *,
    num: int | None = None,
    num_b: int | None = None,
    resize: str = "tf1",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    net: Inception | None = None,
    **kw,
) -> dict[str, float]:
    """{'fid', 'kid', 'kid_se', 'kid_subsets', 'kid_subset_size', 'num_a', 'num_b'} between two sources (load_source),
    cut to their first `num` (b: `num_b`). kid_se: the standard error of KID over its disjoint subsets (kid_subsets of
    kid_subset_size rows each: vdm.evaluation.feature_metrics.kid_subsets)."""
    net = net or load_inception(resize)
    sa, sb = _source_stats(a, net, num, **kw), _source_stats(b, net, num if num_b is None else num_b, **kw)
    out = _scores(sa, sb, kid_subsets, kid_subset_size)
    return {**out, "num_a": int(sa["num"]), "num_b": int(sb["num"])}


def score_samples(
    samples: np.ndarray,
    reference: str = "fashion_mnist:train",
    *,
    num_reference: int | None = None,
    resize: str = "tf1",
    encoding_name: str = "endpoints",
    data_dir: str | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    batch_size: int = DEFAULT_BATCH,
    net: Inception | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """{'fid', 'kid', 'kid_se', 'kid_subsets', 'kid_subset_size', 'num_samples', 'num_reference'}: samples against a
    split's cached reference statistics.

    samples: uint8 [N, H, W, C], or floats in [-1, 1] (as sampling returns them), decoded to 8 bits
    with `encoding_name` (config.data.encoding). reference: NAME:SPLIT; num_reference: its first
    examples (None: the whole split, computed once and cached; see reference_stats). kid_se: the standard
    error of KID over kid_subsets disjoint subsets of kid_subset_size rows. progress: bars with ETAs on stderr.
    """
    samples = np.asarray(samples)
    if samples.dtype != np.uint8:
        if not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"samples must be uint8 or floats in [-1, 1], got {samples.dtype}.")
        samples = encoding.decode(samples, encoding_name)
    net = net or load_inception(resize)
    feats = inception_features(samples, net=net, batch_size=batch_size, progress="FID samples" if progress else False)
    mu, cov = gaussian_stats(feats)
    ref = reference_stats(
        reference, num=num_reference, net=net, data_dir=data_dir, batch_size=batch_size, progress=progress
    )
    out = _scores({"mu": mu, "cov": cov, "features": feats}, ref, kid_subsets, kid_subset_size)
    return {**out, "num_samples": len(feats), "num_reference": int(ref["num"])}
