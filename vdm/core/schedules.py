"""Noise schedules gamma(t) = -log SNR(t) for a variance-preserving diffusion.

A schedule is a pure function t -> gamma, strictly increasing on [0, 1], with
data at t=0 and noise at t=1. Variance preserving:
    alpha^2 = sigmoid(-gamma),  sigma^2 = sigmoid(gamma),  SNR = exp(-gamma).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Schedule = Callable[[Array], Array]


def alpha_sigma(gamma: Array) -> tuple[Array, Array]:
    """(alpha, sigma) = (sqrt(sigmoid(-gamma)), sqrt(sigmoid(gamma))) (VDM, Kingma et al. 2021, eq. 3)."""
    gamma = jnp.asarray(gamma)
    return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def snr(gamma: Array) -> Array:
    """SNR = alpha^2 / sigma^2 = exp(-gamma) (VDM eq. 4)."""
    return jnp.exp(-jnp.asarray(gamma))


def gamma_to_edm_sigma(gamma: Array) -> Array:
    """EDM noise level sigma_edm = sigma/alpha = exp(gamma/2) (Karras et al. 2022, z/alpha = x + sigma_edm eps)."""
    return jnp.exp(0.5 * jnp.asarray(gamma))


def edm_sigma_to_gamma(sigma_edm: Array) -> Array:
    """gamma = 2 log sigma_edm, the inverse of `gamma_to_edm_sigma`."""
    return 2.0 * jnp.log(jnp.asarray(sigma_edm))


def dgamma_dt(schedule: Schedule, t: Array) -> tuple[Array, Array]:
    """(gamma(t), dgamma/dt(t)) by forward-mode differentiation (jax.jvp), elementwise in t."""
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(schedule, (t,), (jnp.ones_like(t),))


def linear_logsnr(gamma_min: float = -13.3, gamma_max: float = 5.0) -> Schedule:
    """VDM's fixed schedule gamma(t) = gamma_min + (gamma_max - gamma_min) t (Kingma et al. 2021, sec. 5)."""
    if not gamma_max > gamma_min:
        raise ValueError(f"linear_logsnr needs gamma_max > gamma_min, got {gamma_min=}, {gamma_max=}.")

    def schedule(t: Array) -> Array:
        t = jnp.asarray(t, jnp.float32)
        return gamma_min + (gamma_max - gamma_min) * t

    return schedule


def cosine(s: float = 0.008, gamma_min: float = -20.0, gamma_max: float = 20.0) -> Schedule:
    """Improved-DDPM cosine, abar(t) = f(t)/f(0), f(t) = cos^2(((t+s)/(1+s)) pi/2) (Nichol & Dhariwal 2021, eq. 17).

    With u = (t+s)/(1+s) pi/2 and u0 = s/(1+s) pi/2, 1 - abar = sin(u-u0) sin(u+u0) / cos^2(u0), so
        gamma = log sin(u - u0) + log sin(u + u0) - 2 log cos(u),
    evaluated from t directly (no cancellation). Unclipped, gamma(0) = -inf and gamma(1) = +inf.
    The clip: gamma is clipped to [gamma_min, gamma_max] = [-20, 20] by default, so alpha and
    sigma stay >= 4.5e-5 in float32; the clip binds only for t < ~2e-9 and t > 1 - 3e-5, and
    contains every value improved-DDPM's T=1000 grid takes (-10.1 at t=1/T; +19.8 at t=1 after
    its beta <= 0.999 clip).
    """
    if s <= 0:
        raise ValueError(f"cosine needs an offset s > 0, got {s=}.")
    half_pi_over = 0.5 * math.pi / (1.0 + s)

    def schedule(t: Array) -> Array:
        t = jnp.asarray(t, jnp.float32)
        # Clamp at the ends: under jit, 1 - i/T may round to -1.5e-8 at t = 1 (log of a negative).
        a = jnp.sin(jnp.maximum(t, 0.0) * half_pi_over)  # sin(u - u0)
        b = jnp.sin((t + 2.0 * s) * half_pi_over)  # sin(u + u0)
        c = jnp.sin(jnp.maximum(1.0 - t, 0.0) * half_pi_over)  # cos(u)
        gamma = jnp.log(a) + jnp.log(b) - 2.0 * jnp.log(c)
        return jnp.clip(gamma, gamma_min, gamma_max)

    return schedule


