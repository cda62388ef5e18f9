"""The latent-diffusion bound (vdm.core.latent, vdm.tasks.latent_task) against exact answers of linear-Gaussian models.

Truths used, all computed independently in numpy float64 / scipy:
- probabilistic PCA, z ~ N(0, I_k), x | z ~ N(W z + b, s^2 I_D): the exact -log p(x) = -log N(x; b, W W^T + s^2 I),
  the exact posterior q*(z | x) = N(M^-1 W^T (x - b), s^2 M^-1), M = W^T W + s^2 I, and the bound's gap
  E_q[bound] + log p(x) = KL(q || q*) in closed form;
- the diffusion prior's -ELBO of u ~ N(0, c^2) under the exact denoiser, whose expectation over eps, eps_0 and
  t is a 1-D integral in gamma (computed with scipy.integrate.quad), so the diffusion prior's endpoint gap is known;
- the binned Gaussian and the 256-way categorical decoders via scipy.stats.norm and a numpy log_softmax;
- the decoded moments of latent samples through a linear decoder, x ~ N(A mu_z + b, A Sigma_z A^T).

Monte-Carlo agreement is asserted within 4 standard errors (SE = sample std / sqrt(n)) of the exact value. Note
that vdm.core.latent's bound uses the encoder's entropy -H(q) = E_q[log q], not log q(z) per draw, so even at q = q* the
per-draw total varies with z; it is log p(x | z) + log p(z) - log q*(z | x) that is constant (= log p(x)).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from vdm import objectives as O
from vdm import schedules as S
from vdm.core import analytic as A
from vdm.core import encoding as enc
from vdm.core import latent as L
from vdm.tasks.latent_task import sample_and_decode

LOG_2PI = math.log(2.0 * math.pi)
D_X, K_Z = 6, 3  # the PPCA model: x in R^6, z in R^3
NOISE_STD = 0.3  # s, the decoder's std
GAMMA_MIN, GAMMA_MAX = -13.3, 5.0


# ----------------------------------------------------------------------------- the PPCA model (numpy float64)


def ppca(orthogonal: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W [D, k], b [D]): random W; with orthogonal=True, orthogonal columns of unequal norms (W^T W diagonal)."""
    rng = np.random.default_rng(seed)
    if orthogonal:
        q, _ = np.linalg.qr(rng.normal(size=(D_X, K_Z)))
        w = q * np.array([1.5, 0.8, 0.4])
    else:
        w = rng.normal(size=(D_X, K_Z)) * 0.7
    return w, rng.normal(size=D_X) * 0.5


def exact_nll(x: np.ndarray, w: np.ndarray, b: np.ndarray, s: float = NOISE_STD) -> float:
    """-log N(x; b, W W^T + s^2 I), the marginal of PPCA."""
    cov = w @ w.T + s**2 * np.eye(len(b))
    r = x - b
    return 0.5 * (len(b) * LOG_2PI + np.linalg.slogdet(cov)[1] + r @ np.linalg.solve(cov, r))


def exact_posterior(x: np.ndarray, w: np.ndarray, b: np.ndarray, s: float = NOISE_STD):
    """(mean [k], cov [k, k]) of q*(z | x) = N(M^-1 W^T (x - b), s^2 M^-1), M = W^T W + s^2 I."""
    m = w.T @ w + s**2 * np.eye(w.shape[1])
    return np.linalg.solve(m, w.T @ (x - b)), s**2 * np.linalg.inv(m)


