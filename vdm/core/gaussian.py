"""Closed forms of the Gaussian diffusion: forward marginals, transitions, posteriors, KLs, decoders.

All functions are pure and broadcast elementwise; per-example reductions are explicit
(`sum_except_batch`). Conventions: gamma = -log SNR, alpha^2 = sigmoid(-gamma),
sigma^2 = sigmoid(gamma), z_t = alpha_t x + sigma_t eps, 8-bit data k -> k/127.5 - 1
(encoding 'endpoints') or (k + 0.5)/128 - 1 ('bin_centres'), see vdm.core.encoding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from vdm.core import encoding as enc
from vdm.core.schedules import alpha_sigma

Array = jax.Array
VARIANCES = ("small", "large", "learned")  # the reverse step's variance: beta_tilde, beta, learned between

LOG_2PI = math.log(2.0 * math.pi)


def expand_to(g: Array, x: Array) -> Array:
    """Reshape a per-example array g [B] to [B, 1, ..., 1] so it broadcasts against x [B, ...]."""
    g = jnp.asarray(g)
    if g.ndim != 1 or g.shape[0] != x.shape[0]:
        raise ValueError(f"expected a per-example array of shape ({x.shape[0]},), got {g.shape}.")
    return g.reshape(g.shape + (1,) * (x.ndim - 1))


def sum_except_batch(x: Array) -> Array:
    """Sum over every axis but the first: [B, ...] -> [B]."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def q_sample(x: Array, gamma: Array, eps: Array) -> Array:
    """z = alpha x + sigma eps, a draw from q(z_t | x) = N(alpha_t x, sigma_t^2 I) (VDM eq. 1)."""
    alpha, sigma = alpha_sigma(gamma)
    return alpha * x + sigma * eps


def transition(gamma_s: Array, gamma_t: Array) -> tuple[Array, Array]:
    """q(z_t | z_s) = N(a z_s, v): a = alpha_t/alpha_s, v = sigma_t^2 - a^2 sigma_s^2 = -expm1(softplus(g_s) - softplus(g_t)) (VDM eq. 2)."""
    gamma_s, gamma_t = jnp.asarray(gamma_s), jnp.asarray(gamma_t)
    log_a2 = jax.nn.softplus(gamma_s) - jax.nn.softplus(gamma_t)  # log(alpha_t^2 / alpha_s^2)
    return jnp.exp(0.5 * log_a2), -jnp.expm1(log_a2)


def posterior(z_t: Array, x: Array, gamma_s: Array, gamma_t: Array) -> tuple[Array, Array]:
    """q(z_s | z_t, x) for s < t (VDM eq. 29-30): with c = -expm1(gamma_s - gamma_t) = 1 - SNR_t/SNR_s,
    mean = alpha_s ((1 - c) z_t / alpha_t + c x), var = sigma_s^2 c.

    expm1 keeps c accurate as s -> t; (1 - c)/alpha_t is evaluated as
    exp(gamma_s - gamma_t + softplus(gamma_t)/2), so gamma_s = -inf gives exactly mean = x, var = 0.
    """
    gamma_s, gamma_t = jnp.asarray(gamma_s), jnp.asarray(gamma_t)
    alpha_s, sigma_s = alpha_sigma(gamma_s)
    c = -jnp.expm1(gamma_s - gamma_t)
    coef_z = jnp.exp(gamma_s - gamma_t + 0.5 * jax.nn.softplus(gamma_t))  # (1 - c) / alpha_t
    mean = alpha_s * (coef_z * z_t + c * x)
    var = jnp.square(sigma_s) * c
    return mean, var