def from_alphas_cumprod(alphas_cumprod) -> Schedule:
    """Schedule exact on the grid t_i = i/T: gamma(i/T) = log((1 - abar_i)/abar_i), i = 1..T (Ho et al. 2020).

    Between grid points gamma is linear in t; on [0, 1/T] the first segment is extended
    linearly, so gamma(0) = 2 gamma_1 - gamma_2 is finite (DDPM itself has no latent at t=0;
    a finite gamma(0) keeps VDM's reconstruction term p(x | z_0) well defined).
    """
    abar = np.asarray(alphas_cumprod, np.float64)
    if abar.ndim != 1 or abar.size < 2:
        raise ValueError(f"alphas_cumprod must be a 1-D array with >= 2 entries, got shape {abar.shape}.")
    if not (np.all(abar > 0) and np.all(abar < 1) and np.all(np.diff(abar) < 0)):
        raise ValueError("alphas_cumprod must lie in (0, 1) and be strictly decreasing.")
    table = np.log1p(-abar) - np.log(abar)  # gamma_i, i = 1..T, in float64
    table = np.concatenate([[2 * table[0] - table[1]], table])
    num_steps = abar.size
    grid = jnp.asarray(np.arange(num_steps + 1) / num_steps, jnp.float32)
    values = jnp.asarray(table, jnp.float32)

    def schedule(t: Array) -> Array:
        t = jnp.asarray(t, jnp.float32)
        return jnp.interp(t, grid, values)

    return schedule


def from_betas(betas) -> Schedule:
    """Schedule from per-step variances beta_i: abar_i = prod_{j<=i} (1 - beta_j) (Ho et al. 2020, eq. 4)."""
    betas = np.asarray(betas, np.float64)
    if np.any(betas <= 0) or np.any(betas >= 1):
        raise ValueError("betas must lie in (0, 1).")
    return from_alphas_cumprod(np.exp(np.cumsum(np.log1p(-betas))))