def kl_diag_full(mean: np.ndarray, var: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """KL(N(mean, diag var) || N(mean2, cov2)) in closed form."""
    prec = np.linalg.inv(cov2)
    d = mean2 - mean
    return 0.5 * (
        np.sum(np.diag(prec) * var) + d @ prec @ d - len(mean) + np.linalg.slogdet(cov2)[1] - np.sum(np.log(var))
    )


def draw_x(w: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """One x from the PPCA model."""
    rng = np.random.default_rng(seed)
    return w @ rng.normal(size=w.shape[1]) + b + NOISE_STD * rng.normal(size=len(b))


def three_term_bound(x, mean, log_var, w, b, eps, cross_entropy_fn):
    """vdm.core.latent's bound per draw: z = reparameterize(mean, log_var, eps) [n, k], the 'gaussian' decoder's
    reconstruction at W z + b, and cross_entropy_fn(z) [n] as -log p(z)."""
    n = eps.shape[0]
    mean = jnp.broadcast_to(jnp.asarray(mean, jnp.float32), (n, K_Z))
    log_var = jnp.broadcast_to(jnp.asarray(log_var, jnp.float32), (n, K_Z))
    z = L.reparameterize(mean, log_var, eps)
    out = jnp.concatenate(
        [
            z @ jnp.asarray(w.T, jnp.float32) + jnp.asarray(b, jnp.float32),
            jnp.full((n, D_X), math.log(NOISE_STD), jnp.float32),
        ],
        axis=-1,
    )
    xs = jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n, D_X))
    recon = -L.decoder_log_prob(xs, out, "gaussian")
    return L.bound_terms(recon, log_var, cross_entropy_fn(z))


def standard_normal_nll(z):
    """-log N(z; 0, I) per row (written out here, not taken from the library)."""
    return 0.5 * jnp.sum(LOG_2PI + jnp.square(z), axis=-1)


def mean_se(v) -> tuple[float, float]:
    """(mean, standard error) of a sample, in float64."""
    v = np.asarray(v, np.float64)
    return float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(v.size))


# ----------------------------------------------------------------------------- 1. the bound with the exact prior


def test_bound_is_exact_at_the_exact_posterior_of_ppca():
    """With W^T W diagonal the exact posterior q* is diagonal; at q = q* the three-term bound's MC mean equals the
    closed-form -log p(x) within 4 SE, and with log q*(z) in place of -H(q*) every single draw equals it."""
    w, b = ppca(orthogonal=True)
    for seed in range(3):
        x = draw_x(w, b, seed + 10)
        m, cov = exact_posterior(x, w, b)
        assert np.allclose(cov, np.diag(np.diag(cov)), atol=1e-12)  # q* is diagonal for this W
        var = np.diag(cov)
        eps = jax.random.normal(jax.random.PRNGKey(seed), (20000, K_Z))
        terms = three_term_bound(x, m, np.log(var), w, b, eps, standard_normal_nll)
        exact = exact_nll(x, w, b)
        mean, se = mean_se(terms["total"])
        assert abs(mean - exact) < 4 * se, (mean, exact, se)
        # -H(q) is E_q[log q], not log q(z) per draw, so the total varies with z; with the per-draw log q*(z)
        # log p(x|z) + log p(z) - log q*(z|x) = log p(x) for every z (float32 round-off only).
        z = m + np.sqrt(var) * np.asarray(eps, np.float64)
        log_q = -0.5 * np.sum(LOG_2PI + np.log(var) + (z - m) ** 2 / var, axis=-1)
        per_draw = (
            np.asarray(terms["reconstruction"], np.float64) + np.asarray(terms["cross_entropy"], np.float64) + log_q
        )
        assert np.max(np.abs(per_draw - exact)) < 1e-4 * max(1.0, abs(exact)), np.max(np.abs(per_draw - exact))
        np.testing.assert_allclose(
            np.asarray(terms["total"]),
            np.asarray(terms["reconstruction"] + terms["neg_entropy"] + terms["cross_entropy"]),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            np.asarray(terms["neg_entropy"]), np.mean(log_q), atol=4 * np.std(log_q) / np.sqrt(log_q.size)
        )  # -H(q*) = E_q*[log q*], within 4 SE


