"""Building blocks of the samplers: time grids and single reverse-time updates.

Every update here is a pure function of arrays. It moves z from a time t to an earlier time s
(gamma_s < gamma_t) given the denoiser's reading at (z_t, t) as a pair (x0_hat, eps_hat).
The loop that calls them lives in vdm.sampling.samplers. gamma may be -inf at the data end
(alpha = 1, sigma = 0); each update is written so that it then lands on x0_hat exactly.

Notation: alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma), c = -expm1(gamma_s - gamma_t)
= 1 - SNR_t/SNR_s, beta(t) = gamma'(t) sigma_t^2 (the VP-SDE rate: d log alpha^2/dt = -beta),
sigma_edm = sigma/alpha = exp(gamma/2), and DPM-Solver's lambda = log(alpha/sigma) = -gamma/2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm.core.gaussian import posterior, step_variance
from vdm.core.schedules import Schedule, alpha_sigma, inverse, ot_scale, ot_time

Array = jax.Array

GRIDS = ("uniform_t", "uniform_logsnr", "edm", "uniform_ot")
GAMMA_FLOOR = -30.0  # stands in for gamma(t_min) = -inf where a grid must be uniform in gamma


# ----------------------------------------------------------------------------- grids


def time_grid(
    schedule: Schedule,
    num_steps: int,
    grid: str = "uniform_t",
    *,
    t_min: float = 0.0,
    t_max: float = 1.0,
    rho: float = 7.0,
) -> tuple[Array, Array]:
    """Decreasing times t_0 = t_max > ... > t_N = t_min and their gammas, each [N + 1].

    'uniform_t': uniform in t. 'uniform_logsnr': uniform in gamma = -log SNR between
    gamma(t_max) and gamma(t_min) (floored at GAMMA_FLOOR if gamma(t_min) = -inf).
    'edm': sigma_edm = exp(gamma/2) on Karras et al. (2022, eq. 5)'s grid
    sigma_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho, with the schedule's
    endpoint noise levels (s_min = 0 is allowed). 'uniform_ot': uniform in the OT path's time
    tau = sigmoid(gamma/2) (vdm.core.schedules.ot_time), on which DDIM (eta = 0) is Euler's method on the flow ODE
    dz_OT/dtau = eps_hat - x0_hat, z_OT = z / (alpha + sigma). Non-uniform grids are mapped back to t by
    bisection, and the gammas returned are schedule(t) at those times. Endpoints are exact.
    """
    if grid not in GRIDS:
        raise ValueError(f"Unknown grid {grid!r}; choose one of {GRIDS}.")
    frac = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
    if grid == "uniform_t":
        t = t_max + (t_min - t_max) * frac
    else:
        g_hi = schedule(jnp.float32(t_max))
        g_lo = schedule(jnp.float32(t_min))
        if grid == "uniform_logsnr":
            g_lo = jnp.where(jnp.isfinite(g_lo), g_lo, GAMMA_FLOOR)
            g = g_hi + (g_lo - g_hi) * frac
        elif grid == "uniform_ot":
            tau_hi, tau_lo = ot_time(g_hi), ot_time(g_lo)
            tau = tau_hi + (tau_lo - tau_hi) * frac
            g = 2.0 * (jnp.log(tau) - jnp.log1p(-tau))
        else:
            s_hi, s_lo = jnp.exp(0.5 * g_hi) ** (1.0 / rho), jnp.exp(0.5 * g_lo) ** (1.0 / rho)
            g = 2.0 * rho * jnp.log(s_hi + (s_lo - s_hi) * frac)
        t = inverse(schedule, g, t_min, t_max)
    t = t.at[0].set(t_max).at[-1].set(t_min)
    return t, schedule(t)


# ----------------------------------------------------------------------------- denoiser output


def threshold_x0(x0: Array, *, clip: bool = False, percentile: float | None = None) -> Array:
    """Static clipping to [-1, 1] and/or Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3):
    s = max(1, quantile_p |x0| per example), x0 <- clip(x0, -s, s) / s."""
    if percentile is not None:
        flat = jnp.abs(x0.reshape(x0.shape[0], -1))
        s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
        s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
        x0 = jnp.clip(x0, -s, s) / s
    if clip:
        x0 = jnp.clip(x0, -1.0, 1.0)
    return x0


def eps_from_x0(z: Array, x0: Array, gamma: Array) -> Array:
    """eps = (z - alpha x0) / sigma, the noise consistent with a (modified) x0_hat."""
    alpha, sigma = alpha_sigma(gamma)
    return (z - alpha * x0) / sigma


# ----------------------------------------------------------------------------- one-step updates


def ancestral_update(
    z_t: Array,
    x0: Array,
    gamma_t: Array,
    gamma_s: Array,
    noise: Array,
    variance: str = "small",
    v_interp: Array | None = None,
) -> Array:
    """z_s = mean of q(z_s | z_t, x = x0_hat) + sqrt(var) noise (Ho et al. 2020, Alg. 2; VDM eq. 29-30)."""
    mean, _ = posterior(z_t, x0, gamma_s, gamma_t)
    return mean + jnp.sqrt(step_variance(gamma_t, gamma_s, variance, v_interp)) * noise


def ddim_update(
    x0: Array,
    eps: Array,
    gamma_t: Array,
    gamma_s: Array,
    eta: float | Array,
    noise: Array | None,
    variance: str = "small",
    v_interp: Array | None = None,
) -> Array:
    """z_s = alpha_s x0 + sqrt(sigma_s^2 - s_eta^2) eps + s_eta noise, s_eta^2 = eta^2 sigma_s^2 c
    (Song et al. 2021a, eq. 12 and 16); eta = 1 has the ancestral posterior's variance.

    variance 'large' or 'learned' puts eta^2 times that step variance (`step_variance`) in place of
    the posterior's sigma_s^2 c, capped at sigma_s^2 (where beta > sigma_s^2, near the data end).
    """
    alpha_s, sigma_s = alpha_sigma(gamma_s)
    if variance != "small":
        s2 = jnp.minimum(jnp.square(eta) * step_variance(gamma_t, gamma_s, variance, v_interp), jnp.square(sigma_s))
        z_s = alpha_s * x0 + jnp.sqrt(jnp.square(sigma_s) - s2) * eps
        return z_s if noise is None else z_s + jnp.sqrt(s2) * noise
    c = -jnp.expm1(gamma_s - gamma_t)
    eta2c = jnp.square(eta) * c
    z_s = alpha_s * x0 + sigma_s * jnp.sqrt(1.0 - eta2c) * eps
    if noise is not None:
        z_s = z_s + sigma_s * jnp.sqrt(eta2c) * noise
    return z_s


def sde_update(z_t: Array, eps: Array, gamma_t: Array, dgamma_t: Array, h: Array, noise: Array) -> Array:
    """Euler-Maruyama step of length h = t - s > 0 on the reverse VP SDE (Song et al. 2021b, eq. 6),
    dz = [-beta z/2 - beta score] dt + sqrt(beta) dw_bar with beta = gamma' sigma^2, score = -eps/sigma:
        z_s = z_t + h gamma' sigma (sigma z_t / 2 - eps) + sigma sqrt(h gamma') noise."""
    _, sigma = alpha_sigma(gamma_t)
    return z_t + h * dgamma_t * sigma * (0.5 * sigma * z_t - eps) + sigma * jnp.sqrt(h * dgamma_t) * noise


def edm_euler(z_t: Array, eps: Array, gamma_t: Array, gamma_s: Array) -> Array:
    """Euler step of the probability-flow ODE in EDM variables, x = z/alpha, dx/dsigma_edm = eps_hat
    (Karras et al. 2022, eq. 3 with D = x0_hat): x_s = x_t + (sigma_edm_s - sigma_edm_t) eps."""
    alpha_t, _ = alpha_sigma(gamma_t)
    alpha_s, _ = alpha_sigma(gamma_s)
    d_sigma = jnp.exp(0.5 * gamma_s) - jnp.exp(0.5 * gamma_t)
    return alpha_s * (z_t / alpha_t + d_sigma * eps)


def edm_heun(z_t: Array, eps_t: Array, eps_euler: Array, gamma_t: Array, gamma_s: Array) -> Array:
    """Heun's correction (Karras et al. 2022, Alg. 1, line 8): x_s = x_t + (s_s - s_t)(eps_t + eps_euler)/2,
    eps_euler read at the Euler proposal z_s' = edm_euler(z_t, eps_t, ...)."""
    return edm_euler(z_t, 0.5 * (eps_t + eps_euler), gamma_t, gamma_s)


