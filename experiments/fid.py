"""Fréchet distance between Gaussians fitted to features (numpy/scipy only: safe to import anywhere).

    d^2 = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^{1/2})

is the squared 2-Wasserstein (Fréchet) distance between N(mu_1, C_1) and N(mu_2, C_2)
(Dowson & Landau 1982). Heusel et al. (2017) apply it to Inception-v3 features and call it FID;
this project applies it to the features of its own small Fashion-MNIST classifier
(experiments/feature_net.py), or to the raw coordinates of flat toy data. Those numbers are
*not* Inception FIDs and are not comparable with published FIDs, only with each other.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], unbiased covariance [F, F]) of features [N, F], N >= 2, in float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats needs features [N, F] with N >= 2, got shape {f.shape}.")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"gaussian_stats got {int(np.sum(~np.isfinite(f)))} non-finite feature values.")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False, ddof=1))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                     *, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 sqrtm(C1 C2)), the squared Fréchet distance of two Gaussians (Dowson & Landau 1982).

    mu: [F], cov: [F, F] symmetric positive semi-definite. Singular covariances are normal here
    (ReLU features that are always 0); sqrtm's LinAlgWarning about them is silenced, and the
    result still agrees with the symmetric form tr (C1^1/2 C2 C1^1/2)^1/2 (tests/test_feature_net.py).
    If sqrtm(C1 C2) is not finite, eps * I is added to both covariances first. The tiny
    imaginary part sqrtm returns for a PSD product from rounding is dropped; a large one raises.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or cov1.shape != (f, f) or cov2.shape != (f, f):
        raise ValueError(f"frechet_distance needs mu [F] and cov [F, F] of one F; got mu1 {mu1.shape}, "
                         f"cov1 {cov1.shape}, mu2 {mu2.shape}, cov2 {cov2.shape}.")
    for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"frechet_distance: {name} has non-finite entries.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov1 @ cov2)
        if not np.all(np.isfinite(covmean)):
            offset = eps * np.eye(f)
            covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(np.max(np.abs(covmean)), 1e-300)
        if np.max(np.abs(covmean.imag)) > 1e-3 * scale:
            raise ValueError("sqrtm(cov1 @ cov2) has a large imaginary part: are the covariances "
                             "symmetric positive semi-definite?")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def frechet_distance_of_samples(x: np.ndarray, y: np.ndarray) -> float:
    """Squared Fréchet distance between Gaussians fitted to x [N, F] and y [M, F] (gaussian_stats of each)."""
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
