"""Toy data sets generated in numpy, deterministic from a seed, with known densities.

- mixture2d:  2-D Gaussian mixture, `MIXTURE_MODES` equally weighted modes on a
  circle of radius `MIXTURE_RADIUS`, isotropic std `MIXTURE_STD`; label = component.
- grid8bit2d: 8-bit 2-D data, uniform on the grid GRID_LEVELS x GRID_LEVELS of 8-bit
  values k, stored as k/127.5 - 1 (discrete; entropy log(len(GRID_LEVELS)^2) nats).
- gaussian:   x ~ N(0, diag(s^2)) in `dim` dims with known scales s = `gaussian_scales(dim)`;
  its exact NLL is `gaussian_nll(x, s)`.

Each returns (x float32 [N, ...], label int32 [N]); the split index picks an
independent stream, so train and test never share samples.
"""

from __future__ import annotations

import numpy as np

from vdm.core.encoding import encode

TOY_DATASETS = ("mixture2d", "grid8bit2d", "gaussian")
SPLITS = ("train", "test")

MIXTURE_MODES = 8
MIXTURE_RADIUS = 0.7
MIXTURE_STD = 0.1
GRID_LEVELS = (31, 95, 160, 224)  # 8-bit values, symmetric about 127.5


def _rng(seed: int, split: str) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}.")
    return np.random.default_rng((seed, SPLITS.index(split)))


def mixture2d_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means [K, 2], stds [K], weights [K]): mu_k = r (cos 2 pi k/K, sin 2 pi k/K), std s, weight 1/K."""
    angles = 2 * np.pi * np.arange(MIXTURE_MODES) / MIXTURE_MODES
    means = MIXTURE_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    stds = np.full(MIXTURE_MODES, MIXTURE_STD)
    weights = np.full(MIXTURE_MODES, 1.0 / MIXTURE_MODES)
    return means, stds, weights


def mixture2d(num: int, seed: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """num samples x = mu_c + s_c eps, c ~ Categorical(weights), eps ~ N(0, I_2); label = c."""
    rng = _rng(seed, split)
    means, stds, weights = mixture2d_params()
    labels = rng.choice(len(weights), size=num, p=weights)
    x = means[labels] + stds[labels, None] * rng.standard_normal((num, 2))
    return x.astype(np.float32), labels.astype(np.int32)


def grid8bit2d_values(encoding: str = "endpoints") -> np.ndarray:
    """The grid's coordinate values x_k (vdm.core.encoding) for k in GRID_LEVELS, float32 [L]."""
    return encode(np.asarray(GRID_LEVELS, np.uint8), encoding)


def grid8bit2d(num: int, seed: int, split: str = "train", encoding: str = "endpoints") -> tuple[np.ndarray, np.ndarray]:
    """num points uniform on the L x L grid of 8-bit values (encoded as `encoding`); label = row-major cell index."""
    rng = _rng(seed, split)
    levels = len(GRID_LEVELS)
    labels = rng.integers(0, levels * levels, size=num)
    values = grid8bit2d_values(encoding)
    x = np.stack([values[labels // levels], values[labels % levels]], axis=-1)
    return x.astype(np.float32), labels.astype(np.int32)


def gaussian_scales(dim: int) -> np.ndarray:
    """Per-dim std s_i, geometric from 1 down to 0.1: s = geomspace(1, 0.1, dim), float64 [dim]."""
    if not (isinstance(dim, (int, np.integer)) and dim >= 1):
        raise ValueError(f"gaussian data needs an integer dim >= 1, got {dim!r}.")
    return np.geomspace(1.0, 0.1, int(dim))


def gaussian(num: int, seed: int, split: str = "train", *, dim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """num samples x = s * eps, eps ~ N(0, I_dim), s = gaussian_scales(dim); labels all 0."""
    rng = _rng(seed, split)
    x = gaussian_scales(dim) * rng.standard_normal((num, dim))
    return x.astype(np.float32), np.zeros(num, np.int32)


def gaussian_nll(x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Exact -log N(x; 0, diag(s^2)) = sum_i [x_i^2 / (2 s_i^2) + log s_i + log(2 pi)/2], nats, [N]."""
    x = np.asarray(x, np.float64)
    scales = np.asarray(scales, np.float64)
    if x.shape[-1] != scales.shape[-1]:
        raise ValueError(f"x has {x.shape[-1]} dims but scales has {scales.shape[-1]}.")
    return np.sum(0.5 * (x / scales) ** 2 + np.log(scales) + 0.5 * np.log(2 * np.pi), axis=-1)


def generate(
    name: str, num: int, seed: int, split: str, *, dim: int = 2, encoding: str = "endpoints"
) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [num, ...], label int32 [num]) of toy set `name`, a pure function of (num, seed, split, dim, encoding)."""
    if name == "mixture2d":
        return mixture2d(num, seed, split)
    if name == "grid8bit2d":
        return grid8bit2d(num, seed, split, encoding)
    if name == "gaussian":
        return gaussian(num, seed, split, dim=dim)
    raise ValueError(f"Unknown toy data set {name!r}; valid: {', '.join(TOY_DATASETS)}.")
