"""Schedules against their definitions: endpoints, monotonicity, DDPM/improved-DDPM constants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import schedules as S

ALL = {"linear_logsnr": S.linear_logsnr(), "cosine": S.cosine(), "ddpm_linear": S.ddpm_linear()}


@pytest.mark.parametrize("name", sorted(ALL))
def test_gamma_is_monotone_and_finite(name):
    t = jnp.linspace(0.0, 1.0, 20001)
    g = np.asarray(ALL[name](t), np.float64)
    assert np.all(np.isfinite(g))
    assert np.all(np.diff(g) >= 0)
    # Strictly increasing away from the documented cosine clip (t < 2e-9, t > 1 - 3e-5).
    interior = (t > 1e-4) & (t < 1 - 1e-4)
    assert np.all(np.diff(g[np.asarray(interior)]) > 0)


def test_documented_endpoints():
    np.testing.assert_allclose(ALL["linear_logsnr"](jnp.array([0.0, 1.0])), [-13.3, 5.0], rtol=1e-6)
    np.testing.assert_allclose(ALL["cosine"](jnp.array([0.0, 1.0])), [-20.0, 20.0])
    g = S.ddpm_linear()
    gamma_1, gamma_2 = float(g(1e-3)), float(g(2e-3))
    assert float(g(0.0)) == pytest.approx(2 * gamma_1 - gamma_2, rel=1e-5)


def test_ddpm_linear_final_alphas_cumprod():
    """DDPM's linear betas, T=1000: abar_T = prod(1 - beta_i) = 4.0358e-5."""
    abar_T = float(jax.nn.sigmoid(-S.ddpm_linear()(1.0)))
    assert f"{abar_T:.4e}" == "4.0358e-05"


def test_ddpm_linear_exact_on_grid():
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)  # float64 product, DDPM eq. 4
    i = np.arange(1, 1001)
    got = np.asarray(S.ddpm_linear()(jnp.asarray(i / 1000, jnp.float32)), np.float64)
    np.testing.assert_allclose(got, np.log((1 - abar) / abar), rtol=2e-5, atol=2e-5)


def test_cosine_matches_improved_ddpm_definition():
    s = 0.008
    t = np.random.default_rng(0).uniform(1e-3, 1 - 1e-3, 200)
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    abar = f(t) / f(0.0)
    expected = np.log(1 - abar) - np.log(abar)
    got = np.asarray(S.cosine()(jnp.asarray(t, jnp.float32)), np.float64)
    # float32 t carries ~6e-8 relative error; gamma' <= ~1e3 on this range.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)


def test_alpha_sigma_variance_preserving_and_limits():
    g = jnp.array([-jnp.inf, -30.0, -2.0, 0.0, 3.0, 30.0])
    a, s = S.alpha_sigma(g)
    np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=1e-6)
    assert float(a[0]) == 1.0 and float(s[0]) == 0.0
    np.testing.assert_allclose(np.asarray(a**2 / s**2)[1:5], np.exp(-np.asarray(g)[1:5]), rtol=1e-5)
    np.testing.assert_allclose(S.snr(g[1:]), np.exp(-np.asarray(g[1:])), rtol=1e-6)


def test_edm_sigma_mapping():
    g = jnp.linspace(-12.0, 8.0, 11)
    a, s = S.alpha_sigma(g)
    np.testing.assert_allclose(S.gamma_to_edm_sigma(g), s / a, rtol=1e-5)
    np.testing.assert_allclose(S.edm_sigma_to_gamma(S.gamma_to_edm_sigma(g)), g, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL))
def test_dgamma_dt_matches_finite_differences(name):
    t = jnp.array([0.1, 0.3, 0.55, 0.8], jnp.float32)
    g, dg = S.dgamma_dt(ALL[name], t)
    h = 1e-3 if name != "ddpm_linear" else 0.5e-3  # ddpm is linear within each 1/T cell
    fd = (np.asarray(ALL[name](t + h), np.float64) - np.asarray(ALL[name](t - h), np.float64)) / (2 * h)
    np.testing.assert_allclose(g, ALL[name](t))
    np.testing.assert_allclose(dg, fd, rtol=2e-2)


def test_schedules_jit_and_float32():
    t = jnp.linspace(0, 1, 7)
    for name, sched in ALL.items():
        out = jax.jit(sched)(t)
        assert out.dtype == jnp.float32, name
        np.testing.assert_allclose(out, sched(t), rtol=1e-5, atol=1e-6)


def test_bad_schedule_arguments_fail_clearly():
    with pytest.raises(ValueError, match="choose one of"):
        S.get_schedule("linear")
    with pytest.raises(ValueError, match="gamma_max > gamma_min"):
        S.linear_logsnr(5.0, -1.0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.from_alphas_cumprod([0.5, 0.9])


def test_cosine_is_finite_on_the_discrete_grid_under_jit():
    """jit may round 1 - i/T slightly below zero at t = 1; the schedule must stay at its clip, not NaN."""
    i = jnp.arange(0, 11, dtype=jnp.float32)
    g = jax.jit(lambda i: S.cosine()(i / 10.0))(i)
    assert np.all(np.isfinite(np.asarray(g)))
    assert float(g[-1]) == 20.0 and float(g[0]) == -20.0