@pytest.mark.parametrize("orthogonal", [True, False])
def test_bound_gap_of_a_wrong_encoder_is_kl_to_the_exact_posterior(orthogonal):
    """For a wrong diagonal q (shifted mean, wrong variances) the bound's MC mean is >= -log p(x) - 4 SE and
    its gap equals the closed-form KL(q || q*) within 4 SE (q* full-covariance for a general W)."""
    w, b = ppca(orthogonal, seed=1)
    x = draw_x(w, b, 3)
    m, cov = exact_posterior(x, w, b)
    mean_q = m + np.array([0.3, -0.2, 0.15])
    var_q = np.diag(cov) * np.array([2.0, 0.5, 1.5])
    terms = three_term_bound(
        x, mean_q, np.log(var_q), w, b, jax.random.normal(jax.random.PRNGKey(7), (40000, K_Z)), standard_normal_nll
    )
    mean, se = mean_se(terms["total"])
    exact = exact_nll(x, w, b)
    kl = kl_diag_full(mean_q, var_q, m, cov)
    assert kl > 10 * se  # the wrong encoder's gap is resolvable
    assert mean >= exact - 4 * se, (mean, exact, se)
    assert abs((mean - exact) - kl) < 4 * se, (mean - exact, kl, se)


# ----------------------------------------------------------------------------- 2. the diffusion prior, with a scale


def diffusion_gap_per_dim(second_moment: float, c: float, g0: float = GAMMA_MIN, g1: float = GAMMA_MAX) -> float:
    """E[-ELBO(u)] + log N(u; 0, c^2), one dimension, for u with E[u^2] = second_moment, under the exact denoiser of
    N(0, c^2), the 'gaussian' decoder and a linear schedule (t ~ U(0, 1), so gamma' dt = dgamma).

    With z_t = a u + sigma eps and eps_hat = sigma z_t / v, v = a^2 c^2 + sigma^2:
    E||eps - eps_hat||^2 = (a^4 c^4 + sigma^2 a^2 u^2) / v^2; reconstruction = 1/2 (log 2 pi + g0 + 1);
    prior = KL(N(a_1 u, sigma_1^2) || N(0, 1)); all linear in u^2.
    """

    def integrand(g):
        a2, s2 = 1.0 / (1.0 + math.exp(g)), 1.0 / (1.0 + math.exp(-g))
        v = a2 * c**2 + s2
        return 0.5 * (a2**2 * c**4 + s2 * a2 * second_moment) / v**2

    diff = integrate.quad(integrand, g0, g1, limit=200, epsabs=1e-12, epsrel=1e-10)[0]
    rec = 0.5 * (LOG_2PI + g0 + 1.0)
    a2, s2 = 1.0 / (1.0 + math.exp(g1)), 1.0 / (1.0 + math.exp(-g1))
    prior = 0.5 * (s2 + a2 * second_moment - 1.0 - math.log(s2))
    nll = 0.5 * (LOG_2PI + math.log(c**2) + second_moment / c**2)
    return rec + prior + diff - nll


def diffusion_cross_entropy_fn(c: float, key, schedule, num_t: int):
    """z [n, k] -> the latent diffusion's -ELBO of u = c z (vdm.objectives.neg_elbo_terms: the exact denoiser of
    N(0, c^2 I), the 'gaussian' decoder) minus scale_log_det(c, k), the bound's cross-entropy term, averaged per z
    over num_t stratified t = (j + u_z) / num_t (each with its own eps, eps_0): unbiased per z, independent across z."""
    data = A.GaussianData(mean=np.zeros(K_Z), std=np.full(K_Z, c))
    fn = A.denoise_fn(data, schedule, "eps")

    def cross_entropy(z):
        n = z.shape[0]
        k_t, k_e, k_0 = jax.random.split(key, 3)
        t = (jnp.arange(num_t)[None, :] + jax.random.uniform(k_t, (n, 1))) / num_t  # [n, num_t]
        u = jnp.repeat(c * z, num_t, axis=0)
        terms = O.neg_elbo_terms(
            fn,
            u,
            t.reshape(-1),
            jax.random.normal(k_e, u.shape),
            jax.random.normal(k_0, u.shape),
            schedule=schedule,
            parameterization="eps",
            decoder="gaussian",
        )
        return jnp.mean(terms["total"].reshape(n, num_t), axis=1) - L.scale_log_det(c, K_Z)

    return cross_entropy


