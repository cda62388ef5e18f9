"""ode_nll against exact likelihoods (vdm/core/analytic.py).

With the exact score the probability-flow ODE carries q(z_1) to q(z_{t_min}), so the model that
uses the prior N(0, I) has, per example,
    -log p_model(x) = -log q_{t_min}(alpha_0 x) - D log alpha_0 + [log q_1(z_1) - log N(z_1; 0, I)],
every term known in closed form for Gaussian data and for a Gaussian mixture (the bracket is the
documented prior mismatch; its data average is KL(q(z_1) || N(0, I))).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import likelihood as L
from vdm import schedules as S
from vdm.core import analytic as A
from vdm.objectives import bits_per_dim

SCHED = S.linear_logsnr()
G0, G1 = SCHED(0.0), SCHED(1.0)
ALPHA0 = jnp.sqrt(jax.nn.sigmoid(-G0))
ROTATED = A.GaussianData(
    np.array([0.4, -0.2, 0.1]),
    np.array([0.3, 0.8, 0.5]),
    rotation=np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0],
)


def std_normal_logpdf(z):
    return -0.5 * jnp.sum(jnp.square(z) + math.log(2 * math.pi), axis=-1)


def model_nll(data, x, z_1):
    """-log p_model(x) for the exact-score ODE with prior N(0, I), given the flow's z_1(x)."""
    dims = x.shape[-1]
    return (
        -data.marginal_log_prob(ALPHA0 * x, G0)
        - dims * jnp.log(ALPHA0)
        + data.marginal_log_prob(z_1, G1)
        - std_normal_logpdf(z_1)
    )


def test_exact_trace_matches_the_closed_form_on_gaussian_data():
    x = ROTATED.sample(jax.random.key(0), 256)
    out = L.ode_nll(
        A.denoise_fn(ROTATED, SCHED),
        x,
        jax.random.key(1),
        schedule=SCHED,
        num_steps=32,
        trace="exact",
        return_terms=True,
    )
    exact_z1 = ROTATED.ode_map(ALPHA0 * x, G0, G1)
    np.testing.assert_allclose(out["z_1"], exact_z1, atol=2e-4)
    np.testing.assert_allclose(out["total"], model_nll(ROTATED, x, exact_z1), atol=2e-3)
    # The gap to the data NLL is the prior mismatch, on average KL(q(z_1) || N(0, I)).
    gap = np.asarray(out["total"] + ROTATED.log_prob(x), np.float64)
    kl = float(ROTATED.prior_kl(G1))
    assert abs(gap.mean() - kl) < 4 * gap.std() / math.sqrt(gap.size) + 1e-3, (gap.mean(), kl)


def test_any_parameterization_gives_the_same_likelihood():
    x = ROTATED.sample(jax.random.key(0), 32)
    base = L.ode_nll(A.denoise_fn(ROTATED, SCHED), x, jax.random.key(1), schedule=SCHED, num_steps=8, trace="exact")
    for kind in ("x0", "v", "score"):
        got = L.ode_nll(
            A.denoise_fn(ROTATED, SCHED, kind),
            x,
            jax.random.key(1),
            schedule=SCHED,
            parameterization=kind,
            num_steps=8,
            trace="exact",
        )
        np.testing.assert_allclose(got, base, rtol=1e-4, atol=1e-3)


def test_rk4_and_heun_converge_at_their_order():
    x = ROTATED.sample(jax.random.key(0), 64)
    fn = A.denoise_fn(ROTATED, SCHED)
    exact = model_nll(ROTATED, x, ROTATED.ode_map(ALPHA0 * x, G0, G1))
    for solver, order, steps in (("rk4", 4, (6, 12)), ("heun", 2, (16, 32))):
        errs = [
            float(
                jnp.max(
                    jnp.abs(
                        L.ode_nll(fn, x, jax.random.key(1), schedule=SCHED, num_steps=n, solver=solver, trace="exact")
                        - exact
                    )
                )
            )
            for n in steps
        ]
        assert 2 ** (order - 0.7) < errs[0] / errs[1] < 2 ** (order + 1.5), (solver, errs)