ODE_SPACES = ("edm", "ot")  # the variables of the 'ode' method's Heun step


def ot_heun(z_t: Array, u_t: Array, u_euler: Array, gamma_t: Array, gamma_s: Array) -> Array:
    """Heun's step on the flow ODE dz_OT/dtau = u_hat (u = eps_hat - x0_hat, z_OT = z / (alpha + sigma), tau =
    sigmoid(gamma/2)): z_OT,s = z_OT,t + (tau_s - tau_t)(u_t + u_euler)/2, u_euler read at the Euler (= DDIM) proposal."""
    z_ot = z_t / ot_scale(gamma_t) + (ot_time(gamma_s) - ot_time(gamma_t)) * 0.5 * (u_t + u_euler)
    return z_ot * ot_scale(gamma_s)


def heun_update(space: str, z_t: Array, pred_t: tuple, pred_euler: tuple, gamma_t: Array, gamma_s: Array) -> Array:
    """Heun's correction in `space` (ODE_SPACES) given (x0_hat, eps_hat) at z_t and at the Euler proposal: 'edm'
    `edm_heun` (Karras et al. 2022, Alg. 1), 'ot' `ot_heun` (the flow ODE; the two agree only to second order)."""
    if space == "edm":
        return edm_heun(z_t, pred_t[1], pred_euler[1], gamma_t, gamma_s)
    if space == "ot":
        return ot_heun(z_t, pred_t[1] - pred_t[0], pred_euler[1] - pred_euler[0], gamma_t, gamma_s)
    raise ValueError(f"Unknown ODE space {space!r}; choose one of {ODE_SPACES}.")


