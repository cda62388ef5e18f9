"""Closed forms of the diffusion checked against Bayes' rule, Monte Carlo and the normal CDF."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vdm import diffusion as D


def _alpha_sigma64(g):
    g = np.asarray(g, np.float64)
    return np.sqrt(1 / (1 + np.exp(g))), np.sqrt(1 / (1 + np.exp(-g)))


@pytest.mark.parametrize("gamma_s,gamma_t", [(-6.0, -2.0), (-1.0, 0.5), (2.0, 4.0), (-10.0, 3.0)])
def test_posterior_is_bayes_rule_on_a_grid(gamma_s, gamma_t):
    """q(z_s|z_t,x) = q(z_t|z_s) q(z_s|x) / q(z_t|x), evaluated numerically on a fine grid of z_s."""
    x, z_t = 0.37, -0.81
    a_s, s_s = _alpha_sigma64(gamma_s)
    a_t, s_t = _alpha_sigma64(gamma_t)
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    zs = np.linspace(a_s * x - 12 * s_s, a_s * x + 12 * s_s, 200001)
    log_joint = (
        stats.norm.logpdf(z_t, a_ts * zs, np.sqrt(var_ts))
        + stats.norm.logpdf(zs, a_s * x, s_s)
        - stats.norm.logpdf(z_t, a_t * x, s_t)
    )
    density = np.exp(log_joint)
    dz = zs[1] - zs[0]
    assert np.sum(density) * dz == pytest.approx(1.0, abs=1e-6)  # Bayes' rule normalises
    mean, var = D.posterior(jnp.float32(z_t), jnp.float32(x), jnp.float32(gamma_s), jnp.float32(gamma_t))
    grid_mean = np.sum(zs * density) * dz
    grid_var = np.sum((zs - grid_mean) ** 2 * density) * dz
    assert float(mean) == pytest.approx(grid_mean, rel=1e-4, abs=1e-6)
    assert float(var) == pytest.approx(grid_var, rel=1e-4)
    # And pointwise: the library's Gaussian is the Bayes density.
    idx = np.argsort(np.abs(zs - grid_mean))[:1000:97]
    np.testing.assert_allclose(stats.norm.pdf(zs[idx], float(mean), math.sqrt(float(var))), density[idx], rtol=2e-4)


def test_posterior_stable_as_s_approaches_t():
    """var = sigma_s^2 (1 - SNR_t/SNR_s) ~ sigma_s^2 (gamma_t - gamma_s) to first order, with no cancellation."""
    gamma_t = jnp.float32(1.3)
    for delta in [1e-2, 1e-4, 1e-6]:
        gamma_s = gamma_t - jnp.float32(delta)
        mean, var = D.posterior(jnp.float32(0.2), jnp.float32(-0.5), gamma_s, gamma_t)
        _, s_s = _alpha_sigma64(float(gamma_s))
        d = float(gamma_t) - float(gamma_s)  # the float32 difference actually represented
        expected = s_s**2 * -math.expm1(-d)
        assert float(var) == pytest.approx(expected, rel=1e-4)
        # DDPM eq. 7 form of the mean: (alpha_t|s sigma_s^2 / sigma_t^2) z_t + (alpha_s sigma_t|s^2 / sigma_t^2) x.
        a_s, _ = _alpha_sigma64(float(gamma_s))
        a_t, s_t = _alpha_sigma64(float(gamma_t))
        var_ts = -math.expm1(math.log1p(math.exp(float(gamma_s))) - math.log1p(math.exp(float(gamma_t))))
        expected_mean = (a_t / a_s) * s_s**2 / s_t**2 * 0.2 + a_s * var_ts / s_t**2 * -0.5
        assert float(mean) == pytest.approx(expected_mean, rel=1e-5)


def test_posterior_exact_at_gamma_s_minus_infinity():
    x = jnp.array([-1.0, 0.25, 0.9])
    z_t = jnp.array([0.3, -2.0, 1.0])
    mean, var = D.posterior(z_t, x, -jnp.inf, jnp.float32(2.0))
    assert np.array_equal(np.asarray(mean), np.asarray(x))
    assert np.all(np.asarray(var) == 0.0)


def test_transition_composes_with_marginal():
    """q(z_t|x) = int q(z_t|z_s) q(z_s|x): a^2 sigma_s^2 + v = sigma_t^2, a alpha_s = alpha_t."""
    gs, gt = jnp.float32(-3.0), jnp.float32(1.5)
    a, v = D.transition(gs, gt)
    a_s, s_s = _alpha_sigma64(-3.0)
    a_t, s_t = _alpha_sigma64(1.5)
    assert float(a) * a_s == pytest.approx(a_t, rel=1e-5)
    assert float(a) ** 2 * s_s**2 + float(v) == pytest.approx(s_t**2, rel=1e-5)


def test_kl_normal_matches_monte_carlo():
    rng = np.random.default_rng(0)
    for m1, v1, m2, v2 in [(0.0, 1.0, 0.5, 2.0), (1.0, 0.3, -0.2, 0.7), (-2.0, 4.0, 0.0, 1.0)]:
        n = 400_000
        x = rng.normal(m1, math.sqrt(v1), n)
        log_ratio = stats.norm.logpdf(x, m1, math.sqrt(v1)) - stats.norm.logpdf(x, m2, math.sqrt(v2))
        mc, se = log_ratio.mean(), log_ratio.std() / math.sqrt(n)
        kl = float(D.kl_normal(jnp.float32(m1), jnp.float32(v1), jnp.float32(m2), jnp.float32(v2)))
        assert abs(kl - mc) < 4 * se, (kl, mc, se)


def test_normal_logpdf_and_prior_kl_closed_forms():
    x = jnp.array([[0.3, -1.2, 0.0]])
    np.testing.assert_allclose(D.normal_logpdf(x, 0.1, 0.7), stats.norm.logpdf(x, 0.1, math.sqrt(0.7)), rtol=1e-5)
    g1 = 4.0
    a1, s1 = _alpha_sigma64(g1)
    expected = np.sum(np.log(1 / s1) + (s1**2 + (a1 * np.asarray(x)) ** 2) / 2 - 0.5)
    assert float(D.prior_kl(x, jnp.float32(g1))[0]) == pytest.approx(expected, rel=1e-5)


def test_categorical_decoder_normalises_and_prefers_nearest_bin():
    k = jnp.arange(256)
    x = k / 127.5 - 1.0
    key = jax.random.PRNGKey(0)
    z_0 = jax.random.uniform(key, (5,), minval=-1.2, maxval=1.2)
    for gamma_0 in [-13.3, -6.0, 0.0]:
        lp = D.categorical_log_probs(z_0, jnp.float32(gamma_0))
        np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)
        a0 = math.sqrt(1 / (1 + math.exp(gamma_0)))
        nearest = np.argmin(np.abs(np.asarray(z_0)[:, None] / a0 - np.asarray(x)[None]), axis=1)
        assert np.array_equal(np.argmax(np.asarray(lp), -1), nearest)
    # Per-example log-prob via decoder_log_prob agrees with the table and sums over dims.
    xs = jnp.array([[x[3], x[200]]])
    zs = jnp.array([[x[3], x[200]]]) * math.sqrt(1 / (1 + math.exp(-8.0)))
    table = D.categorical_log_probs(zs, jnp.float32(-8.0))
    assert float(D.decoder_log_prob(xs, zs, jnp.float32(-8.0), "discrete")[0]) == pytest.approx(
        float(table[0, 0, 3] + table[0, 1, 200]), rel=1e-6
    )


def test_discretized_gaussian_bins_and_edges():
    xs = jnp.arange(256) / 127.5 - 1.0
    for mean, scale in [(0.0, 0.3), (0.97, 0.01), (-1.3, 0.2), (5.0, 1.0)]:
        lp = D.discretized_gaussian_log_prob(xs, jnp.float32(mean), jnp.log(jnp.float32(scale)))
        assert float(jnp.exp(lp).sum()) == pytest.approx(1.0, abs=1e-5)
        x64 = np.arange(256) / 127.5 - 1.0
        upper = np.where(np.arange(256) == 255, np.inf, x64 + 1 / 255)
        lower = np.where(np.arange(256) == 0, -np.inf, x64 - 1 / 255)
        expected = stats.norm.cdf(upper, mean, scale) - stats.norm.cdf(lower, mean, scale)
        ok = expected > 1e-30
        np.testing.assert_allclose(np.exp(np.asarray(lp, np.float64))[ok], expected[ok], rtol=2e-4, atol=1e-7)
    # Edge bins are open: mass beyond +-1 belongs to them.
    lp_top = D.discretized_gaussian_log_prob(jnp.float32(1.0), jnp.float32(5.0), jnp.float32(0.0))
    assert float(lp_top) == pytest.approx(stats.norm.logsf(1 - 1 / 255, 5.0, 1.0), abs=1e-6)
    lp_bot = D.discretized_gaussian_log_prob(jnp.float32(-1.0), jnp.float32(0.0), jnp.log(jnp.float32(0.5)))
    assert float(lp_bot) == pytest.approx(math.log(0.5 * (1 + math.erf((-1 + 1 / 255) / 0.5 / math.sqrt(2)))), rel=1e-5)
    # Far tails stay finite and accurate (both sides of the mean).
    for x, mean in [(-1.0 + 2 / 255 * 10, 0.9), (0.9, -0.2)]:
        lp = float(D.discretized_gaussian_log_prob(jnp.float32(x), jnp.float32(mean), jnp.log(jnp.float32(0.05))))
        lo, hi = (x - 1 / 255 - mean) / 0.05, (x + 1 / 255 - mean) / 0.05
        ref = (
            stats.norm.logcdf(hi) + np.log(-np.expm1(stats.norm.logcdf(lo) - stats.norm.logcdf(hi)))
            if mean > x
            else stats.norm.logsf(lo) + np.log(-np.expm1(stats.norm.logsf(hi) - stats.norm.logsf(lo)))
        )
        assert np.isfinite(lp) and lp == pytest.approx(ref, rel=1e-4)


def test_gaussian_decoder_is_the_rescaled_normal():
    x = jnp.array([[0.1, -0.4]])
    g0 = -5.0
    a0 = math.sqrt(1 / (1 + math.exp(g0)))
    z0 = jnp.array([[0.12, -0.35]])
    expected = stats.norm.logpdf(np.asarray(x), np.asarray(z0) / a0, math.exp(g0 / 2)).sum()
    assert float(D.decoder_log_prob(x, z0, jnp.float32(g0), "gaussian")[0]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="valid: categorical, discretized_gaussian, gaussian"):
        D.decoder_log_prob(x, z0, jnp.float32(g0), "bernoulli")


def test_decoder_names_are_the_config_names_and_discrete_is_the_contracts_name_for_categorical():
    assert tuple(D.DECODERS) == ("categorical", "discretized_gaussian", "gaussian")
    x = jnp.asarray(np.array([[3, 200, 127]]) / 127.5 - 1.0, jnp.float32)
    z0 = x * 0.99 + jnp.float32(0.004)
    g0 = jnp.float32(-7.0)
    cat = D.decoder_log_prob(x, z0, g0, "categorical")
    np.testing.assert_array_equal(np.asarray(D.decoder_log_prob(x, z0, g0, "discrete")), np.asarray(cat))
    np.testing.assert_array_equal(np.asarray(D.decoder_log_prob(x, z0, g0)), np.asarray(cat))  # the default
    table = D.categorical_log_probs(z0, g0)
    assert float(cat[0]) == pytest.approx(float(table[0, 0, 3] + table[0, 1, 200] + table[0, 2, 127]), rel=1e-6)
    assert (
        D.resolve_decoder("discrete") == "categorical" and "discrete" not in D.DECODERS
    )  # an alias, not a config value
    for bad in ("Categorical", "discretised_gaussian", "", None):
        assert bad not in D.DECODERS
        with pytest.raises(ValueError, match="valid: categorical, discretized_gaussian, gaussian"):
            D.resolve_decoder(bad)


def test_contract_functions_jit_and_stay_float32():
    f32 = lambda *s: jnp.ones(s, jnp.float32) * 0.3
    x, z, g = f32(2, 4), f32(2, 4), jnp.full((2, 1), -2.0, jnp.float32)
    outs = [
        jax.jit(D.q_sample)(x, g, z),
        *jax.jit(D.posterior)(z, x, g - 1.0, g),
        jax.jit(D.kl_normal)(x, f32(2, 4), z, f32(2, 4) * 2),
        jax.jit(D.prior_kl)(x, g),
        *[jax.jit(lambda x, z, g, d=d: D.decoder_log_prob(x, z, g, d))(x, z, g) for d in D.DECODERS],
    ]
    assert all(o.dtype == jnp.float32 for o in outs)
    with pytest.raises(ValueError, match="per-example"):
        D.expand_to(jnp.ones(3), x)