def step_variance(gamma_t: Array, gamma_s: Array, variance: str = "small", v_interp: Array | None = None) -> Array:
    """Reverse-step variance: 'small' beta_tilde = sigma_s^2 c (the posterior's), 'large'
    beta = 1 - alpha_t^2/alpha_s^2 (Ho et al. 2020, sec. 3.2), 'learned'
    exp(v log beta + (1 - v) log beta_tilde) with v in [0, 1] (Nichol & Dhariwal 2021, eq. 15)."""
    if variance not in VARIANCES:
        raise ValueError(f"Unknown variance {variance!r}; choose one of {VARIANCES}.")
    _, sigma_s = alpha_sigma(gamma_s)
    small = jnp.square(sigma_s) * -jnp.expm1(gamma_s - gamma_t)
    if variance == "small":
        return small
    large = transition(gamma_s, gamma_t)[1]
    if variance == "large":
        return large
    if v_interp is None:
        raise ValueError("variance='learned' needs v_interp (the model's interpolation weight in [0, 1]).")
    v = jnp.asarray(v_interp)
    mixed = jnp.exp(v * jnp.log(large) + (1.0 - v) * jnp.log(jnp.where(small > 0, small, 1.0)))
    return jnp.where(small > 0, mixed, jnp.where(v >= 1.0, large, 0.0))  # beta_tilde = 0 at gamma_s = -inf


def kl_normal(mean1: Array, var1: Array, mean2: Array, var2: Array) -> Array:
    """KL(N(m1, v1) || N(m2, v2)) = 1/2 [log(v2/v1) + (v1 + (m1 - m2)^2)/v2 - 1], elementwise.

    Evaluated as 1/2 [log v2 - log v1 + (v1 - v2)/v2 + (m1 - m2)^2/v2]: equal variances give exactly
    (m1 - m2)^2 / (2 v), with no cancellation against the 1 (the discrete ELBO's per-step terms).
    """
    return 0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 - var2) / var2 + jnp.square(mean1 - mean2) / var2)


def normal_logpdf(x: Array, mean: Array, var: Array) -> Array:
    """log N(x; mean, var) = -1/2 [log(2 pi var) + (x - mean)^2 / var], elementwise."""
    return -0.5 * (LOG_2PI + jnp.log(var) + jnp.square(x - mean) / var)


def prior_kl(x: Array, gamma_1: Array) -> Array:
    """KL(q(z_1|x) || N(0, I)) per example = sum 1/2 [alpha_1^2 (x^2 - 1) + softplus(-gamma_1)] (VDM eq. 10 prior term).

    Uses sigma^2 - 1 = -alpha^2 and -log sigma^2 = softplus(-gamma) to avoid cancellation.
    """
    alpha2 = jax.nn.sigmoid(-jnp.asarray(gamma_1))
    kl = 0.5 * (alpha2 * (jnp.square(x) - 1.0) + jax.nn.softplus(-jnp.asarray(gamma_1)))
    return sum_except_batch(jnp.broadcast_to(kl, x.shape))


def categorical_log_probs(z_0: Array, gamma_0: Array, encoding: str = "endpoints") -> Array:
    """VDM's decoder: log p(k | z_0) = log_softmax_k(-1/2 exp(-gamma_0) (z_0/alpha_0 - x_k)^2), [..., 256] (VDM appendix).

    Each of the 256 values x_k (vdm.core.encoding: k/127.5 - 1, or (k + 0.5)/128 - 1 as google-research/vdm)
    gets the Gaussian density of z_0/alpha_0 around it, with variance sigma_0^2/alpha_0^2 = exp(gamma_0),
    renormalised over k.
    """
    alpha_0, _ = alpha_sigma(gamma_0)
    z_rescaled = (z_0 / alpha_0)[..., None]
    inv_var = jnp.exp(-jnp.asarray(gamma_0))[..., None]
    logits = -0.5 * inv_var * jnp.square(z_rescaled - enc.grid_values(encoding, z_0.dtype))
    return jax.nn.log_softmax(logits, axis=-1)