def test_hutchinson_is_unbiased_within_its_standard_error_and_exact_is_tighter():
    """On the mixture (a non-diagonal, nonlinear Jacobian): the per-example Hutchinson error has
    mean zero within 4 standard errors; the exact trace error is far below that standard error."""
    mix = A.default_mixture()
    fn = A.denoise_fn(mix, SCHED)
    x, _ = mix.sample(jax.random.key(0), 512)
    kw = dict(schedule=SCHED, num_steps=24, return_terms=True)
    exact = L.ode_nll(fn, x, jax.random.key(1), trace="exact", **kw)
    truth = model_nll(mix, x, exact["z_1"])
    err_exact = np.asarray(exact["total"] - truth, np.float64)
    ses = []
    for probes in (1, 4):
        hutch = L.ode_nll(fn, x, jax.random.key(2), trace="hutchinson", num_probes=probes, **kw)
        err = np.asarray(hutch["total"] - truth, np.float64)
        se = err.std() / math.sqrt(err.size)
        assert abs(err.mean()) < 4 * se + 2e-3, (probes, err.mean(), se)
        ses.append(se)
    assert ses[1] < 0.7 * ses[0], ses  # 4 probes: ~half the spread
    assert np.abs(err_exact).mean() < 0.1 * ses[0] * math.sqrt(x.shape[0]), err_exact


def test_dequantized_nll_bounds_the_discrete_nll_with_the_documented_offset():
    """8-bit data k/127.5 - 1: E_u[ode_nll(dequantize=True)] is an upper bound on -log P(bin) (Jensen)
    whose gap, Var_u[log p]/2 ~ 1e-4 nats here, is below the Monte Carlo error over u, so it equals the
    exact discrete NLL and the continuous NLL at x plus D log 127.5 within that error."""
    data = A.GaussianData(np.array([0.1, -0.2]), np.array([0.3, 0.5]))
    fn = A.denoise_fn(data, SCHED)
    x = jnp.round((jnp.clip(data.sample(jax.random.key(0), 32), -1, 1) + 1) * 127.5) / 127.5 - 1
    draws = jnp.stack(
        [
            L.ode_nll(fn, x, k, schedule=SCHED, num_steps=16, trace="exact", dequantize=True)
            for k in jax.random.split(jax.random.key(1), 8)
        ]
    )
    bound = draws.mean(0)
    tol = 4 * draws.std(0) / math.sqrt(draws.shape[0]) + 1e-3  # Monte Carlo error over u, per example
    # Exact bin mass of the model density by 8x8 Gauss-Legendre quadrature over each 2-D bin.
    nodes, weights = np.polynomial.legendre.leggauss(8)
    half = 1.0 / 255.0
    u = jnp.asarray(nodes) * half
    grid = x[:, None, None, :] + jnp.stack(jnp.meshgrid(u, u, indexing="ij"), -1)[None]  # [B, 8, 8, 2]
    flat = grid.reshape(-1, 2)
    dens = jnp.exp(-model_nll(data, flat, data.ode_map(ALPHA0 * flat, G0, G1))).reshape(grid.shape[:3])
    w2 = jnp.asarray(np.outer(weights, weights)) * half**2
    discrete = -jnp.log(jnp.sum(dens * w2, axis=(1, 2)))
    assert np.all(np.abs(bound - discrete) < tol), (bound - discrete, tol)
    continuous = model_nll(data, x, data.ode_map(ALPHA0 * x, G0, G1))
    assert np.all(np.abs(bound - continuous - 2 * math.log(127.5)) < tol)
    np.testing.assert_allclose(bits_per_dim(bound, 2), bound / (2 * math.log(2)), rtol=1e-6)


def test_bad_arguments_raise():
    fn = A.denoise_fn(ROTATED, SCHED)
    x = jnp.zeros((2, 3))
    for kw, match in (
        ({"trace": "skilling"}, "hutchinson"),
        ({"solver": "euler"}, "rk4"),
        ({"num_steps": 0}, "positive"),
        ({"parameterization": "mu"}, "eps"),
    ):
        with pytest.raises(ValueError, match=match):
            L.ode_nll(fn, x, jax.random.key(0), schedule=SCHED, **kw)
