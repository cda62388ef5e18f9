"""The discrete-time diffusion term: per-step KLs with a fixed or learned reverse variance, and the hybrid loss.

For T steps s = (i-1)/T -> t = i/T the diffusion term of the negative ELBO is
    L_T = T E_i KL(q(z_s | z_t, x) || p(z_s | z_t))          (VDM eq. 13, Ho et al. 2020 eq. 5)
with p(z_s | z_t) = N(mean of q(z_s | z_t, x_hat), Sigma). Sigma is the posterior's beta_tilde
('small'), the forward step's beta ('large'), or learned per dimension,
exp(v log beta + (1 - v) log beta_tilde) with v from the network's variance head (Nichol &
Dhariwal 2021, eq. 15). The continuous-time term (T -> infinity) does not depend on Sigma.
Improved DDPM's hybrid loss trains the head: L_simple + lambda L_vlb, the mean stopped in L_vlb, with lambda
applied to L_vlb in bits as openai/improved-diffusion's code does (HYBRID_UNITS).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vdm.core import gaussian
from vdm.core.parameterization import convert
from vdm.core.schedules import Schedule, alpha_sigma

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Array]
# The units of L_vlb that the hybrid loss's lambda multiplies: 'bits' (improved DDPM's: its `_vb_terms_bpd` divides
# the KL by ln 2, so per dimension L_hybrid = mean (eps - eps_hat)^2 + lambda T KL_t / ln 2), or 'nats' (this code
# before issue 25, where the variance term had ln 2 times the paper's weight; kept so older runs resume as trained).
HYBRID_UNITS = ("bits", "nats")


def network_output(denoise_fn: DenoiseFn, z_t: Array, t: Array, x: Array) -> tuple[Array, Array | None]:
    """(prediction, v): denoise_fn's output, a prediction or (prediction, v) from a variance head."""
    out = denoise_fn(z_t, t)
    pred, v = out if isinstance(out, (tuple, list)) else (out, None)
    if pred.shape != x.shape:
        raise ValueError(f"denoise_fn returned shape {pred.shape}; expected the shape of z, {x.shape}.")
    return pred, v


def step_kl(
    eps: Array, eps_hat: Array, gamma_s: Array, gamma_t: Array, variance: str = "small", v: Array | None = None
) -> Array:
    """KL(q(z_s | z_t, x) || N(mu_theta, Sigma)) elementwise, mu_theta the posterior mean at x_hat (Ho et al. 2020, eq. 8).

    q has variance beta_tilde = sigma_s^2 c, c = -expm1(g_s - g_t), and the means differ by
    alpha_s c (x - x_hat) = alpha_s c e^{g_t/2} (eps_hat - eps), formed directly (no cancellation of
    two means). Sigma = gaussian.step_variance(variance, v): 'small' beta_tilde (the KL is then
    1/2 expm1(g_t - g_s) (eps - eps_hat)^2, VDM eq. 13), 'large' beta, 'learned'
    exp(v log beta + (1 - v) log beta_tilde) (Nichol & Dhariwal 2021, eq. 15). A step of zero
    length (gamma_s = gamma_t, where a clipped schedule is flat) has q = p: its KL is 0.
    """
    gamma_s, gamma_t = jnp.broadcast_arrays(jnp.asarray(gamma_s), jnp.asarray(gamma_t))
    step = gamma_t > gamma_s  # a step of zero length (a clipped schedule's flat end) has KL 0
    gamma_t = jnp.where(step, gamma_t, gamma_s + 1.0)  # any real step there: no 0/0, no NaN gradient
    c = -jnp.expm1(gamma_s - gamma_t)
    alpha_s, sigma_s = alpha_sigma(gamma_s)
    mean_diff = alpha_s * c * jnp.exp(0.5 * gamma_t) * (eps_hat - eps)
    var_q = jnp.square(sigma_s) * c
    if variance == "small":
        return jnp.where(step, gaussian.kl_normal(mean_diff, var_q, jnp.zeros_like(mean_diff), var_q), 0.0)
    _check_variance(variance, v)
    # d = log(Sigma / beta_tilde) in closed form: log(beta / beta_tilde) = log(sigma_t^2 / sigma_s^2), times v for
    # 'learned'; then KL = 1/2 [d + expm1(-d) + mean_diff^2 / Sigma], exact where Sigma ~ beta_tilde (late steps),
    # where log(v2/v1) + v1/v2 - 1 of kl_normal would cancel in float32.
    d = jax.nn.softplus(-gamma_s) - jax.nn.softplus(-gamma_t)
    d = d if variance == "large" else v * d
    kl = 0.5 * (d + jnp.expm1(-d) + jnp.square(mean_diff) * jnp.exp(-d) / var_q)
    return jnp.where(step, kl, 0.0)


