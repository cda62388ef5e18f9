"""Flow matching in the unified view: the OT path as a schedule, the velocity reading, the FM loss as a weighting.

Independent truth: the straight path z = (1 - t) x + t eps written out literally; the literal flow-matching loss
||(eps - x) - u_hat(z_OT, t)||^2 (Lipman et al. 2023) and a literal Euler integration of dz_OT/dt = u_hat; SD3's
shift map t_m = s t / (1 + (s - 1) t) and simple diffusion's shifted cosine log-SNR; on Gaussian data the velocity
MMSE in closed form, Var(eps - x | z) = Var(u) - Cov(u, z)^2 / Var(z), against quadrature.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from vdm import objectives as O
from vdm import sampling
from vdm import schedules as S
from vdm.core import t_sampling
from vdm.parameterization import scale_input

SCALES = np.array([0.1, 0.5, 1.0, 3.0])


def _velocity_net(z_ot, t):
    """An arbitrary smooth velocity model u_hat(z_OT, t) [B, D] of the OT path's own variables (not a good one)."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(z_ot.shape[1], z_ot.shape[1])) / 2, jnp.float32)
    return jnp.tanh(z_ot @ w) + jnp.cos(3.0 * t)[:, None] * z_ot - t[:, None]


def test_ot_schedule_is_the_straight_path_at_the_same_log_snr():
    t = jnp.linspace(0.01, 0.99, 99)
    sched = S.ot()
    np.testing.assert_allclose(sched(t), 2 * np.log(np.asarray(t, np.float64) / (1 - np.asarray(t))), atol=2e-5)
    alpha, sigma = S.alpha_sigma(sched(t))
    norm = np.sqrt((1 - np.asarray(t, np.float64)) ** 2 + np.asarray(t, np.float64) ** 2)
    np.testing.assert_allclose(alpha, (1 - t) / norm, rtol=1e-5)  # z_VP = z_OT / sqrt((1-t)^2 + t^2)
    np.testing.assert_allclose(sigma, t / norm, rtol=1e-5)
    np.testing.assert_allclose(S.ot_scale(sched(t)), 1 / norm, rtol=1e-5)
    # clipped like cosine, with a finite slope everywhere (0 beyond the clip)
    ends = S.ot(-13.3, 10.0)
    g, dg = S.dgamma_dt(ends, jnp.array([0.0, 1e-4, 0.5, 0.999, 1.0]))
    np.testing.assert_allclose(np.asarray(g)[[0, 1, 3, 4]], [-13.3, -13.3, 10.0, 10.0], atol=1e-4)
    np.testing.assert_allclose(dg, [0.0, 0.0, 8.0, 0.0, 0.0], atol=1e-4)  # gamma' = 2 / (t (1 - t))
    with pytest.raises(ValueError, match="gamma_max > gamma_min"):
        S.ot(1.0, 0.0)


def test_schedule_shift_is_sd3s_time_shift_on_ot_and_simple_diffusions_shifted_cosine():
    t = jnp.linspace(0.02, 0.98, 49)
    shift = 3.0  # SD3's for 1024^2 (Esser et al. 2024, sec. 5.3.2)
    t_m = shift * t / (1 + (shift - 1) * t)  # their eq. 23
    np.testing.assert_allclose(S.shifted(S.ot(), shift)(t), S.ot()(t_m), atol=3e-5)
    # simple diffusion (Hoogeboom et al. 2023, eq. 4): lambda(t) = -2 log tan(pi t / 2) + 2 log(64 / d)
    d = 256
    lam = -2 * np.log(np.tan(np.pi * np.asarray(t, np.float64) / 2)) + 2 * np.log(64 / d)
    cosine = S.shifted(S.cosine(1e-6, -30.0, 30.0), d / 64)  # s -> 0: their cosine
    np.testing.assert_allclose(cosine(t), -lam, atol=1e-4)
    np.testing.assert_allclose(S.get_schedule("ot", -20.0, 20.0, shift=shift)(t), S.ot()(t_m), atol=3e-5)
    ot = S.ot()
    assert S.shifted(ot, 1.0) is ot and S.get_schedule("cosine", shift=1.0)(0.5) == S.cosine()(0.5)
    with pytest.raises(ValueError, match="> 0"):
        S.shifted(S.ot(), 0.0)