def _log_ndtr_diff(lo: Array, hi: Array) -> Array:
    """log(Phi(hi) - Phi(lo)) for lo < hi, stable in both tails (uses Phi(hi)-Phi(lo) = Phi(-lo)-Phi(-hi))."""
    flip = lo > 0.0
    a = jnp.where(flip, -hi, lo)
    b = jnp.where(flip, -lo, hi)
    log_b = log_ndtr(b)
    return log_b + jnp.log(-jnp.expm1(log_ndtr(a) - log_b))


def discretized_gaussian_log_prob(x: Array, mean: Array, log_scale: Array, encoding: str = "endpoints") -> Array:
    """DDPM's decoder: log of the N(mean, e^{2 log_scale}) mass of x's bin [x - Delta/2, x + Delta/2],
    edge bins open to -inf (k = 0) and +inf (k = 255), with the exact erf CDF (Ho et al. 2020, eq. 13).
    Delta = 2/255 ('endpoints') or 2/256 ('bin_centres'), vdm.core.encoding."""
    inv_scale = jnp.exp(-log_scale)
    half = 0.5 * enc.bin_width(encoding)
    lo = (x - half - mean) * inv_scale
    hi = (x + half - mean) * inv_scale
    x_lo = enc.lowest_value(encoding)
    bottom = x < x_lo + half
    top = x > -x_lo - half
    lo = jnp.where(bottom, -jnp.inf, lo)
    hi = jnp.where(top, jnp.inf, hi)
    interior = _log_ndtr_diff(jnp.where(bottom | top, -1.0, lo), jnp.where(bottom | top, 1.0, hi))
    return jnp.where(bottom, log_ndtr(hi), jnp.where(top, log_ndtr(-lo), interior))


DECODER_ALIASES = {"discrete": "categorical"}  # the core contract's name (objectives.elbo's default)
DECODERS = ("categorical", "discretized_gaussian", "gaussian")  # config key model.decoder


def resolve_decoder(decoder: str) -> str:
    """The decoder's name in DECODERS ('discrete' -> 'categorical'), else ValueError naming the valid ones."""
    name = DECODER_ALIASES.get(decoder, decoder) if isinstance(decoder, str) else decoder
    if name not in DECODERS:
        raise ValueError(
            f"Unknown decoder {decoder!r}; valid: {', '.join(DECODERS)} "
            f"(and {', '.join(repr(a) for a in DECODER_ALIASES)}, the core contract's name for "
            f"'categorical')."
        )
    return name


def decoder_log_prob(
    x: Array, z_0: Array, gamma_0: Array, decoder: str = "discrete", encoding: str = "endpoints"
) -> Array:
    """log p(x | z_0) per example for p(x|z_0) from z_0/alpha_0 with variance sigma_0^2/alpha_0^2 = exp(gamma_0).

    'categorical' (alias 'discrete', the core contract's name): VDM's 256-way decoder;
    'discretized_gaussian': DDPM's binned Gaussian; 'gaussian': N(x; z_0/alpha_0, exp(gamma_0))
    for continuous data. x, z_0: [B, ...]; gamma_0 broadcastable against them. encoding: the
    8-bit grid of x for the two discrete decoders (vdm.core.encoding; DatasetInfo.encoding).
    """
    decoder = resolve_decoder(decoder)
    if decoder == "categorical":
        log_probs = categorical_log_probs(z_0, gamma_0, encoding)
        ll = jnp.take_along_axis(log_probs, enc.bin_index(x, encoding)[..., None], axis=-1)[..., 0]
    elif decoder == "discretized_gaussian":
        alpha_0, _ = alpha_sigma(gamma_0)
        ll = discretized_gaussian_log_prob(x, z_0 / alpha_0, 0.5 * jnp.asarray(gamma_0), encoding)
    else:
        alpha_0, _ = alpha_sigma(gamma_0)
        ll = normal_logpdf(x, z_0 / alpha_0, jnp.exp(jnp.asarray(gamma_0)))
    return sum_except_batch(jnp.broadcast_to(ll, x.shape))