def langevin_update(z: Array, score: Array, noise: Array, snr: float, retention: Array) -> Array:
    """Annealed Langevin corrector (Song et al. 2021b, Alg. 5 for VP): z + e score + sqrt(2e) noise,
    e = 2 a (snr ||noise|| / ||score||)^2 with norms averaged over the batch and a = alpha_t^2/alpha_s^2."""

    def mean_norm(v):
        return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1)))

    step = 2.0 * retention * jnp.square(snr * mean_norm(noise) / mean_norm(score))
    return z + step * score + jnp.sqrt(2.0 * step) * noise


def dpm_multistep_update(
    z_t: Array,
    model: tuple[Array, Array, Array],
    gammas: tuple[Array, Array, Array],
    gamma_s: Array,
    order: Array,
    prediction: str = "x0",
) -> Array:
    """One step of multistep DPM-Solver++ (prediction='x0', Lu et al. 2022b) or DPM-Solver
    (prediction='eps', Lu et al. 2022a) of order 1, 2 or 3, in lambda = log(alpha/sigma) = -gamma/2.

    model = (m0, m1, m2): predictions at the current time and the two before it; gammas: their
    gammas. With h = lambda_s - lambda_t and the exact integral of the exponential integrator
    against the Taylor expansion m(lambda) ~ m0 + m'u + m''u^2/2 (u = lambda - lambda_t),
        x0:  z_s = (sigma_s/sigma_t) z_t + alpha_s [psi1 m0 + psi2 D1 + psi3 D2],
             psi1 = -expm1(-h), psi2 = 1 - psi1/h, psi3 = 1/2 - psi2/h;
        eps: z_s = (alpha_s/alpha_t) z_t - sigma_s [phi1 m0 + phi2 D1 + phi3 D2],
             phi1 = expm1(h), phi2 = phi1/h - 1, phi3 = phi2/h - 1/2;
    D1 ~ h m', D2 ~ h^2 m'' are divided differences over the previous lambdas (D1 first-order
    accurate for order 2; D1, D2 from the quadratic through all three points for order 3).
    `order` may be traced; orders above those the history allows must be excluded by the caller.
    """
    m0, m1, m2 = model
    g0, g1, g2 = gammas
    h = 0.5 * (g0 - gamma_s)
    r0 = 0.5 * (g1 - g0) / h  # h_0 / h, h_0 = lambda_t - lambda_prev
    r1 = 0.5 * (g2 - g1) / h  # h_1 / h
    d1_0 = (m0 - m1) / r0
    d1_1 = (m1 - m2) / r1
    d1_3 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2_3 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
    zero = jnp.zeros_like(m0)
    d1 = jnp.where(order >= 3, d1_3, jnp.where(order == 2, d1_0, zero))
    d2 = jnp.where(order >= 3, d2_3, zero)
    if prediction == "x0":
        psi1 = -jnp.expm1(-h)
        psi2 = 1.0 - psi1 / h
        psi3 = 0.5 - psi2 / h
        ratio = jnp.exp(0.5 * (jax.nn.softplus(-g0) - jax.nn.softplus(-gamma_s)))  # sigma_s / sigma_t
        alpha_s, _ = alpha_sigma(gamma_s)
        return ratio * z_t + alpha_s * (psi1 * m0 + psi2 * d1 + psi3 * d2)
    if prediction == "eps":
        phi1 = jnp.expm1(h)
        phi2 = phi1 / h - 1.0
        phi3 = phi2 / h - 0.5
        ratio = jnp.exp(0.5 * (jax.nn.softplus(g0) - jax.nn.softplus(gamma_s)))  # alpha_s / alpha_t
        _, sigma_s = alpha_sigma(gamma_s)
        return ratio * z_t - sigma_s * (phi1 * m0 + phi2 * d1 + phi3 * d2)
    raise ValueError(f"Unknown DPM-Solver prediction {prediction!r}; choose 'x0' (DPM-Solver++) or 'eps'.")
