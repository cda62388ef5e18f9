"""The loss weightings of the unified view: each f(gamma, gamma') multiplies ||eps - eps_hat||^2 (Kingma & Gao 2023).

Each returns the factor f that multiplies ||eps - eps_hat||^2 at the sampled t, so the per-example loss is
f * ||eps - eps_hat||^2. In Kingma & Gao's terms f = 1/2 w(lambda) gamma'(t): the schedule-free weightings (elbo,
sigmoid, edm, eps_cosine, v_cosine) give w(lambda) directly; the losses defined by sampling t uniformly under a
schedule (simple, snr, min_snr, flow) have w = 2 f / gamma'(t), i.e. they carry the schedule's density p(lambda).
Stating f directly keeps them defined where gamma' = 0. docs/objectives.md tabulates the w(lambda) each implies.

'flow' is the flow-matching loss ||(eps - x) - u_hat||^2 = f ||eps - eps_hat||^2: eps - eps_hat = alpha (u - u_hat) /
(alpha + sigma) (vdm.core.parameterization), so f = ((alpha + sigma)/alpha)^2 = (1 + e^{gamma/2})^2. On the OT
schedule (gamma = 2 log(t/(1-t)), gamma' = 2/(t(1-t))) with uniform t: w = 2 f / gamma' = (1/(1-t))^2 t (1-t)
= t/(1-t) = e^{-lambda/2} (Kingma & Gao 2023, Table 1, FM-OT).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def weight_elbo(gamma: Array, dgamma: Array) -> Array:
    """f = 1/2 gamma'(t), w(lambda) = 1: the continuous ELBO (Kingma et al. 2021, eq. 17)."""
    return 0.5 * dgamma * jnp.ones_like(gamma)


def weight_simple(gamma: Array, dgamma: Array) -> Array:
    """f = 1: DDPM's L_simple = E_t ||eps - eps_hat||^2 (Ho et al. 2020, eq. 14)."""
    return jnp.ones_like(gamma)


def weight_snr(gamma: Array, dgamma: Array) -> Array:
    """f = max(1, 1/SNR): truncated SNR, E_t max(SNR, 1) ||x - x_hat||^2 (Salimans & Ho 2022, sec. 4)."""
    return jnp.maximum(1.0, jnp.exp(gamma))


def weight_min_snr(gamma: Array, dgamma: Array, snr_gamma: float = 5.0) -> Array:
    """f = min(1, 5/SNR): Min-SNR-5, E_t min(SNR, 5) ||x - x_hat||^2 (Hang et al. 2023, eq. 7)."""
    return jnp.minimum(1.0, snr_gamma * jnp.exp(gamma))


def weight_sigmoid(gamma: Array, dgamma: Array, bias: float = -2.0) -> Array:
    """w(lambda) = sigmoid(b - lambda) = sigmoid(gamma + b), f = w gamma'/2 (Kingma & Gao 2023, sec. 5)."""
    return 0.5 * dgamma * jax.nn.sigmoid(gamma + bias)


def weight_edm(gamma: Array, dgamma: Array, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5) -> Array:
    """EDM (Karras et al. 2022) in Kingma & Gao 2023's form: w(lambda) = N(lambda; -2 P_mean, (2 P_std)^2) (e^-lambda + s_d^2)/s_d^2."""
    lam = -gamma
    mu, std = -2.0 * p_mean, 2.0 * p_std
    density = jnp.exp(-0.5 * jnp.square((lam - mu) / std)) / (std * math.sqrt(2.0 * math.pi))
    return 0.5 * dgamma * density * (jnp.exp(gamma) + sigma_data**2) / sigma_data**2


def weight_flow(gamma: Array, dgamma: Array) -> Array:
    """f = (1 + e^{gamma/2})^2: flow matching's ||(eps - x) - u_hat||^2 at the sampled t (Lipman et al. 2023, eq. 23).

    On the OT schedule with uniform t, w(lambda) = e^{-lambda/2} (Kingma & Gao 2023, Table 1); with logit-normal t,
    SD3's rectified flow (Esser et al. 2024, sec. 3.1), w = pi(t) e^{-lambda/2}.
    """
    return jnp.square(1.0 + jnp.exp(0.5 * gamma))


def weight_eps_cosine(gamma: Array, dgamma: Array) -> Array:
    """w(lambda) = sech(lambda/2) / pi: improved DDPM's eps-MSE under the cosine schedule (Kingma & Gao 2023, Table 1).

    For cosine with s -> 0, gamma'(t) = 2 pi cosh(lambda/2), so f = w gamma'/2 = 1: L_simple at uniform t.
    """
    return 0.5 * dgamma / (math.pi * jnp.cosh(0.5 * gamma))


def weight_v_cosine(gamma: Array, dgamma: Array) -> Array:
    """w(lambda) = (2/pi) e^{-lambda/2}: v-MSE under the cosine schedule (Salimans & Ho 2022; Kingma & Gao 2023, Table 1).

    ||v - v_hat||^2 = (1 + e^gamma) ||eps - eps_hat||^2, and (1 + e^{-lambda}) sech(lambda/2) / pi = (2/pi) e^{-lambda/2}:
    for cosine with s -> 0, f = w gamma'/2 = 1 + e^gamma. FM-OT's w = e^{-lambda/2} is this up to the factor 2/pi.
    """
    return 0.5 * dgamma * (2.0 / math.pi) * jnp.exp(0.5 * gamma)


WEIGHTINGS: dict[str, Callable[..., Array]] = {
    "elbo": weight_elbo,
    "simple": weight_simple,
    "snr": weight_snr,
    "min_snr": weight_min_snr,
    "sigmoid": weight_sigmoid,
    "edm": weight_edm,
    "flow": weight_flow,
    "eps_cosine": weight_eps_cosine,
    "v_cosine": weight_v_cosine,
}


def get_weighting(name: str) -> Callable[..., Array]:
    """The eps-space weight f(gamma, gamma') of `name`, one of WEIGHTINGS."""
    if name not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {name!r}; choose one of {sorted(WEIGHTINGS)}.")
    return WEIGHTINGS[name]