SCALES = (1.0, 5.0)
N_Z, N_T = 60000, 32


@pytest.fixture(scope="module")
def diffusion_bounds():
    """Per scale c: the three-term bound's draws at q = q* for one x (common random numbers across c), and the
    closed-form E[total] = -log p(x) + the diffusion prior's endpoint gap."""
    w, b = ppca(orthogonal=True)
    x = draw_x(w, b, 11)
    m, cov = exact_posterior(x, w, b)
    var = np.diag(cov)
    eps = jax.random.normal(jax.random.PRNGKey(21), (N_Z, K_Z))
    schedule = S.linear_logsnr(GAMMA_MIN, GAMMA_MAX)
    out = {"exact": exact_nll(x, w, b)}
    for c in SCALES:
        ce = diffusion_cross_entropy_fn(c, jax.random.PRNGKey(22), schedule, N_T)
        total = np.asarray(
            jax.jit(lambda e: three_term_bound(x, m, np.log(var), w, b, e, ce)["total"])(eps), np.float64
        )
        # E_q[-ELBO(c z)] - k log c - E_q[-log N(z; 0, I)]: after the change of variables the -log N terms cancel,
        # leaving diffusion_gap_per_dim at E[u_i^2] = c^2 (m_i^2 + var_i).
        gap = sum(diffusion_gap_per_dim(c**2 * (m[i] ** 2 + var[i]), c) for i in range(K_Z))
        out[c] = {"total": total, "gap": gap}
    return out


@pytest.mark.parametrize("c", SCALES)
def test_diffusion_prior_bound_is_above_and_near_the_exact_nll(diffusion_bounds, c):
    """With the exact denoiser of u = c z as the prior, the three-term bound's mean is >= the exact PPCA -log p(x)
    - 4 SE and equals -log p(x) + the closed-form endpoint gap (1-D quadrature) within 4 SE, the gap being small."""
    r, exact = diffusion_bounds[c], diffusion_bounds["exact"]
    mean, se = mean_se(r["total"])
    assert mean >= exact - 4 * se, (mean, exact, se)
    assert abs(mean - (exact + r["gap"])) < 4 * se, (mean, exact, r["gap"], se)
    assert 0.0 <= r["gap"] < 0.01 * K_Z, r["gap"]  # < 0.01 nats per latent dim at gamma in [-13.3, 5]


def test_diffusion_prior_bound_does_not_depend_on_the_scale(diffusion_bounds):
    """The latent scale is a reparameterisation: with the exact denoiser for each c, the bound's means at c = 1 and
    c = 5 differ only by the closed-form difference of the endpoint gaps (the prior mismatch at gamma_max), within
    4 SE of the paired difference (common random numbers)."""
    lo, hi = diffusion_bounds[SCALES[0]], diffusion_bounds[SCALES[1]]
    mean, se = mean_se(hi["total"] - lo["total"])
    expected = hi["gap"] - lo["gap"]
    assert abs(mean - expected) < 4 * se, (mean, expected, se)
    assert abs(expected) < 0.01 * K_Z, expected


# ----------------------------------------------------------------------------- 3. closed forms of the encoder terms