def ddpm_linear(beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000) -> Schedule:
    """DDPM's linear betas, beta_i = linspace(beta_start, beta_end, T), exact on the grid i/T (Ho et al. 2020)."""
    return from_betas(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


@functools.lru_cache(maxsize=8)
def ddpm_timestep_gammas(beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000) -> np.ndarray:
    """gamma_k = log((1 - abar_k) / abar_k), abar_k = prod_{j<=k} (1 - beta_j), at DDPM's 0-based timesteps k < T.

    The codes of Ho et al. 2020 / improved DDPM / DiT index their T steps k = 0..T-1 with alphas_cumprod[k] =
    abar_k: their k is the grid point t = (k + 1)/T here (`ddpm_linear` is exact there). float64, read-only.
    """
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    log_abar = np.cumsum(np.log1p(-betas))
    table = np.log(-np.expm1(log_abar)) - log_abar  # log(1 - abar) - log(abar)
    table.setflags(write=False)
    return table


def gamma_of_ddpm_timestep(k: Array, table: np.ndarray | None = None) -> Array:
    """gamma at a (fractional) DDPM timestep k: gamma_k of `ddpm_timestep_gammas`, linear in k between the integers.

    Extended linearly beyond both ends (the first and last segments), so it is strictly increasing on all k; on
    [-1, T - 1] it equals ddpm_linear()((k + 1) / T). `table`: the gamma_k (default: DDPM's linear betas, T = 1000).
    """
    table = ddpm_timestep_gammas() if table is None else table
    values = jnp.asarray(table, jnp.float32)
    k = jnp.asarray(k, jnp.float32)
    i = jnp.clip(jnp.floor(k), 0, table.size - 2).astype(jnp.int32)
    return values[i] + (k - i) * (values[i + 1] - values[i])


def ddpm_timestep_of_gamma(gamma: Array, table: np.ndarray | None = None) -> Array:
    """The inverse of `gamma_of_ddpm_timestep`: the fractional DDPM timestep k whose gamma is `gamma` (exact at gamma_k)."""
    table = ddpm_timestep_gammas() if table is None else table
    values = jnp.asarray(table, jnp.float32)
    gamma = jnp.asarray(gamma, jnp.float32)
    i = jnp.clip(jnp.searchsorted(values, gamma, side="right") - 1, 0, table.size - 2).astype(jnp.int32)
    return i + (gamma - values[i]) / (values[i + 1] - values[i])


def ot(gamma_min: float = -20.0, gamma_max: float = 20.0) -> Schedule:
    """The straight (OT) path z = (1 - t) x + t eps as a VP schedule: gamma(t) = 2 log(t / (1 - t)) (Lipman et al. 2023).

    Its log-SNR is lambda = 2 log((1 - t)/t) (SNR = (1 - t)^2 / t^2), so z_OT(t) = (alpha + sigma)^-1 z_VP at the
    same lambda, with alpha + sigma = 1/sqrt((1 - t)^2 + t^2) (`ot_scale`). Clipped to [gamma_min, gamma_max] like
    cosine: t is clamped to [sigmoid(gamma_min/2), sigmoid(gamma_max/2)] first, so gamma' is finite (0 outside).
    """
    if not gamma_max > gamma_min:
        raise ValueError(f"ot needs gamma_max > gamma_min, got {gamma_min=}, {gamma_max=}.")
    t_lo, t_hi = 1.0 / (1.0 + math.exp(-0.5 * gamma_min)), 1.0 / (1.0 + math.exp(-0.5 * gamma_max))

    def schedule(t: Array) -> Array:
        t = jnp.clip(jnp.asarray(t, jnp.float32), t_lo, t_hi)
        return 2.0 * (jnp.log(t) - jnp.log1p(-t))

    return schedule


def ot_scale(gamma: Array) -> Array:
    """alpha + sigma: z_OT = z_VP / (alpha + sigma) and OT time t = sigma / (alpha + sigma) = sigmoid(gamma / 2)."""
    alpha, sigma = alpha_sigma(gamma)
    return alpha + sigma


def ot_time(gamma: Array) -> Array:
    """The OT path's time at log-SNR -gamma: t = sigmoid(gamma / 2), the inverse of `ot` (unclipped)."""
    return jax.nn.sigmoid(0.5 * jnp.asarray(gamma))


def shifted(schedule: Schedule, shift: float) -> Schedule:
    """gamma(t) + 2 log(shift): the resolution shift of a schedule, log-SNR lowered by 2 log(shift).

    Simple diffusion (Hoogeboom et al. 2023, eq. 4): lambda + 2 log(base/d), i.e. shift = d / base for resolution d.
    On the OT path it is SD3's shift t_m = s t / (1 + (s - 1) t) (Esser et al. 2024, eq. 23, s = sqrt(m/n)).
    shift = 1 is the schedule itself; the endpoints move with it.
    """
    if not shift > 0:
        raise ValueError(f"a schedule shift must be > 0, got {shift=}.")
    if shift == 1.0:
        return schedule
    offset = 2.0 * math.log(shift)
    return lambda t: schedule(t) + offset


SCHEDULES = {"linear_logsnr": linear_logsnr, "cosine": cosine, "ddpm_linear": ddpm_linear, "ot": ot}


def get_schedule(
    name: str, gamma_min: float | None = None, gamma_max: float | None = None, shift: float = 1.0
) -> Schedule:
    """Fixed schedule by name, one of SCHEDULES, shifted by `shift` (`shifted`); the learned ones live in vdm.models.schedule.

    gamma_min/gamma_max set linear_logsnr's endpoints and cosine's and ot's clip; ddpm_linear's endpoints
    are fixed by its betas, so they are not used there.
    """
    if name not in SCHEDULES:
        raise ValueError(
            f"Unknown schedule {name!r}; choose one of {sorted(SCHEDULES)} "
            "(or 'learned' / 'learned_linear', built by the trainer from vdm.models.schedule)."
        )
    if name == "ddpm_linear":
        return shifted(ddpm_linear(), shift)
    bounds = {k: v for k, v in (("gamma_min", gamma_min), ("gamma_max", gamma_max)) if v is not None}
    return shifted(SCHEDULES[name](**bounds), shift)


def inverse(schedule: Schedule, gamma: Array, t_lo: float = 0.0, t_hi: float = 1.0, num_iters: int = 48) -> Array:
    """t in [t_lo, t_hi] with schedule(t) = gamma, by vectorised bisection (gamma clipped into [gamma(t_lo), gamma(t_hi)]).

    For an increasing schedule (a plain callable t -> gamma, e.g. a bound learned one);
    elementwise over any shape of gamma, jit-able; after num_iters halvings the bracket is
    2^-num_iters wide (40 reach float32 resolution). Where the schedule is flat (cosine's
    clipped ends) it returns a t of the flat stretch's edge. No gradient flows (bisection).
    """
    gamma = jnp.asarray(gamma, jnp.float32)
    ends = schedule(jnp.asarray([t_lo, t_hi], jnp.float32))
    gamma = jnp.clip(gamma, ends[0], ends[1])

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = schedule(mid) < gamma
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, num_iters, halve, (jnp.full_like(gamma, t_lo), jnp.full_like(gamma, t_hi)))
    return jax.lax.stop_gradient(0.5 * (lo + hi))
