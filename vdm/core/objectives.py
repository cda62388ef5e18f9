"""The negative ELBO's terms, one per-example function for training (weighted) and evaluation (w = 1).

The negative ELBO of x splits into three terms (VDM, Kingma et al. 2021, eq. 11):
    -ELBO = E[-log p(x|z_0)] + KL(q(z_1|x) || p(z_1)) + L_T(x)
    reconstruction           prior                    diffusion
with the diffusion term, for T steps s = (i-1)/T -> t = i/T (VDM eq. 13) and T -> infinity (eq. 17):
    L_T   = T/2 E_{i, eps}[expm1(gamma_t - gamma_s) ||eps - eps_hat(z_t; t)||^2]
    L_inf = 1/2 E_{t ~ U(0,1), eps}[gamma'(t) ||eps - eps_hat(z_t; t)||^2].

Training objectives (Kingma & Gao 2023): every usual diffusion loss is a weighted integral of the
same per-noise-level loss, L_w = 1/2 E_t[w(lambda_t) gamma'(t) ||eps - eps_hat||^2], lambda = -gamma;
w = 1 is the ELBO. The weightings below are small pure functions of the log-SNR (and of gamma'(t),
which turns w(lambda) into a weight at the sampled t).

`neg_elbo_terms` is the one loss: given the noise (t, eps, eps_0, drawn by `example_noise` from a
key and each example's global index), per-example nats of the three terms with the diffusion term
weighted by w; w = 1 is the ELBO, so `elbo` (evaluation) is neg_elbo_terms with its own draws. Its
gradient is jax.value_and_grad of the batch mean; VDM's variance-minimising gradient for a learned
schedule's shape (sec. 5.2) is the opt-in wrapper `variance_minimizing_value_and_grad`
(vdm/core/schedule_gradient.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vdm.core import gaussian
from vdm.core.discrete_time import discrete_diffusion_term, hybrid_diffusion_term, network_output
from vdm.core.parameterization import convert
from vdm.core.schedules import Schedule, dgamma_dt
from vdm.core.weightings import get_weighting, weight_elbo, weight_simple

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Array]
TERM_NAMES = ("reconstruction", "prior", "diffusion", "total")  # neg_elbo_terms' per-example nats


# ----------------------------------------------------------------------------- noise


def sample_t(key: Array, batch_size: int, *, antithetic: bool = False) -> Array:
    """t ~ U(0, 1) per example; antithetic: t_i = (u + i/B) mod 1, one shared u (VDM, low-discrepancy sampler)."""
    if antithetic:
        u = jax.random.uniform(key, ())
        return jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
    return jax.random.uniform(key, (batch_size,))


def example_noise(
    key: Array,
    index: Array,
    shape: tuple[int, ...],
    dtype=jnp.float32,
    *,
    antithetic: bool = False,
    batch_size: int | None = None,
    extra_uniform: bool = False,
) -> dict[str, Array]:
    """Per-example draws from fold_in(key, i) for the global example index i [B]: t [B], eps and eps_0 [B, *shape], u [B].

    A pure function of (key, index), so any split of a batch over devices draws the same noise.
    antithetic: t_i = (u0 + i / batch_size) mod 1 with one u0 for the whole (global) batch of
    `batch_size` examples (VDM's low-discrepancy sampler), else t_i ~ U(0, 1) independently.
    u ~ U(0, 1) serves label dropout; extra_uniform adds u_t ~ U(0, 1) [B] (the adaptive schedule's
    draw within a lambda bin, vdm.core.t_sampling), from a key of its own (the other draws unchanged).
    """
    index = jnp.asarray(index)
    key_shared, key = jax.random.split(key)
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i), 4))(index)  # [B, 4, 2]
    normal = jax.vmap(lambda k: jax.random.normal(k, tuple(shape), dtype))
    uniform = jax.vmap(lambda k: jax.random.uniform(k, ()))
    if antithetic:
        if batch_size is None:
            raise ValueError("example_noise(antithetic=True) needs batch_size, the global batch size.")
        u0 = jax.random.uniform(key_shared, ())
        t = jnp.mod(u0 + index.astype(jnp.float32) / batch_size, 1.0)
    else:
        t = uniform(keys[:, 0])
    out = {"t": t, "eps": normal(keys[:, 1]), "eps_0": normal(keys[:, 2]), "u": uniform(keys[:, 3])}
    if extra_uniform:
        key_extra = jax.random.fold_in(key_shared, 1)
        out["u_t"] = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key_extra, i), ()))(index)
    return out


def discretize_t(t: Array, num_steps: int) -> Array:
    """Map t in [0, 1) to the step end t_i = i/T, i = floor(t T) + 1 in 1..T (uniform over steps)."""
    i = jnp.minimum(jnp.floor(t * num_steps), num_steps - 1) + 1.0
    return i / num_steps


# ----------------------------------------------------------------------------- the terms
# neg_elbo_terms picks one objective: _continuous_terms, _discrete_terms or _hybrid_terms, each on _endpoint_terms.


def eps_error(denoise_fn: DenoiseFn, x: Array, eps: Array, t: Array, gamma_t: Array, parameterization: str) -> Array:
    """||eps - eps_hat(z_t; t)||^2 per example, with z_t = alpha_t x + sigma_t eps; [B]."""
    g = gaussian.expand_to(gamma_t, x)
    z_t = gaussian.q_sample(x, g, eps)
    eps_hat = convert(network_output(denoise_fn, z_t, t, x)[0], z_t, g, source=parameterization, target="eps")
    return gaussian.sum_except_batch(jnp.square(eps - eps_hat))


def _endpoint_terms(x: Array, eps_0: Array, gammas: tuple, decoder: str, encoding: str) -> tuple[Array, Array]:
    """(-log p(x | z_0) at z_0 = alpha_0 x + sigma_0 eps_0, KL(q(z_1|x) || N(0, I))) per example (VDM eq. 11)."""
    z_0 = gaussian.q_sample(x, gammas[0], eps_0)
    rec = -gaussian.decoder_log_prob(x, z_0, gammas[0], decoder, encoding)
    return rec, gaussian.prior_kl(x, gammas[1])


def _terms(rec: Array, prior: Array, diff: Array, **extra: Array) -> dict[str, Array]:
    """The terms dict: TERM_NAMES' reconstruction, prior, diffusion and their total, then any `extra`."""
    return {"reconstruction": rec, "prior": prior, "diffusion": diff, "total": rec + prior + diff, **extra}


def _continuous_terms(
    denoise_fn: DenoiseFn,
    x: Array,
    t: Array,
    eps: Array,
    eps_0: Array,
    gammas: tuple,
    *,
    weight_fn: Callable[..., Array] = weight_elbo,
    parameterization: str = "eps",
    decoder: str = "discrete",
    encoding: str = "endpoints",
    t_density: Array | None = None,
) -> dict[str, Array]:
    """Continuous time: diffusion = f(gamma_t, gamma'_t) ||eps - eps_hat(z_t; t)||^2 / q(t) (Kingma & Gao 2023, eq. 7).

    f = weight_fn (WEIGHTINGS; weight_elbo, f = gamma'(t)/2: VDM's L_inf, Kingma et al. 2021, eq. 17); no reverse
    variance (a variance head's v is unused). gammas = schedule_values(schedule, t); t_density = q(t) when t ~ q.
    """
    rec, prior = _endpoint_terms(x, eps_0, gammas, decoder, encoding)
    w = weight_fn(gammas[2], gammas[3])
    diff = w * eps_error(denoise_fn, x, eps, t, gammas[2], parameterization)
    if t_density is not None:
        diff = diff / t_density
    return _terms(rec, prior, diff)


def _discrete_terms(
    denoise_fn: DenoiseFn,
    x: Array,
    t: Array,
    eps: Array,
    eps_0: Array,
    gammas: tuple,
    *,
    schedule: Schedule,
    num_steps: int,
    variance: str = "small",
    parameterization: str = "eps",
    decoder: str = "discrete",
    encoding: str = "endpoints",
) -> dict[str, Array]:
    """T steps: diffusion = T KL(q(z_s | z_t, x) || p(z_s | z_t)) at t = i/T, s = (i-1)/T (Kingma et al. 2021, eq. 13).

    p's variance: 'small', 'large' or 'learned' (denoise_fn returns (prediction, v)); of gammas, gamma(0) and gamma(1).
    """
    rec, prior = _endpoint_terms(x, eps_0, gammas, decoder, encoding)
    step = {"schedule": schedule, "parameterization": parameterization, "num_steps": int(num_steps)}
    return _terms(rec, prior, discrete_diffusion_term(denoise_fn, x, eps, t, variance=variance, **step))


def _hybrid_terms(
    denoise_fn: DenoiseFn,
    x: Array,
    t: Array,
    eps: Array,
    eps_0: Array,
    gammas: tuple,
    *,
    schedule: Schedule,
    num_steps: int,
    hybrid_lambda: float,
    hybrid_units: str = "bits",
    weight_fn: Callable[..., Array] = weight_simple,
    parameterization: str = "eps",
    decoder: str = "discrete",
    encoding: str = "endpoints",
) -> dict[str, Array]:
    """Improved DDPM: diffusion = L_simple + lambda L_vlb at t = i/T, also 'vlb' (Nichol & Dhariwal 2021, sec. 3.1).

    L_simple weighted by weight_fn at gammas of continuous time; L_vlb with the learned variance, hybrid_diffusion_term
    (lambda applied to L_vlb in `hybrid_units`, 'bits' as improved-diffusion's code).
    """
    rec, prior = _endpoint_terms(x, eps_0, gammas, decoder, encoding)
    w = weight_fn(gammas[2], gammas[3])
    step = {"schedule": schedule, "parameterization": parameterization, "num_steps": int(num_steps)}
    diff, vlb = hybrid_diffusion_term(
        denoise_fn, x, eps, t, w, hybrid_lambda=float(hybrid_lambda), hybrid_units=hybrid_units, **step
    )
    return _terms(rec, prior, diff, vlb=vlb)


def neg_elbo_terms(
    denoise_fn: DenoiseFn,
    x: Array,
    t: Array,
    eps: Array,
    eps_0: Array,
    *,
    schedule: Schedule,
    parameterization: str = "eps",
    weighting: str = "elbo",
    decoder: str = "discrete",
    encoding: str = "endpoints",
    num_steps: int = 0,
    weighting_kwargs: dict | None = None,
    variance: str = "small",
    hybrid_lambda: float | None = None,
    t_density: Array | None = None,
    hybrid_units: str = "bits",
) -> dict[str, Array]:
    """Per-example nats 'reconstruction', 'prior', 'diffusion' (weighted by w), 'total' (VDM eq. 11).

    One of three objectives: `_continuous_terms` (num_steps=0; w of `weighting`, WEIGHTINGS, with weighting_kwargs;
    t_density), `_discrete_terms` (num_steps = T > 0, w = 1; `variance`) or, given hybrid_lambda and T, `_hybrid_terms`
    (also 'vlb'; lambda on L_vlb in `hybrid_units`, 'bits': improved DDPM's L_hybrid). x, eps, eps_0 [B, ...], t [B];
    denoise_fn(z, t) -> a `parameterization` prediction, or (it, v).
    schedule may be a bound learned schedule: jax.grad of the mean total is the training gradient.
    """
    gammas = schedule_values(schedule, t, 0 if hybrid_lambda is not None else num_steps)
    return neg_elbo_terms_at(
        denoise_fn,
        x,
        t,
        eps,
        eps_0,
        gammas,
        schedule=schedule,
        parameterization=parameterization,
        weighting=weighting,
        decoder=decoder,
        encoding=encoding,
        num_steps=num_steps,
        weighting_kwargs=weighting_kwargs,
        variance=variance,
        hybrid_lambda=hybrid_lambda,
        t_density=t_density,
        hybrid_units=hybrid_units,
    )


def schedule_values(schedule: Schedule, t: Array, num_steps: int = 0) -> tuple[Array, Array, Array, Array]:
    """(gamma(0), gamma(1), gamma(t), gamma'(t)): what of the schedule the terms use (gamma' None in discrete time)."""
    gamma_0 = schedule(jnp.zeros((), jnp.float32))
    gamma_1 = schedule(jnp.ones((), jnp.float32))
    if num_steps:
        return gamma_0, gamma_1, None, None
    gamma_t, dgamma = dgamma_dt(schedule, t)
    return gamma_0, gamma_1, gamma_t, dgamma


def neg_elbo_terms_at(
    denoise_fn: DenoiseFn,
    x: Array,
    t: Array,
    eps: Array,
    eps_0: Array,
    gammas: tuple[Array, Array, Array, Array],
    *,
    schedule: Schedule | None = None,
    parameterization: str = "eps",
    weighting: str = "elbo",
    decoder: str = "discrete",
    encoding: str = "endpoints",
    num_steps: int = 0,
    weighting_kwargs: dict | None = None,
    variance: str = "small",
    hybrid_lambda: float | None = None,
    t_density: Array | None = None,
    hybrid_units: str = "bits",
) -> dict[str, Array]:
    """`neg_elbo_terms` given the schedule's values `gammas` = schedule_values(schedule, t): to differentiate at them.

    (schedule is needed only in discrete time, num_steps > 0; the hybrid loss's gammas are of continuous time.)
    """
    if num_steps < 0 or int(num_steps) != num_steps:
        raise ValueError(f"num_steps must be 0 (continuous time) or a positive integer, got {num_steps}.")
    if hybrid_lambda is not None and not num_steps:
        raise ValueError("the hybrid loss (hybrid_lambda) is a discrete-time objective: it needs num_steps = T > 0.")
    if t_density is not None and num_steps:
        raise ValueError(
            f"t_density (t drawn from q(t)) is for the continuous-time terms (num_steps=0); got num_steps={num_steps}."
        )
    weight_fn = functools.partial(get_weighting(weighting), **(weighting_kwargs or {}))
    if num_steps and hybrid_lambda is None and weighting != "elbo":
        raise ValueError(
            f"the discrete-time terms (num_steps={num_steps}) are the ELBO's; weighting="
            f"{weighting!r} is defined in continuous time only (num_steps=0), or as the mean "
            "part of the hybrid loss (hybrid_lambda)."
        )
    args = (denoise_fn, x, t, eps, eps_0, gammas)
    common = {"parameterization": parameterization, "decoder": decoder, "encoding": encoding}
    if hybrid_lambda is not None:
        step = {
            "schedule": schedule,
            "num_steps": num_steps,
            "hybrid_lambda": hybrid_lambda,
            "hybrid_units": hybrid_units,
        }
        return _hybrid_terms(*args, weight_fn=weight_fn, **step, **common)
    if num_steps:
        return _discrete_terms(*args, schedule=schedule, num_steps=num_steps, variance=variance, **common)
    return _continuous_terms(*args, weight_fn=weight_fn, t_density=t_density, **common)


def elbo(
    denoise_fn: DenoiseFn,
    x: Array,
    key: Array,
    *,
    schedule: Schedule,
    parameterization: str = "eps",
    num_steps: int = 0,
    decoder: str = "discrete",
    antithetic: bool = False,
    encoding: str = "endpoints",
    variance: str = "small",
) -> dict[str, Array]:
    """Per-example negative-ELBO terms in nats (VDM eq. 11): neg_elbo_terms with w = 1 and noise drawn from `key`.

    num_steps=0 is continuous time; num_steps=T the T-step discrete model on the grid i/T.
    decoder: 'discrete' (= 'categorical', 8-bit data in [-1, 1]), 'discretized_gaussian' or
    'gaussian' (continuous); encoding: the 8-bit grid of x for the discrete decoders (vdm.core.encoding);
    variance: the T-step model's reverse variance ('small', 'large', 'learned': denoise_fn returns (pred, v)).
    """
    key_rec, key_t, key_eps = jax.random.split(key, 3)
    t = sample_t(key_t, x.shape[0], antithetic=antithetic)
    if num_steps:
        t = discretize_t(t, num_steps)
    eps, eps_0 = jax.random.normal(key_eps, x.shape, x.dtype), jax.random.normal(key_rec, x.shape, x.dtype)
    options = {"parameterization": parameterization, "decoder": decoder, "encoding": encoding, "variance": variance}
    return neg_elbo_terms(denoise_fn, x, t, eps, eps_0, schedule=schedule, num_steps=num_steps, **options)


def batch_means(terms: dict[str, Array]) -> dict[str, Array]:
    """What a train step logs of per-example terms: batch means as 'loss' (the total) and each term, and Var(diffusion)."""
    return {
        "loss": jnp.mean(terms["total"]),
        "reconstruction": jnp.mean(terms["reconstruction"]),
        "prior": jnp.mean(terms["prior"]),
        "diffusion": jnp.mean(terms["diffusion"]),
        "diffusion_var": jnp.var(terms["diffusion"]),  # what a learned schedule or adaptive t lowers
        **({"vlb": jnp.mean(terms["vlb"])} if "vlb" in terms else {}),
    }  # the hybrid loss's L_vlb