def test_entropy_and_kl_match_closed_forms():
    """entropy(log_var) = 1/2 sum log(2 pi e sigma^2) and kl_standard_normal = 1/2 sum(mu^2 + sigma^2 - 1 - log
    sigma^2), summed over every non-batch dim of [B, H, W, C] latents, against numpy float64."""
    rng = np.random.default_rng(4)
    mean = rng.normal(size=(5, 2, 3, 4)).astype(np.float32)
    log_var = rng.uniform(-4.0, 2.0, size=(5, 2, 3, 4)).astype(np.float32)
    m64, lv64 = mean.astype(np.float64), log_var.astype(np.float64)
    ent = np.sum(0.5 * np.log(2 * np.pi * np.e * np.exp(lv64)), axis=(1, 2, 3))
    kl = np.sum(0.5 * (m64**2 + np.exp(lv64) - 1.0 - lv64), axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(L.entropy(jnp.asarray(log_var))), ent, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(L.kl_standard_normal(jnp.asarray(mean), jnp.asarray(log_var))), kl, rtol=1e-5, atol=1e-4
    )
    assert L.scale_log_det(5.0, 24) == pytest.approx(24 * math.log(5.0), rel=1e-12)
    assert L.scale_log_det(1.0, 24) == 0.0


def test_reconstruction_matches_its_closed_form_expectation():
    """E_q[-log N(x; W z + b, s^2 I)] by MC over z ~ N(mu, diag sigma^2) equals 1/2 D log(2 pi s^2) +
    (||x - W mu - b||^2 + tr(W diag(sigma^2) W^T)) / (2 s^2) within 4 SE."""
    w, b = ppca(orthogonal=False, seed=2)
    x = draw_x(w, b, 5)
    mu, var = np.array([0.4, -0.6, 0.2]), np.array([0.3, 0.05, 0.6])
    terms = three_term_bound(
        x, mu, np.log(var), w, b, jax.random.normal(jax.random.PRNGKey(3), (40000, K_Z)), standard_normal_nll
    )
    mean, se = mean_se(terms["reconstruction"])
    r = x - w @ mu - b
    expected = 0.5 * D_X * math.log(2 * math.pi * NOISE_STD**2) + (r @ r + np.trace(w @ np.diag(var) @ w.T)) / (
        2 * NOISE_STD**2
    )
    assert abs(mean - expected) < 4 * se, (mean, expected, se)
    np.testing.assert_allclose(
        np.asarray(terms["neg_entropy"]), -0.5 * np.sum(np.log(2 * np.pi * np.e * var)), rtol=1e-5
    )


# ----------------------------------------------------------------------------- 4. the 8-bit decoders


def binned_gaussian_log_prob(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, encoding: str) -> np.ndarray:
    """log of the N(mean, scale^2) mass of x's bin [x - Delta/2, x + Delta/2], edge bins open (float64, scipy)."""
    half = 0.5 * enc.bin_width(encoding)
    k = np.rint((x - enc.lowest_value(encoding)) / (2 * half)).astype(int)
    lo = np.where(k == 0, -np.inf, (x - half - mean) / scale)
    hi = np.where(k == 255, np.inf, (x + half - mean) / scale)
    upper = lo > 0  # both ends in the upper tail: use survival functions
    p = np.where(upper, stats.norm.sf(lo) - stats.norm.sf(hi), stats.norm.cdf(hi) - stats.norm.cdf(lo))
    return np.log(p)