def _step_prediction(
    denoise_fn: DenoiseFn, x: Array, eps: Array, t: Array, schedule: Schedule, parameterization: str, num_steps: int
) -> tuple[Array, Array, Array, Array | None]:
    """(gamma_s, gamma_t [B, 1, ...], eps_hat, v) of the step ending at t = i/T (on the grid i/T, i = 1..T): one network pass."""
    # The grid's times as float64 i/T rounded once (a constant): i/T computed under jit may be 1 ulp off (XLA turns
    # x / T into x * (1/T)), which at the last steps of a schedule exact on the grid (gamma up ~7 a step) is 4e-4 in gamma.
    grid = jnp.asarray(np.arange(num_steps + 1) / num_steps, jnp.float32)
    i = jnp.round(t * num_steps).astype(jnp.int32)
    gamma_t = gaussian.expand_to(schedule(grid[i]), x)
    gamma_s = gaussian.expand_to(schedule(grid[i - 1]), x)
    z_t = gaussian.q_sample(x, gamma_t, eps)
    pred, v = network_output(denoise_fn, z_t, t, x)
    return gamma_s, gamma_t, convert(pred, z_t, gamma_t, source=parameterization, target="eps"), v


def discrete_diffusion_term(
    denoise_fn: DenoiseFn,
    x: Array,
    eps: Array,
    t: Array,
    *,
    schedule: Schedule,
    parameterization: str,
    num_steps: int,
    variance: str = "small",
) -> Array:
    """T KL(q(z_s | z_t, x) || p(z_s | z_t)) per example at t = i/T, s = (i-1)/T (VDM eq. 13; `step_kl`).

    p(z_s | z_t) = N(mean of q(z_s | z_t, x_hat), Sigma) with Sigma of `variance`: 'small' (the
    posterior's, VDM's and DDPM's model), 'large' or 'learned' (denoise_fn returns (prediction, v)).
    """
    gamma_s, gamma_t, eps_hat, v = _step_prediction(denoise_fn, x, eps, t, schedule, parameterization, num_steps)
    _check_variance(variance, v)
    return num_steps * gaussian.sum_except_batch(step_kl(eps, eps_hat, gamma_s, gamma_t, variance, v))


def hybrid_diffusion_term(
    denoise_fn: DenoiseFn,
    x: Array,
    eps: Array,
    t: Array,
    weight: Array,
    *,
    schedule: Schedule,
    parameterization: str,
    num_steps: int,
    hybrid_lambda: float,
    hybrid_units: str = "bits",
) -> tuple[Array, Array]:
    """(f ||eps - eps_hat||^2 + lambda L_vlb / ln 2, L_vlb) per example: improved DDPM's L_hybrid (Nichol & Dhariwal 2021, sec. 3.1).

    One network pass at t = i/T returns (prediction, v). The mean part is the weighted loss with
    weight f [B] ('simple': L_simple); L_vlb = T KL(q(z_s | z_t, x) || N(mu_theta, Sigma_v)) in nats is
    the discrete ELBO's estimate with the learned variance and a stop-gradient on the mean, so it
    trains only the variance head. lambda multiplies L_vlb in bits (hybrid_units='bits', improved DDPM's
    `training_losses`: per dimension, our total / D is theirs) or in nats ('nats', before issue 25).
    """
    gamma_s, gamma_t, eps_hat, v = _step_prediction(denoise_fn, x, eps, t, schedule, parameterization, num_steps)
    _check_variance("learned", v)
    mean_part = weight * gaussian.sum_except_batch(jnp.square(eps - eps_hat))
    kl = step_kl(eps, jax.lax.stop_gradient(eps_hat), gamma_s, gamma_t, "learned", v)
    vlb = num_steps * gaussian.sum_except_batch(kl)
    if hybrid_units not in HYBRID_UNITS:
        raise ValueError(f"Unknown hybrid_units {hybrid_units!r}; choose one of {HYBRID_UNITS}.")
    per_nat = 1.0 / math.log(2.0) if hybrid_units == "bits" else 1.0
    return mean_part + hybrid_lambda * per_nat * vlb, vlb


def _check_variance(variance: str, v: Array | None) -> None:
    if variance not in gaussian.VARIANCES:
        raise ValueError(f"Unknown variance {variance!r}; choose one of {gaussian.VARIANCES}.")
    if variance == "learned" and v is None:
        raise ValueError("variance='learned' needs denoise_fn to return (prediction, v), a model with a variance head.")
