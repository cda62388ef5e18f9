"""The adaptive noise schedule (vdm.core.t_sampling) and schedules.inverse against independent truths.

Monte-Carlo checks use fixed seeds and assert agreement within 4 standard errors; closed forms are
derived here (float64 numpy), never taken from the code under test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from conftest import REPO_ROOT
from vdm import schedules as S
from vdm.core import t_sampling as T

SCHEDULES = {"linear_logsnr": S.linear_logsnr(), "cosine": S.cosine(), "ddpm_linear": S.ddpm_linear()}


def _ends(schedule):
    """(gamma(0), gamma(1)) as floats."""
    g = np.asarray(schedule(jnp.asarray([0.0, 1.0])), np.float64)
    return float(g[0]), float(g[1])


def _cosine_gamma64(t, s=0.008):
    """Improved-DDPM cosine gamma = log((1 - abar)/abar), abar = cos^2(a)/cos^2(a0), float64, unclipped.

    a = (t+s)/(1+s) pi/2, a0 = a(0); 1 - abar = (cos^2 a0 - cos^2 a)/cos^2 a0 = sin(a - a0) sin(a + a0)/cos^2 a0
    (cos^2 x - cos^2 y = sin(y - x) sin(y + x)), so 1 - abar has no cancellation at small t.
    """
    c = np.pi / 2 / (1 + s)
    t = np.asarray(t, np.float64)
    return np.log(np.sin(t * c)) + np.log(np.sin((t + 2 * s) * c)) - 2 * np.log(np.sin((1 - t) * c))


# ----------------------------------------------------------------------------- inverse


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_inverse_round_trips(name):
    schedule = SCHEDULES[name]
    g0, g1 = _ends(schedule)
    g = jnp.linspace(g0, g1, 2001, dtype=jnp.float32).reshape(23, 87)  # any shape
    t = jax.jit(lambda x: S.inverse(schedule, x))(g)
    assert t.shape == g.shape and bool(jnp.all((t >= 0) & (t <= 1)))
    _, dgamma = S.dgamma_dt(schedule, t)
    # float32 t resolves gamma only to gamma'(t) * ulp(t) (cosine: ~4e-3 at t = 1 - 3e-5, where gamma' ~ 7e4).
    tol = 2e-6 * (1 + np.abs(np.asarray(g))) + 2 * np.asarray(dgamma) * np.spacing(np.asarray(t))
    assert np.all(np.abs(np.asarray(schedule(t)) - np.asarray(g)) <= tol)


def test_inverse_of_linear_logsnr_is_the_closed_form_and_clips():
    gmin, gmax = -13.3, 5.0
    g = jnp.linspace(gmin, gmax, 501)
    t = S.inverse(S.linear_logsnr(gmin, gmax), g)
    np.testing.assert_allclose(t, (np.asarray(g, np.float64) - gmin) / (gmax - gmin), atol=3e-7)
    np.testing.assert_allclose(
        S.inverse(S.linear_logsnr(gmin, gmax), jnp.asarray([-50.0, 50.0])), [0.0, 1.0], atol=1e-7
    )


# ----------------------------------------------------------------------------- bin_probs


def test_bin_probs_mixing_floor_and_proportionality():
    rng = np.random.default_rng(0)
    K = 12
    counts = rng.integers(1, 9, K).astype(np.float32)
    h = rng.uniform(0.1, 3.0, K)
    hist = {"sums": jnp.asarray(h * counts, jnp.float32), "counts": jnp.asarray(counts)}
    for m in (0.0, 0.1, 0.5):
        p = np.asarray(T.bin_probs(hist, m), np.float64)
        assert abs(p.sum() - 1) < 1e-6 and np.all(p >= m / K * (1 - 1e-6))
        np.testing.assert_allclose(p, (1 - m) * h / h.sum() + m / K, rtol=1e-5)
    np.testing.assert_allclose(T.bin_probs(T.init_histogram(K), 0.0), np.full(K, 1 / K), rtol=1e-6)
    np.testing.assert_allclose(T.bin_probs(T.init_histogram(K), 0.3), np.full(K, 1 / K), rtol=1e-6)


def test_bin_probs_unvisited_bins_get_the_largest_visited_h_and_negative_or_nan_are_guarded():
    hist = {"sums": jnp.asarray([2.0, 0.0, 9.0, -1.0, jnp.nan]), "counts": jnp.asarray([1.0, 0.0, 3.0, 1.0, 2.0])}
    p = np.asarray(T.bin_probs(hist, 0.0), np.float64)  # h = 2, (max = 3), 3, (negative -> ~0), (nan -> 3)
    np.testing.assert_allclose(p[[0, 1, 2, 4]], np.array([2, 3, 3, 3]) / 11, rtol=1e-5)
    assert 0 < p[3] < 1e-10 and np.all(np.isfinite(p))


# ----------------------------------------------------------------------------- draw


def _nonuniform_probs(K, seed=0):
    p = np.random.default_rng(seed).uniform(0.05, 1.0, K)
    return jnp.asarray(p / p.sum(), jnp.float32)


def test_draw_bin_frequencies_match_probs_and_stratified_u_gives_stratified_bins():
    schedule = S.cosine()
    K, N = 16, 200_000
    probs = _nonuniform_probs(K)
    edges = T.lambda_edges(*_ends(schedule), K)
    ku, ki = jax.random.split(jax.random.PRNGKey(1))
    d = jax.jit(T.draw, static_argnums=4)(
        jax.random.uniform(ku, (N,)), jax.random.uniform(ki, (N,)), probs, edges, schedule
    )
    assert d["bin"].dtype == jnp.int32
    freq = np.bincount(np.asarray(d["bin"]), minlength=K) / N
    p = np.asarray(probs, np.float64)
    se = np.sqrt(p * (1 - p) / N)
    assert np.all(np.abs(freq - p) < 4 * se), np.max(np.abs(freq - p) / se)
    lam, k = np.asarray(d["lam"]), np.asarray(d["bin"])
    e = np.asarray(edges)
    assert np.all((lam >= e[k] - 1e-5) & (lam <= e[k + 1] + 1e-5))
    B = 1000  # stratified: u_i = (i + u0) / B
    u = (jnp.arange(B) + 0.37) / B
    counts = np.bincount(np.asarray(T.draw(u, u, probs, edges, schedule)["bin"]), minlength=K)
    assert np.all(np.abs(counts - B * p) <= 1 + 1e-6), counts - B * p


@pytest.mark.parametrize("name", ["cosine", "ddpm_linear"])
def test_importance_weighted_integral_is_unbiased(name):
    """E_q[F(t)/q(t)] = integral_0^1 F dt = 1 for F = 3 t^2, with non-uniform bin probs.

    (The cosine draw never reaches its clipped flat stretches, t > 1 - 3e-5 and t < 2e-9, where gamma
    does not move: they carry ~1e-4 of this F's integral, below the standard error here.)
    """
    schedule = SCHEDULES[name]
    K, N = 20, 100_000
    probs = _nonuniform_probs(K, seed=3)
    edges = T.lambda_edges(*_ends(schedule), K)
    u = jax.random.uniform(jax.random.PRNGKey(2), (2, N))
    d = T.draw(u[0], u[1], probs, edges, schedule)
    w = 3 * np.asarray(d["t"], np.float64) ** 2 / np.asarray(d["density"], np.float64)
    se = w.std(ddof=1) / math.sqrt(N)
    assert abs(w.mean() - 1.0) < 4 * se, (w.mean(), se)
    assert se < 0.02


def test_draw_density_is_the_derivative_of_the_cdf_of_t():
    """q(t) from `draw` against a central difference of P(T <= t) = 1 - F_lambda(-gamma(t)), float64, cosine.

    F_lambda is the piecewise-linear CDF of the bin mixture; gamma is the cosine schedule derived again
    from abar = f(t)/f(0) in float64 numpy (the library's is float32 jnp, its gamma' by jvp).
    """
    schedule = S.cosine()
    K = 10
    probs = _nonuniform_probs(K, seed=5)
    g0, g1 = _ends(schedule)
    edges = T.lambda_edges(g0, g1, K)
    u = jax.random.uniform(jax.random.PRNGKey(3), (2, 400))
    d = T.draw(u[0], u[1], probs, edges, schedule)
    t = np.asarray(d["t"], np.float64)
    cum = np.concatenate([[0.0], np.cumsum(np.asarray(probs, np.float64))])
    e = np.linspace(-g1, -g0, K + 1)
    cdf_t = lambda x: 1.0 - np.interp(-_cosine_gamma64(x), e, cum)
    h = 1e-6 * np.minimum(t, 1 - t)
    fd = (cdf_t(t + h) - cdf_t(t - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(d["density"], np.float64), fd, rtol=2e-3)  # observed max 2e-6
    np.testing.assert_allclose(_cosine_gamma64(t), -np.asarray(d["lam"], np.float64), rtol=1e-3, atol=1e-3)


def test_draw_is_finite_at_flat_ends_and_passes_no_gradient():
    schedule = S.cosine()
    K = 8
    probs = _nonuniform_probs(K, seed=7)
    edges = T.lambda_edges(*_ends(schedule), K)
    u_bin = jnp.asarray([0.0, 0.0, 1.0 - 1e-7, 1.0 - 1e-7, 1.5, -0.5])  # also out of range: clipped
    u_in = jnp.asarray([0.0, 1.0 - 1e-7, 0.0, 1.0, 1.0, 0.0])
    d = T.draw(u_bin, u_in, probs, edges, schedule)
    assert np.all(np.isfinite(d["density"])) and np.all(np.asarray(d["density"]) > 0)
    assert np.all((np.asarray(d["bin"]) >= 0) & (np.asarray(d["bin"]) < K))
    assert np.all(np.isfinite(T.integrand(jnp.ones(6), d["density"], jnp.zeros(6))))
    grads = jax.grad(lambda p, e: jnp.sum(T.draw(u_bin, u_in, p, e, schedule)["density"]), argnums=(0, 1))(probs, edges)
    assert all(np.all(np.asarray(g) == 0) for g in grads)


# ----------------------------------------------------------------------------- the VDM++ property

D_GAUSS, S_GAUSS = 16, 0.1


def _gaussian_elbo_losses(key, t, schedule):
    """Per-example continuous-ELBO diffusion loss 1/2 gamma'(t) ||eps - eps_hat||^2 on x ~ N(0, s^2 I_D).

    The exact eps-predictor is eps_hat = E[eps | z] = sigma z / (alpha^2 s^2 + sigma^2), and per dimension
    E[(eps - eps_hat)^2] = Var(eps | z) = 1 - sigma^2/(alpha^2 s^2 + sigma^2) = s^2 e^lam / (s^2 e^lam + 1).
    """
    kx, ke = jax.random.split(key)
    x = S_GAUSS * jax.random.normal(kx, (t.shape[0], D_GAUSS))
    eps = jax.random.normal(ke, x.shape)
    gamma, dgamma = S.dgamma_dt(schedule, t)
    a2, s2 = jax.nn.sigmoid(-gamma)[:, None], jax.nn.sigmoid(gamma)[:, None]
    z = jnp.sqrt(a2) * x + jnp.sqrt(s2) * eps
    eps_hat = jnp.sqrt(s2) * z / (a2 * S_GAUSS**2 + s2)
    return 0.5 * dgamma * jnp.sum(jnp.square(eps - eps_hat), -1), gamma, dgamma


def test_adaptive_schedule_is_unbiased_and_lowers_the_variance_on_gaussian_data():
    """Both estimators of the diffusion term match D/2 [log(1 + s^2 e^lam)] over [-gamma_1, -gamma_0] within 4 SE.

    The adaptive one's histogram is `fit` from a pilot of uniform-t draws (integrand = loss / gamma').
    Observed (this seed, D = 16, s = 0.1, K = 50, m = 0.05): variance ratio adaptive / uniform ~ 0.13;
    the floor is the chi-square noise of ||eps - eps_hat||^2 that no choice of t removes.
    """
    schedule = S.linear_logsnr()
    g0, g1 = _ends(schedule)
    exact = D_GAUSS / 2 * (math.log1p(S_GAUSS**2 * math.exp(-g0)) - math.log1p(S_GAUSS**2 * math.exp(-g1)))
    K, N = 50, 20_000
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    uniform, _, _ = _gaussian_elbo_losses(keys[1], jax.random.uniform(keys[0], (N,)), schedule)

    edges = T.lambda_edges(g0, g1, K)
    loss_p, gamma_p, dgamma_p = _gaussian_elbo_losses(keys[3], jax.random.uniform(keys[2], (4096,)), schedule)
    hist = T.fit(T.bin_index(-gamma_p, edges), T.integrand(loss_p, 1.0, dgamma_p), K)
    u = jax.random.uniform(keys[4], (2, N))
    d = T.draw(u[0], u[1], T.bin_probs(hist, 0.05), edges, schedule)
    loss_a, _, _ = _gaussian_elbo_losses(keys[5], d["t"], schedule)
    adaptive = loss_a / d["density"]

    for v in (np.asarray(uniform, np.float64), np.asarray(adaptive, np.float64)):
        se = v.std(ddof=1) / math.sqrt(N)
        assert abs(v.mean() - exact) < 4 * se, (v.mean(), exact, se)
    ratio = np.var(np.asarray(adaptive, np.float64)) / np.var(np.asarray(uniform, np.float64))
    assert ratio < 0.5, ratio


# ----------------------------------------------------------------------------- update


def test_update_is_the_ema_of_sums_and_counts():
    hist = {"sums": jnp.asarray([1.0, 2.0, 3.0, 4.0]), "counts": jnp.asarray([2.0, 1.0, 0.0, 4.0])}
    bins = jnp.asarray([0, 2, 2, 0, 3], jnp.int32)
    values = jnp.asarray([0.5, 1.5, 2.5, 3.5, jnp.inf])  # the non-finite value is left out
    out = T.update(hist, bins, values, 0.9)
    np.testing.assert_allclose(out["sums"], [0.9 * 1 + 0.1 * 4.0, 0.9 * 2, 0.9 * 3 + 0.1 * 4.0, 0.9 * 4], rtol=1e-6)
    np.testing.assert_allclose(out["counts"], [0.9 * 2 + 0.1 * 2, 0.9 * 1, 0.1 * 2, 0.9 * 4], rtol=1e-6)
    fitted = T.fit(bins[:4], values[:4], 4)
    np.testing.assert_array_equal(fitted["sums"], [4.0, 0.0, 4.0, 0.0])
    np.testing.assert_array_equal(fitted["counts"], [2.0, 0.0, 2.0, 0.0])


def test_update_state_is_float32_dict_and_jit_is_bit_identical():
    K = 7
    hist = T.init_histogram(K)
    assert set(hist) == {"sums", "counts"} and all(v.dtype == jnp.float32 and v.shape == (K,) for v in hist.values())
    bins = jax.random.randint(jax.random.PRNGKey(0), (256,), 0, K)
    values = jax.random.uniform(jax.random.PRNGKey(1), (256,))
    step = jax.jit(lambda h: T.update(h, bins, values, 0.99))
    a, b = step(step(hist)), step(step(hist))
    for name in hist:
        assert a[name].dtype == jnp.float32
        np.testing.assert_array_equal(a[name], b[name])


def _sharded_update(mesh, hist, bins, values, decay):
    """update inside shard_map over the mesh's 'data' axis, the batch split over devices."""
    fn = jax.shard_map(
        lambda h, k, v: T.update(h, k, v, decay, axis_name="data"),
        mesh=mesh,
        in_specs=(P(), P("data"), P("data")),
        out_specs=P(),
    )
    return jax.jit(fn)(hist, bins, values)