@pytest.mark.parametrize("encoding", enc.ENCODINGS)
def test_discretized_gaussian_decoder_is_the_binned_normal_mass(encoding):
    """decoder_log_prob(..., 'discretized_gaussian') per pixel equals log(Phi(hi) - Phi(lo)) by scipy in float64,
    edge bins open, on images [B, H, W, C] with out = concat(mean, log_scale); its 256 masses sum to 1 per pixel."""
    rng = np.random.default_rng(6)
    shape = (64, 2, 2, 3)
    k = rng.integers(0, 256, size=shape)
    k[0, 0, 0] = [0, 255, 1]  # both edge bins and a neighbour
    x = enc.encode(k, encoding)
    scale = np.exp(rng.uniform(np.log(0.01), np.log(0.5), size=shape)).astype(np.float32)
    mean = (x + scale * rng.normal(scale=1.5, size=shape)).astype(np.float32)
    out = np.concatenate([mean, np.log(scale)], axis=-1)
    got = np.asarray(L.decoder_log_prob(jnp.asarray(x), jnp.asarray(out), "discretized_gaussian", encoding))
    ref = binned_gaussian_log_prob(
        x.astype(np.float64), mean.astype(np.float64), np.exp(np.log(scale).astype(np.float64)), encoding
    ).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-4)  # the other encoding is off by 0.05

    # normalisation: every one of 256 values for each of 8 (mean, scale) pixels
    p_mean = rng.uniform(-1.1, 1.1, size=8).astype(np.float32)
    p_scale = np.exp(rng.uniform(np.log(0.003), np.log(0.8), size=8)).astype(np.float32)
    grid = enc.encode(np.arange(256), encoding)
    xs = np.repeat(grid, 8)[:, None]
    o = np.stack([np.tile(p_mean, 256), np.tile(np.log(p_scale), 256)], axis=-1)
    lp = np.asarray(L.decoder_log_prob(jnp.asarray(xs), jnp.asarray(o), "discretized_gaussian", encoding))
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).reshape(256, 8).sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("encoding", enc.ENCODINGS)
def test_categorical_decoder_and_decoder_images(encoding):
    """'categorical' is the numpy log_softmax of channel c's 256 logits out[..., 256 c: 256 (c + 1)] at x's bin and
    sums to 1 over the 256 values; decoder_image's 'mean' is sum_k p_k x_k and 'argmax' the grid value of the top
    logit; the Gaussians' 'mean' is their mean and the binned one's 'argmax' its most likely value, by brute force."""
    rng = np.random.default_rng(8)
    b, h, w, ch = 4, 2, 3, 3
    logits = (rng.normal(size=(b, h, w, ch, 256)) * 3).astype(np.float32)
    out = logits.reshape(b, h, w, ch * 256)
    k = rng.integers(0, 256, size=(b, h, w, ch))
    x = enc.encode(k, encoding)
    l64 = logits.astype(np.float64)
    log_sm = l64 - l64.max(-1, keepdims=True)
    log_sm = log_sm - np.log(np.exp(log_sm).sum(-1, keepdims=True))
    ref = np.take_along_axis(log_sm, k[..., None], -1)[..., 0].sum(axis=(1, 2, 3))
    got = np.asarray(L.decoder_log_prob(jnp.asarray(x), jnp.asarray(out), "categorical", encoding))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)

    # normalisation over the 256 values of one pixel's logits
    one = np.broadcast_to(logits[0, 0, 0, 0], (256, 256))
    lp = np.asarray(
        L.decoder_log_prob(
            jnp.asarray(enc.encode(np.arange(256), encoding)[:, None]), jnp.asarray(one), "categorical", encoding
        )
    )
    assert abs(np.exp(lp.astype(np.float64)).sum() - 1.0) < 1e-5

    grid = enc.encode(np.arange(256), encoding).astype(np.float64)
    img_mean = np.asarray(L.decoder_image(jnp.asarray(out), "categorical", "mean", encoding))
    np.testing.assert_allclose(img_mean, np.exp(log_sm) @ grid, atol=1e-5)
    img_arg = np.asarray(L.decoder_image(jnp.asarray(out), "categorical", "argmax", encoding))
    np.testing.assert_allclose(img_arg, grid[np.argmax(logits, -1)], atol=1e-6)
    assert img_arg.shape == (b, h, w, ch)

    g_mean = rng.uniform(-1.3, 1.3, size=(b, h, w, ch)).astype(np.float32)
    g_out = jnp.asarray(np.concatenate([g_mean, np.full_like(g_mean, -3.0)], -1))
    np.testing.assert_array_equal(np.asarray(L.decoder_image(g_out, "gaussian", "mean", encoding)), g_mean)
    np.testing.assert_array_equal(np.asarray(L.decoder_image(g_out, "discretized_gaussian", "mean", encoding)), g_mean)
    # 'argmax': the most likely of all 256 values, by brute force over the binned normal masses (scipy, float64), with
    # scales up to e^0.5 and means beyond the edges, where an open edge bin can outweigh the mean's own bin.
    g_scale = rng.uniform(-5.0, 0.5, size=g_mean.shape)
    g_out = jnp.asarray(np.concatenate([g_mean, g_scale.astype(np.float32)], -1))
    sd, mu = np.exp(g_scale)[..., None], g_mean[..., None].astype(np.float64)
    half = 0.5 * float(np.diff(grid)[0])
    upper = np.where(np.arange(256) == 255, np.inf, (grid + half - mu) / sd)
    lower = np.where(np.arange(256) == 0, -np.inf, (grid - half - mu) / sd)
    brute = grid[np.argmax(stats.norm.cdf(upper) - stats.norm.cdf(lower), -1)]
    np.testing.assert_allclose(
        np.asarray(L.decoder_image(g_out, "discretized_gaussian", "argmax", encoding)), brute, atol=1e-6
    )


