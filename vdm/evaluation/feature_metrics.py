"""Distances between two sets of features: the Fréchet distance (FID) and KID. Pure numpy/scipy.

FID (Heusel et al. 2017): the squared Fréchet (2-Wasserstein) distance between Gaussians fitted to
the two feature sets, d^2 = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^{1/2}) (Dowson & Landau
1982). Biased at small N: it grows as N shrinks even for one distribution.

KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of MMD^2 with the cubic
polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over disjoint random subsets, whose spread gives
its standard error; its expectation is 0 for two samples of one distribution at any N.

With Inception pool features (vdm.evaluation.fid) these are the literature's FID and KID; applied to other
features (experiments/feature_net.py) they are only comparable with each other.
"""

from __future__ import annotations

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


def _psd_factor(c: np.ndarray) -> np.ndarray:
    """B with B B^T = c for symmetric PSD c: Cholesky when c is positive definite, else V sqrt(max(w, 0)) from eigh."""
    c = (c + c.T) / 2
    try:
        return scipy.linalg.cholesky(c, lower=True)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(c)
        return v * np.sqrt(np.clip(w, 0.0, None))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), the squared Fréchet distance of two Gaussians (Dowson & Landau 1982).

    mu: [F], cov: [F, F] symmetric positive semi-definite. For any B with B B^T = C1 (Cholesky, or
    eigh when C1 is singular: ReLU features that never fire, N <= F), B^T C2 B is symmetric PSD and
    has the eigenvalues of C1 C2, so tr (C1 C2)^1/2 = sum sqrt(eigvalsh(B^T C2 B)): exact for singular
    covariances (no complex roots) and several times faster than scipy's sqrtm of the product at F = 2048.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or cov1.shape != (f, f) or cov2.shape != (f, f):
        raise ValueError(
            f"frechet_distance needs mu [F] and cov [F, F] of one F; got mu1 {mu1.shape}, "
            f"cov1 {cov1.shape}, mu2 {mu2.shape}, cov2 {cov2.shape}."
        )
    for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"frechet_distance: {name} has non-finite entries.")
    b = _psd_factor(cov1)
    m = b.T @ cov2 @ b
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)


def frechet_distance_of_samples(x: np.ndarray, y: np.ndarray) -> float:
    """Squared Fréchet distance between Gaussians fitted to x [N, F] and y [M, F] (gaussian_stats of each)."""
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID of features a [N, F], b [M, F]: the Fréchet distance of their Gaussian fits (Heusel et al. 2017)."""
    return frechet_distance_of_samples(a, b)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x_i, y_j) = (x_i . y_j / d + 1)^3 [N, M], KID's kernel (Bińkowski et al. 2018, Sec. 4)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) of x [m, d], y [n, d] with the cubic polynomial kernel.

    = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 sum_{i,j} k(x_i, y_j) / (mn).
    """
    m, n = len(x), len(y)
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * polynomial_kernel(x, y).mean()
    )


def _check_features(name: str, f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or f.shape[0] < 2 or not np.all(np.isfinite(f)):
        raise ValueError(
            f"{name} must be finite features [N, F] with N >= 2; got shape {f.shape}"
            f"{'' if f.ndim != 2 or np.all(np.isfinite(f)) else ' with non-finite values'}."
        )
    return f


KID_MIN_SUBSETS = 10  # disjoint subsets KID keeps, at least, for its standard error (fewer rows each if need be)


def kid_subsets(n_a: int, n_b: int, num_subsets: int = 100, subset_size: int = 1000) -> tuple[int, int]:
    """(k, m) of KID over sets of n_a and n_b rows: k disjoint subsets of m rows of each set (k m <= min(n_a, n_b)).

    m = subset_size where at least min(num_subsets, KID_MIN_SUBSETS) such subsets fit, else the most rows that let
    that many fit (at least 2); k = as many of num_subsets as fit. ValueError if fewer than two subsets of two fit.
    """
    n, want = min(int(n_a), int(n_b)), min(int(num_subsets), KID_MIN_SUBSETS)
    m = min(int(subset_size), n)
    if n // m < want:
        m = max(n // want, 2)
    k = min(int(num_subsets), n // m)
    if k < 2:
        raise ValueError(
            f"KID needs two disjoint subsets of >= 2 rows of each set for its standard error: >= 4 rows each, "
            f"got {n_a} and {n_b}."
        )
    return k, m


def kid_from_features(
    a: np.ndarray, b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): (mean, standard error) of mmd2_unbiased over disjoint random subsets of a and b.

    a [N, F], b [M, F]. The subsets (kid_subsets: k of m rows, m = subset_size where at least
    min(num_subsets, KID_MIN_SUBSETS) fit, else fewer rows) are consecutive blocks of one permutation of
    each set (numpy Generator seeded by `seed`), so the k estimates are independent and
    se = std(ddof=1) / sqrt(k) is the sampling standard error of their mean, a KID estimate that is
    unbiased: 0 in expectation for two samples of one distribution, at any N. Conventional: 100 subsets
    of 1000 (N, M >= 100,000; with fewer, as many disjoint subsets of 1000 as fit, at least 10).
    """
    a, b = _check_features("a", a), _check_features("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"kid_from_features: a has {a.shape[1]} features, b has {b.shape[1]}.")
    if int(num_subsets) < 2 or int(subset_size) < 2:
        raise ValueError(
            f"kid_from_features needs num_subsets >= 2 and subset_size >= 2, got {num_subsets} and {subset_size}."
        )
    k, m = kid_subsets(len(a), len(b), num_subsets, subset_size)
    rng = np.random.default_rng(seed)
    ia, ib = rng.permutation(len(a))[: k * m].reshape(k, m), rng.permutation(len(b))[: k * m].reshape(k, m)
    vals = np.array([mmd2_unbiased(a[i], b[j]) for i, j in zip(ia, ib)])
    return float(vals.mean()), float(vals.std(ddof=1) / np.sqrt(k))
