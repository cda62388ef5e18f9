"""Adaptive noise schedule: importance sampling of the noise level (VDM++, Kingma & Gao 2023, sec. 5.2 / app. F).

The estimator. Every weighted diffusion loss is an integral over the log-SNR lambda = -gamma,
    L = integral g(lambda) E||eps - eps_hat||^2 dlambda,
and drawing lambda from any density p(lambda) > 0 with the weight 1/p keeps its expectation. In t:
the per-example loss at t ~ U(0, 1) is f(t) ||eps - eps_hat||^2 (f = 1/2 w(lambda) gamma'(t), see
vdm.core.objectives); drawing t from q(t) instead, f(t) ||eps - eps_hat||^2 / q(t) is unbiased for the same
loss, for any q > 0 on the t's that matter. A lambda drawn from p, mapped through t = gamma^-1(-lambda),
has the density (change of variables, |dlambda/dt| = gamma'(t))
    q(t) = p(lambda(t)) gamma'(t).
The variance is lowest for p proportional to the integrand g(lambda) E||eps - eps_hat||^2.

The histogram. p is piecewise constant on K equal-width lambda bins over [-gamma(1), -gamma(0)].
Each bin keeps an exponential moving average of the sum and of the count of the integrand values
per unit lambda, g err = f err / gamma'(t) = (importance-weighted loss) q(t) / gamma'(t) (`integrand`),
seen in it (`update`; psum over devices so every device keeps one histogram); their ratio h_k is the
bin's mean integrand. Bins never seen get the largest seen h (optimism, so they get drawn).

The mixing. p_k = (1 - m) h_k / sum(h) + m / K: a uniform share m keeps every p_k >= m/K > 0, so the
importance weights stay bounded and the estimator stays unbiased whatever the histogram holds (it only
changes the variance). Draws (`draw`) are by inverse CDF from two uniforms, so a stratified u_bin gives
stratified bins. Everything here is a pure jnp function; the histogram is a dict of float32 arrays.

SD3's logit-normal t (`logit_normal_t`, `logit_normal_density`) is not an importance density: drawn without the
weight 1/q, it changes the objective to w(lambda) = 2 f pi(t) / gamma'(t) (Esser et al. 2024, sec. 3.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from vdm.core import schedules

Array = jax.Array
_TINY = 1e-30  # floor of the histogram's h (float32 normal range) and of its counts
_MIN_DGAMMA = 1e-6  # floor of gamma'(t) where the schedule is flat (cosine's clipped ends)


def logit_normal_t(u: Array, mean: float = 0.0, std: float = 1.0) -> Array:
    """t = sigmoid(mean + std Phi^-1(u)) for u in [0, 1): logit-normal t by inverse CDF (SD3, Esser et al. 2024, eq. 19).

    A stratified u (VDM's antithetic draws) gives stratified t. On the OT schedule lambda = -2 logit(t), so the draw
    is lambda ~ N(-2 mean, (2 std)^2).
    """
    z = ndtri(jnp.asarray(u, jnp.float32))
    return jax.nn.sigmoid(mean + std * z)


def logit_normal_density(t: Array, mean: float = 0.0, std: float = 1.0) -> Array:
    """pi(t) = N(logit t; mean, std^2) / (t (1 - t)), the density of `logit_normal_t` (Esser et al. 2024, eq. 19)."""
    t = jnp.asarray(t, jnp.float32)
    logit = jnp.log(t) - jnp.log1p(-t)
    return jnp.exp(-0.5 * jnp.square((logit - mean) / std)) / (std * jnp.sqrt(2.0 * jnp.pi) * t * (1.0 - t))


def lambda_edges(gamma_0: Array, gamma_1: Array, num_bins: int) -> Array:
    """K + 1 increasing equal-width edges of lambda = -gamma over [-gamma_1, -gamma_0] (gamma_0 = gamma(0), gamma_1 = gamma(1))."""
    return jnp.linspace(-jnp.asarray(gamma_1, jnp.float32), -jnp.asarray(gamma_0, jnp.float32), num_bins + 1)


def init_histogram(num_bins: int) -> dict[str, Array]:
    """The empty histogram {'sums': zeros [K], 'counts': zeros [K]} (float32, so it checkpoints as is)."""
    return {"sums": jnp.zeros((num_bins,), jnp.float32), "counts": jnp.zeros((num_bins,), jnp.float32)}


def bin_index(lam: Array, edges: Array) -> Array:
    """Bin k [B] int32 with edges[k] <= lambda < edges[k + 1], clipped into 0..K-1 (for t drawn some other way, e.g. uniform)."""
    k = jnp.searchsorted(edges, jnp.asarray(lam, jnp.float32), side="right") - 1
    return jnp.clip(k, 0, edges.shape[0] - 2).astype(jnp.int32)


def bin_probs(hist: dict[str, Array], uniform_mix: float) -> Array:
    """p_k = (1 - m) h_k / sum(h) + m / K, h_k = sums_k / counts_k (VDM++ adaptive schedule); p > 0 for m > 0.

    Bins never visited (counts_k <= 1e-30, or a non-finite h_k) get the largest visited h
    (optimistic); all unvisited gives the uniform p. h is clipped to >= 0 and floored at
    1e-12 max(h) + 1e-30, so even m = 0 leaves every p_k > 0. Equal-width bins: mass ~ h.
    """
    sums, counts = hist["sums"], hist["counts"]
    num_bins = sums.shape[0]
    h = jnp.maximum(sums / jnp.maximum(counts, _TINY), 0.0)
    visited = (counts > _TINY) & jnp.isfinite(h)
    h = jnp.where(visited, h, 0.0)
    h = jnp.where(visited, h, jnp.max(h))
    h = jnp.maximum(h, 1e-12 * jnp.max(h) + _TINY)
    return (1.0 - uniform_mix) * h / jnp.sum(h) + uniform_mix / num_bins


def draw(u_bin: Array, u_in: Array, probs: Array, edges: Array, schedule: schedules.Schedule) -> dict[str, Array]:
    """t ~ q(t) = p_k / width_k * gamma'(t) by inverse CDF: bin k from u_bin, lambda uniform in it, t = gamma^-1(-lambda).

    u_bin, u_in in [0, 1) [B]; k = searchsorted of u_bin on the cumulative probs (clipped to
    0..K-1), lambda = edges[k] + u_in width_k, t = schedules.inverse(schedule, -lambda). Returns
    t [B], density q(t) [B], bin [B] int32, lam [B]. gamma'(t) is floored at 1e-6 in the density,
    so it is never 0 or NaN where the schedule is flat (cosine's clipped ends; those t-stretches
    have true density 0 and are not drawn). Everything is stop-gradient: no gradient flows
    through the draw (also not into a learned schedule's params).
    """
    probs, edges = jax.lax.stop_gradient(probs), jax.lax.stop_gradient(edges)
    num_bins = probs.shape[0]
    cdf = jnp.cumsum(probs)
    cdf = cdf / cdf[-1]
    k = jnp.clip(jnp.searchsorted(cdf, jnp.asarray(u_bin, jnp.float32), side="right"), 0, num_bins - 1)
    width = edges[k + 1] - edges[k]
    lam = edges[k] + jnp.asarray(u_in, jnp.float32) * width
    t = schedules.inverse(schedule, -lam)
    _, dgamma = schedules.dgamma_dt(schedule, t)
    density = probs[k] / width * jnp.maximum(dgamma, _MIN_DGAMMA)
    out = {"t": t, "density": density, "bin": k.astype(jnp.int32), "lam": lam}
    return jax.lax.stop_gradient(out)


def integrand(loss: Array, density: Array, dgamma: Array) -> Array:
    """Per-unit-lambda value g err = loss q(t) / gamma'(t) (loss importance-weighted; density = 1 for uniform t).

    gamma'(t) is floored at 1e-6 as in `draw`, so a flat stretch of the schedule gives no NaN.
    """
    return loss * density / jnp.maximum(dgamma, _MIN_DGAMMA)


def update(
    hist: dict[str, Array], bins: Array, values: Array, decay: float, axis_name: str | None = None
) -> dict[str, Array]:
    """EMA of per-bin sums and counts: s = decay s + (1 - decay) sum_{bin=k} v, c likewise with v = 1 (psum over axis_name).

    Batch sums are segment sums over `bins`; inside shard_map with axis_name they are psum-ed, so
    every device keeps the same histogram. Bins not hit this step only decay (their ratio stays).
    Non-finite values are left out (neither summed nor counted). No gradient flows.
    """
    num_bins = hist["sums"].shape[0]
    values = jax.lax.stop_gradient(jnp.asarray(values, jnp.float32))
    ok = jnp.isfinite(values)
    bins = jnp.asarray(bins, jnp.int32)
    batch_sums = jax.ops.segment_sum(jnp.where(ok, values, 0.0), bins, num_segments=num_bins)
    batch_counts = jax.ops.segment_sum(ok.astype(jnp.float32), bins, num_segments=num_bins)
    if axis_name is not None:
        batch_sums, batch_counts = jax.lax.psum((batch_sums, batch_counts), axis_name)
    decay = jnp.asarray(decay, jnp.float32)
    return {
        "sums": decay * hist["sums"] + (1.0 - decay) * batch_sums,
        "counts": decay * hist["counts"] + (1.0 - decay) * batch_counts,
    }


def fit(bins: Array, values: Array, num_bins: int) -> dict[str, Array]:
    """Plain per-bin sums and counts of a pilot batch: `update` from the empty histogram with decay 0."""
    return update(init_histogram(num_bins), bins, values, 0.0)


def rms_histogram(bins: Array, values: Array, num_bins: int) -> dict[str, Array]:
    """Per-bin root mean square of a pilot batch's values, as a histogram: bin_probs of it is p ~ sqrt(E[v^2 | lambda]).

    For a fixed model the importance-sampled estimate v/p has variance integral E[v^2|lambda]/p dlambda
    - L^2, least for p proportional to sqrt(E[v^2 | lambda]) (the optimal importance density), which
    this targets; `fit` (the mean, VDM++'s choice) targets the integrand itself.
    """
    hist = fit(bins, jnp.square(jnp.asarray(values, jnp.float32)), num_bins)
    rms = jnp.sqrt(hist["sums"] / jnp.maximum(hist["counts"], _TINY))
    return {"sums": rms * hist["counts"], "counts": hist["counts"]}