def _psum_case(K=9, B=64):
    """A histogram and a batch with dyadic values, so sums are exact in any order."""
    hist = {"sums": jnp.arange(K, dtype=jnp.float32) / 4, "counts": jnp.arange(K, dtype=jnp.float32) % 3}
    bins = jax.random.randint(jax.random.PRNGKey(4), (B,), 0, K)
    values = jax.random.randint(jax.random.PRNGKey(5), (B,), 0, 64).astype(jnp.float32) / 8
    return hist, bins, values


def test_update_under_shard_map_equals_the_whole_batch_update():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    hist, bins, values = _psum_case()
    ours = _sharded_update(mesh, hist, bins, values, 0.75)
    ref = T.update(hist, bins, values, 0.75)
    for name in hist:
        np.testing.assert_array_equal(ours[name], ref[name])


_FOUR_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh
    from test_t_sampling import _psum_case, _sharded_update
    from vdm.core import t_sampling as T
    assert jax.device_count() == 4, jax.devices()
    hist, bins, values = _psum_case()
    ours = _sharded_update(Mesh(np.array(jax.devices()), ("data",)), hist, bins, values, 0.75)
    ref = T.update(hist, bins, values, 0.75)
    for name in hist:
        np.testing.assert_array_equal(ours[name], ref[name])
    print("OK")
""")


def test_update_psum_over_four_devices_equals_the_whole_batch_update():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), REPO_ROOT]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _FOUR_DEVICES], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
