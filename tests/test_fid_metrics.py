"""FID and KID math against closed forms, independent implementations and Monte Carlo (vdm.evaluation.feature_metrics).

Truths used: for commuting covariances C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T the squared
Fréchet (2-Wasserstein) distance is ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2; in general it
equals tr(C1 + C2 - 2 (C1 C2)^1/2), computed here with scipy.linalg.sqrtm of the non-symmetric
product, independently of the symmetric form tr (B^T C2 B)^1/2, B B^T = C1, the code uses.
KID: the unbiased MMD^2 estimate written as explicit double sums over pairs (Gretton et al. 2012,
Eq. 3), and its expectation 0 for two samples of one distribution (Bińkowski et al. 2018).
"""

import warnings

import numpy as np
import pytest
import scipy.linalg

from vdm import fid
from vdm.evaluation import feature_metrics as fm


def _w2_squared(mu1, c1, mu2, c2):
    """Squared 2-Wasserstein distance of two Gaussians via sqrtm of the product C1 C2 (Dowson & Landau 1982)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean).real)


def _random_rotation(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fm.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(truth, rel=1e-10, abs=1e-10)


def test_frechet_distance_matches_closed_form_for_commuting_full_covariances():
    rng = np.random.default_rng(1)
    d = 6
    q = _random_rotation(rng, d)
    a, b = rng.uniform(0.05, 4.0, d), rng.uniform(0.05, 4.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fm.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(truth, rel=1e-8, abs=1e-9)


def test_frechet_distance_matches_the_product_form_for_non_commuting_covariances():
    rng = np.random.default_rng(2)
    d = 8
    c1 = (lambda m: m @ m.T / d + 0.1 * np.eye(d))(rng.standard_normal((d, d)))
    c2 = (lambda m: m @ m.T / d + 0.1 * np.eye(d))(rng.standard_normal((d, d)))
    assert np.abs(c1 @ c2 - c2 @ c1).max() > 0.1  # really non-commuting
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    got = fm.frechet_distance(mu1, c1, mu2, c2)
    assert got == pytest.approx(_w2_squared(mu1, c1, mu2, c2), rel=1e-8)
    assert fm.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(got, rel=1e-8)  # symmetric
    assert fm.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_handles_a_singular_covariance():
    # C1 of rank 1 (features that never vary in one direction): W2 still has its closed form.
    c1, c2 = np.diag([2.0, 0.0]), np.diag([1.0, 3.0])
    truth = (np.sqrt(2.0) - 1.0) ** 2 + 3.0
    assert fm.frechet_distance(np.zeros(2), c1, np.zeros(2), c2) == pytest.approx(truth, abs=1e-5)


def test_frechet_distance_matches_the_product_form_for_rank_deficient_covariances():
    # Like features with dead ReLU units: 12-D covariances of rank 7 and 9, zero rows included.
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((12, 7)), rng.standard_normal((12, 9))
    a[:2], b[:3] = 0.0, 0.0
    c1, c2 = a @ a.T, b @ b.T
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    assert fm.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(_w2_squared(mu1, c1, mu2, c2), rel=1e-6)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="mu \\[F\\] and cov \\[F, F\\]"):
        fm.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        fm.frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        fm.gaussian_stats(np.zeros((1, 3)))


def test_frechet_distance_of_samples_converges_to_the_gaussians_distance():
    """Sample estimate of FD between two known Gaussians: mean over 16 replicates within 4 SE + the O(F/N) bias."""
    rng = np.random.default_rng(3)
    d, n, reps = 3, 4000, 16
    q = _random_rotation(rng, d)
    mu1, mu2 = np.zeros(d), np.array([0.5, -0.3, 0.2])
    c1 = q @ np.diag([1.0, 0.5, 0.2]) @ q.T
    c2 = np.diag([0.7, 1.5, 0.3])
    truth = _w2_squared(mu1, c1, mu2, c2)
    l1, l2 = np.linalg.cholesky(c1), np.linalg.cholesky(c2)
    est = [
        fm.frechet_distance_of_samples(
            mu1 + rng.standard_normal((n, d)) @ l1.T, mu2 + rng.standard_normal((n, d)) @ l2.T
        )
        for _ in range(reps)
    ]
    se = np.std(est, ddof=1) / np.sqrt(reps)
    # E||mean1 - mean2||^2 = truth part + (tr C1 + tr C2)/n; the trace-sqrt term's bias is of the same order.
    bias = 2 * (np.trace(c1) + np.trace(c2)) / n
    assert abs(np.mean(est) - truth) < 4 * se + bias, (np.mean(est), truth, se, bias)
    assert se < 0.05 * truth


def test_fid_from_features_of_two_gaussians_equals_the_closed_form():
    """fid_from_features on large samples of N(mu1, diag a), N(mu2, diag b) -> ||mu1-mu2||^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(5)
    d, n = 4, 200_000
    mu1, mu2 = np.array([0.0, 1.0, -0.5, 0.2]), np.array([0.3, 0.5, -0.5, -0.1])
    a, b = np.array([1.0, 0.5, 2.0, 0.1]), np.array([0.6, 0.5, 1.0, 0.4])
    truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    x = mu1 + rng.standard_normal((n, d)) * np.sqrt(a)
    y = mu2 + rng.standard_normal((n, d)) * np.sqrt(b)
    assert fid.fid_from_features(x, y) == pytest.approx(truth, rel=0.01)
    assert fid.fid_from_features(x, y) == fm.frechet_distance(*fm.gaussian_stats(x), *fm.gaussian_stats(y))