@pytest.mark.parametrize("draw,shift", [("uniform", 1.0), ("logit_normal", 1.0), ("logit_normal", 3.0)])
def test_literal_fm_loss_on_the_ot_path_equals_our_weighted_loss_on_the_same_draws(draw, shift):
    """E_t ||(eps - x) - u_hat(z_OT, t)||^2 written out (SD3's: t_n logit-normal, t = s t_n / (1 + (s - 1) t_n)),
    against neg_elbo_terms' diffusion term at t_n with schedule 'ot' shifted by s, parameterization 'flow',
    weighting 'flow' and the net fed scale_input(z, gamma, 'ot') and the OT time sigmoid(gamma / 2)."""
    key = jax.random.PRNGKey(0)
    x = jax.random.uniform(key, (512, 6), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    u = jax.random.uniform(jax.random.fold_in(key, 2), (512,), minval=1e-3, maxval=0.99)  # f ~ 1/(1-t)^2: float32
    t_n = u if draw == "uniform" else t_sampling.logit_normal_t(u, 0.0, 1.0)
    t = shift * t_n / (1 + (shift - 1) * t_n)  # Esser et al. 2024, eq. 23
    literal = jnp.sum(jnp.square((eps - x) - _velocity_net((1 - t)[:, None] * x + t[:, None] * eps, t)), axis=1)
    sched = S.shifted(S.ot(-30.0, 30.0), shift)
    net = lambda z, t: _velocity_net(scale_input(z, sched(t)[:, None], "ot"), S.ot_time(sched(t)))
    t = t_n  # our draws are the schedule's own t
    ours = O.neg_elbo_terms(
        net, x, t, eps, jnp.zeros_like(x), schedule=sched, parameterization="flow", weighting="flow", decoder="gaussian"
    )["diffusion"]
    np.testing.assert_allclose(ours, literal, rtol=2e-5)
    assert float(jnp.std(literal)) > 0.1 * float(jnp.mean(literal))  # a real spread of losses, not a constant


def test_flow_weighting_is_e_to_the_minus_lambda_over_2_on_ot_and_the_cosine_rows_are_their_losses():
    """Kingma & Gao's form f = w(lambda) gamma'/2: on the OT path w_flow = e^{-lambda/2}; under cosine (s -> 0),
    eps_cosine's f is L_simple's 1 and v_cosine's f is the v-MSE's 1/alpha^2 = 1 + e^gamma."""
    t = jnp.linspace(0.01, 0.99, 99)
    g, dg = S.dgamma_dt(S.ot(-30.0, 30.0), t)
    np.testing.assert_allclose(O.weight_flow(g, dg), 0.5 * dg * np.exp(-0.5 * -g), rtol=2e-5)
    np.testing.assert_allclose(O.weight_flow(g, dg), 1 / (1 - t) ** 2, rtol=2e-5)  # (alpha + sigma)^2 / alpha^2
    g, dg = S.dgamma_dt(S.cosine(1e-6, -30.0, 30.0), t)
    np.testing.assert_allclose(O.weight_eps_cosine(g, dg), 1.0, rtol=1e-4)
    np.testing.assert_allclose(O.weight_v_cosine(g, dg), 1 + np.exp(g), rtol=1e-4)


def test_the_docs_implied_weightings_and_sd3s_w_are_these_closed_forms():
    """docs/objectives.md: w = 2 f / gamma' for f-defined losses under linear log-SNR, cosine (s -> 0) and ot, and SD3's
    w = pi(t) e^{-lambda/2} = 2 N(lambda; -2m, 4s^2) (1 + e^{-lambda/2})^2 (here from our f, gamma' and pi)."""
    t = jnp.linspace(0.02, 0.98, 49)
    sech = lambda a: 1 / np.cosh(a)
    schedules = {"linear_logsnr": S.linear_logsnr(), "cosine": S.cosine(1e-6, -30.0, 30.0), "ot": S.ot(-30.0, 30.0)}
    docs = {  # (simple, flow) per schedule, as functions of lambda
        "linear_logsnr": (lambda lam: 2 / 18.3 + 0 * lam, lambda lam: 2 * (1 + np.exp(-lam / 2)) ** 2 / 18.3),
        "cosine": (lambda lam: sech(lam / 2) / np.pi, lambda lam: (1 + np.exp(-lam / 2)) ** 2 * sech(lam / 2) / np.pi),
        "ot": (lambda lam: sech(lam / 4) ** 2 / 4, lambda lam: np.exp(-lam / 2)),
    }
    for name, sched in schedules.items():
        g, dg = S.dgamma_dt(sched, t)
        lam = -np.asarray(g, np.float64)
        for weight, doc in zip((O.weight_simple, O.weight_flow), docs[name]):
            np.testing.assert_allclose(2 * weight(g, dg) / dg, doc(lam), rtol=1e-4, err_msg=name)
    g, dg = S.dgamma_dt(S.ot(-30.0, 30.0), t)
    lam = -np.asarray(g, np.float64)
    m, s = 0.3, 0.8
    w = 2 * O.weight_flow(g, dg) * t_sampling.logit_normal_density(t, m, s) / dg
    np.testing.assert_allclose(w, np.asarray(t_sampling.logit_normal_density(t, m, s)) * np.exp(-lam / 2), rtol=1e-4)
    normal = stats.norm.pdf(lam, -2 * m, 2 * s)
    np.testing.assert_allclose(w, 2 * normal * (1 + np.exp(-lam / 2)) ** 2, rtol=1e-4)


def _velocity_mmse(g, s=SCALES):
    """E||(eps - x) - E[eps - x | z]||^2 for x ~ N(0, s^2), z = alpha x + sigma eps (Gaussian conditioning)."""
    a, sg = math.sqrt(1 / (1 + math.exp(g))), math.sqrt(1 / (1 + math.exp(-g)))
    return float(np.sum(1 + s**2 - (sg - a * s**2) ** 2 / (a**2 * s**2 + sg**2)))


def _optimal_flow(sched, s=SCALES):
    def fn(z, t):
        g = sched(t)[:, None]
        a2, s2 = jax.nn.sigmoid(-g), jax.nn.sigmoid(g)
        return (jnp.sqrt(s2) - jnp.sqrt(a2) * s**2) * z / (a2 * s**2 + s2)

    return fn


@pytest.mark.parametrize("draw", ["uniform", "logit_normal"])
def test_fm_expectation_on_gaussian_data_matches_quadrature(draw):
    """Our weighted loss with the optimal velocity model, t uniform or SD3's logit-normal on the OT path, against
    the quadrature of E_{t ~ p} Var(eps - x | z_t) with p uniform or pi(t) = N(logit t; 0, 1) / (t (1 - t))."""
    sched = S.ot(-13.3, 10.0)
    rng = np.random.default_rng(4)
    n = 50_000
    x = jnp.asarray(rng.normal(size=(n, 4)) * SCALES, jnp.float32)
    u = O.sample_t(jax.random.PRNGKey(1), n, antithetic=True)
    t = u if draw == "uniform" else t_sampling.logit_normal_t(u)
    eps = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    loss = O.neg_elbo_terms(
        _optimal_flow(sched), x, t, eps, jnp.zeros_like(x), schedule=sched, parameterization="flow",
        weighting="flow", decoder="gaussian",
    )["diffusion"]  # fmt: skip
    density = (
        (lambda t: 1.0) if draw == "uniform" else (lambda t: stats.norm.pdf(math.log(t / (1 - t))) / (t * (1 - t)))
    )
    t_lo, t_hi = 1 / (1 + math.exp(6.65)), 1 / (1 + math.exp(-5.0))  # the clip: gamma' = 0 beyond it
    expected = integrate.quad(lambda t: density(t) * _velocity_mmse(float(sched(t))), t_lo, t_hi, limit=200)[0]
    loss = np.asarray(loss, np.float64)
    se = loss.std() / math.sqrt(n)
    assert abs(loss.mean() - expected) < 4 * se + 1e-3 * expected, (loss.mean(), expected, se)


def test_logit_normal_draws_are_the_inverse_cdf_and_the_density_is_its_derivative():
    u = jnp.linspace(0.01, 0.99, 99)
    np.testing.assert_allclose(
        t_sampling.logit_normal_t(u, 0.5, 1.5), 1 / (1 + np.exp(-(0.5 + 1.5 * stats.norm.ppf(u)))), rtol=1e-5
    )
    t = np.linspace(0.05, 0.95, 19)
    cdf = lambda t: stats.norm.cdf((np.log(t / (1 - t)) - 0.5) / 1.5)
    numeric = (cdf(t + 1e-6) - cdf(t - 1e-6)) / 2e-6
    np.testing.assert_allclose(t_sampling.logit_normal_density(jnp.asarray(t), 0.5, 1.5), numeric, rtol=1e-4)


def _literal_flow_ode(z_ot, taus, heun):
    """Euler's or Heun's method on dz_OT/dtau = _velocity_net(z_OT, tau) over the grid `taus`, written out."""
    out = [z_ot]
    for k in range(len(taus) - 1):
        tau, tau_next = (jnp.full((z_ot.shape[0],), v, jnp.float32) for v in (taus[k], taus[k + 1]))
        h, u = taus[k + 1] - taus[k], _velocity_net(out[-1], tau)
        proposal = out[-1] + h * u
        out.append(out[-1] + 0.5 * h * (u + _velocity_net(proposal, tau_next)) if heun else proposal)
    return np.stack(out)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("method,opts", [("ddim", {}), ("ode", {"space": "ot"})])
def test_ddim_and_ot_heun_on_the_uniform_ot_grid_are_literal_euler_and_heun_on_the_flow_ode(shift, method, opts):
    """Euler's / Heun's method on dz_OT/dtau = u_hat(z_OT, tau) with N uniform steps in tau, written out, against
    sample(method='ddim' / 'ode' with space='ot', grid='uniform_ot', parameterization='flow'): trajectory / (alpha +
    sigma). EDM's Heun (space 'edm') is not Heun on the flow ODE: it differs beyond float error."""
    sched = S.shifted(S.ot(-13.3, 10.0), shift)
    g_ends = sched(jnp.array([1.0, 0.0]))
    tau_hi, tau_lo = (float(v) for v in S.ot_time(g_ends))
    num_steps, batch = 12, 64
    z_ot = jax.random.normal(jax.random.PRNGKey(7), (batch, 3))
    taus = tau_hi + (tau_lo - tau_hi) * np.arange(num_steps + 1) / num_steps
    literal = _literal_flow_ode(z_ot, taus, heun=method == "ode")
    net = lambda z, t: _velocity_net(scale_input(z, sched(t)[:, None], "ot"), S.ot_time(sched(t)))

    def ours(**options):
        _, traj = sampling.sample(
            net, (batch, 3), jax.random.PRNGKey(0), schedule=sched, parameterization="flow", method=method,
            num_steps=num_steps, grid="uniform_ot", z_init=z_ot * S.ot_scale(g_ends[0]), return_trajectory=True,
            **options,
        )  # fmt: skip
        return traj / S.ot_scale(g_grid)[:, None, None]

    _, g_grid = sampling.solvers.time_grid(sched, num_steps, "uniform_ot")
    np.testing.assert_allclose(S.ot_time(g_grid), taus, atol=2e-6)
    np.testing.assert_allclose(ours(**opts), literal, rtol=2e-5, atol=2e-5)
    assert float(jnp.abs(literal[-1] - literal[0]).mean()) > 0.3  # it moved
    if method == "ode":
        assert float(jnp.abs(ours(space="edm") - literal).max()) > 1e-3