# ----------------------------------------------------------------------------- 5. latent sampling and decoding

LATENT_SHAPE = (2, 2, 2)
N_SAMPLES = 4000


@pytest.mark.parametrize("method,steps", [("ancestral", 200), ("ddim", 100)])
def test_latent_samples_decode_to_the_exact_gaussian(method, steps):
    """z ~ N(mu_z, R diag(s^2) R^T) on [2, 2, 2] latents, the diffusion on u = c z (c = 5) with u's exact denoiser,
    and a linear decoder x = A z + b: sample_and_decode's draws have mean A mu_z + b and covariance A Sigma_z A^T
    within 4 SE per entry, so the scale is undone (once) before decoding."""
    c = 5.0
    dim = int(np.prod(LATENT_SHAPE))
    rng = np.random.default_rng(9)
    rot, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    std_z = rng.uniform(0.12, 0.3, size=dim)  # u = c z at about unit spread, as the latent scale intends
    mu_z = rng.uniform(-0.04, 0.04, size=dim)
    sigma_z = rot @ np.diag(std_z**2) @ rot.T
    a_mat, b_vec = rng.normal(size=(4, dim)), rng.normal(size=4)
    schedule = S.linear_logsnr(GAMMA_MIN, GAMMA_MAX)
    exact = A.denoise_fn(A.GaussianData(mean=c * mu_z, std=c * std_z, rotation=rot), schedule, "eps")

    def denoise(z, t):
        return exact(z.reshape(z.shape[0], dim), t).reshape(z.shape)

    def decode(z):
        return z.reshape(z.shape[0], dim) @ jnp.asarray(a_mat.T, jnp.float32) + jnp.asarray(b_vec, jnp.float32)

    run = jax.jit(
        lambda key: sample_and_decode(
            denoise,
            decode,
            (N_SAMPLES,) + LATENT_SHAPE,
            key,
            scale=c,
            schedule=schedule,
            method=method,
            num_steps=steps,
        )
    )
    xs = np.asarray(run(jax.random.PRNGKey(13)), np.float64)
    assert xs.shape == (N_SAMPLES, 4)
    true_mean = a_mat @ mu_z + b_vec
    true_cov = a_mat @ sigma_z @ a_mat.T
    z_mean = (xs.mean(0) - true_mean) / np.sqrt(np.diag(true_cov) / N_SAMPLES)
    assert np.all(np.abs(z_mean) < 4), z_mean
    cov = np.cov(xs, rowvar=False)
    se = np.sqrt((np.outer(np.diag(true_cov), np.diag(true_cov)) + true_cov**2) / N_SAMPLES)
    z_cov = (cov - true_cov) / se
    assert np.all(np.abs(z_cov) < 4), z_cov