def _mmd2_by_pairs(x, y):
    """Unbiased MMD^2 with k = (x.y/d + 1)^3 as explicit double sums over pairs (Gretton et al. 2012, Eq. 3)."""
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda u, v: (float(np.dot(u, v)) / d + 1.0) ** 3
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_mmd2_unbiased_equals_the_double_sum_over_pairs():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5
    assert fm.mmd2_unbiased(x, y) == pytest.approx(_mmd2_by_pairs(x, y), rel=1e-12)
    assert fm.polynomial_kernel(x, y).shape == (7, 5)


def test_kid_of_two_samples_of_one_distribution_is_zero_in_expectation():
    """Mean KID over 400 independent pairs of sample sets of one distribution: 0 within 3 standard errors."""
    rng = np.random.default_rng(7)
    d, n, reps = 16, 40, 400
    scale = np.linspace(0.2, 1.5, d)
    est = [
        fid.kid_from_features(
            np.abs(rng.standard_normal((n, d))) * scale,
            np.abs(rng.standard_normal((n, d))) * scale,
            num_subsets=2,
            subset_size=n // 2,
            seed=i,
        )[0]
        for i in range(reps)
    ]
    se = np.std(est, ddof=1) / np.sqrt(reps)
    assert abs(np.mean(est)) < 3 * se, (np.mean(est), se)
    # ... while a shifted distribution is clearly positive on the same scale
    shifted = fid.kid_from_features(
        np.abs(rng.standard_normal((n, d))) * scale,
        np.abs(rng.standard_normal((n, d))) * scale + 0.5,
        num_subsets=2,
        subset_size=n // 2,
    )[0]
    assert shifted > 20 * se


def test_kid_standard_error_matches_the_spread_over_repetitions_for_disjoint_subsets():
    """With disjoint subsets (10 x 50 of 500 rows) se is the sampling SE: its mean ~ the std of KID over repetitions."""
    rng = np.random.default_rng(8)
    d, reps = 8, 60
    pairs = [(rng.standard_normal((500, d)), rng.standard_normal((500, d)) + 0.2) for _ in range(reps)]
    out = np.array([fid.kid_from_features(a, b, num_subsets=10, subset_size=50, seed=0) for a, b in pairs])
    ratio = np.mean(out[:, 1]) / np.std(out[:, 0], ddof=1)
    assert 0.7 < ratio < 1.4, ratio  # 60 repetitions: the std itself is known to ~10%


def test_kid_standard_error_is_the_spread_over_repetitions_for_few_samples():
    """100 samples against 200 reference rows with subsets of 100 asked for (as --mode=sample asks at 100 samples):
    the subsets are disjoint (10 of 10), so se is a real standard error: its mean over 200 independent draws agrees
    with the standard deviation of KID over those draws (each known to ~5%, fixed seed). Overlapping subsets of all
    100 samples would report only their Monte-Carlo error, several times smaller."""
    rng = np.random.default_rng(11)
    d, reps = 8, 200
    draws = [(rng.standard_normal((100, d)) + 0.3, rng.standard_normal((200, d))) for _ in range(reps)]
    out = np.array(
        [fid.kid_from_features(a, b, num_subsets=100, subset_size=100, seed=i) for i, (a, b) in enumerate(draws)]
    )
    ratio = np.mean(out[:, 1]) / np.std(out[:, 0], ddof=1)
    assert 0.8 < ratio < 1.25, ratio
    assert fm.kid_subsets(100, 200, 100, 100) == (10, 10)


def test_kid_subsets_are_disjoint_keep_the_asked_size_where_ten_fit_and_at_least_two():
    for n_a, n_b, k, m in [
        (50_000, 60_000, 100, 1000),
        (10_000, 10_000, 100, 1000),
        (100, 200, 100, 100),
        (8, 10, 100, 8),
        (6, 6, 3, 3),
        (40, 40, 2, 20),
        (4, 1000, 100, 1000),
    ]:
        got_k, got_m = fm.kid_subsets(n_a, n_b, k, m)
        assert 2 <= got_k <= k and 2 <= got_m <= m and got_k * got_m <= min(n_a, n_b), (n_a, n_b, k, m)
        assert (got_m == m) == (min(n_a, n_b) // m >= min(k, fm.KID_MIN_SUBSETS)), (n_a, n_b, k, m, got_m)
        assert got_k == min(k, min(n_a, n_b) // got_m)
    assert fm.kid_subsets(50_000, 60_000, 100, 1000) == (50, 1000)
    with pytest.raises(ValueError, match=">= 4 rows each"):
        fm.kid_subsets(3, 100, 100, 1000)


def test_kid_rejects_bad_input():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="a has 3 features, b has 4"):
        fid.kid_from_features(x, np.zeros((10, 4)))
    with pytest.raises(ValueError, match=r"b must be finite features \[N, F\]"):
        fid.kid_from_features(x, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="num_subsets >= 2"):
        fid.kid_from_features(x, x, num_subsets=1)


def test_fid_of_fewer_samples_than_features_is_finite_and_zero_for_one_set():
    """N < F (covariances of rank N - 1, as at N = 8 Inception features): no complex square roots, FID(x, x) = 0."""
    rng = np.random.default_rng(9)
    x, y = np.abs(rng.standard_normal((8, 64))), np.abs(rng.standard_normal((8, 64)))
    assert fid.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-7 * np.trace(np.cov(x, rowvar=False)))
    assert 0 < fid.fid_from_features(x, y) < np.inf
