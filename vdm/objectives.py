"""The ELBO (continuous and discrete time) and the weighted training losses.

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
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vdm import diffusion
from vdm.parameterization import convert
from vdm.schedules import Schedule, dgamma_dt

Array = jax.Array
PyTree = Any
DenoiseFn = Callable[[Array, Array], Array]
SCHEDULE_GRADS = ("none", "mean", "variance")


# ----------------------------------------------------------------------------- weightings
# Each returns the factor f that multiplies ||eps - eps_hat||^2 at the sampled t, so the per-example
# loss is f * ||eps - eps_hat||^2. In Kingma & Gao's terms f = 1/2 w(lambda) gamma'(t): the
# schedule-free weightings (elbo, sigmoid, edm) give w(lambda) directly; the losses defined by
# sampling t uniformly under a schedule (simple, snr, min_snr) have w = 2 f / gamma'(t), i.e. they
# carry the schedule's density p(lambda). Stating f directly keeps them defined where gamma' = 0.

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


def weight_edm(gamma: Array, dgamma: Array, p_mean: float = -1.2, p_std: float = 1.2,
               sigma_data: float = 0.5) -> Array:
    """EDM (Karras et al. 2022) in Kingma & Gao 2023's form: w(lambda) = N(lambda; -2 P_mean, (2 P_std)^2) (e^-lambda + s_d^2)/s_d^2."""
    lam = -gamma
    mu, std = -2.0 * p_mean, 2.0 * p_std
    density = jnp.exp(-0.5 * jnp.square((lam - mu) / std)) / (std * math.sqrt(2.0 * math.pi))
    return 0.5 * dgamma * density * (jnp.exp(gamma) + sigma_data**2) / sigma_data**2


WEIGHTINGS: dict[str, Callable[..., Array]] = {
    "elbo": weight_elbo, "simple": weight_simple, "snr": weight_snr,
    "min_snr": weight_min_snr, "sigmoid": weight_sigmoid, "edm": weight_edm,
}


def get_weighting(name: str) -> Callable[..., Array]:
    """The eps-space weight f(gamma, gamma') of `name`, one of WEIGHTINGS."""
    if name not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {name!r}; choose one of {sorted(WEIGHTINGS)}.")
    return WEIGHTINGS[name]


# ----------------------------------------------------------------------------- pieces

def sample_t(key: Array, batch_size: int, *, antithetic: bool = False) -> Array:
    """t ~ U(0, 1) per example; antithetic: t_i = (u + i/B) mod 1, one shared u (VDM, low-discrepancy sampler)."""
    if antithetic:
        u = jax.random.uniform(key, ())
        return jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
    return jax.random.uniform(key, (batch_size,))


def discretize_t(t: Array, num_steps: int) -> Array:
    """Map t in [0, 1) to the step end t_i = i/T, i = floor(t T) + 1 in 1..T (uniform over steps)."""
    i = jnp.minimum(jnp.floor(t * num_steps), num_steps - 1) + 1.0
    return i / num_steps


def eps_error(denoise_fn: DenoiseFn, x: Array, eps: Array, t: Array, gamma_t: Array,
              parameterization: str) -> Array:
    """||eps - eps_hat(z_t; t)||^2 per example, with z_t = alpha_t x + sigma_t eps; [B]."""
    g = diffusion.expand_to(gamma_t, x)
    z_t = diffusion.q_sample(x, g, eps)
    pred = denoise_fn(z_t, t)
    if pred.shape != x.shape:
        raise ValueError(f"denoise_fn returned shape {pred.shape}; expected the shape of z, {x.shape}.")
    eps_hat = convert(pred, z_t, g, source=parameterization, target="eps")
    return diffusion.sum_except_batch(jnp.square(eps - eps_hat))


def diffusion_term(denoise_fn: DenoiseFn, x: Array, eps: Array, t: Array, *, schedule: Schedule,
                   parameterization: str = "eps", num_steps: int = 0) -> Array:
    """Per-example diffusion loss at t [B]: 1/2 gamma'(t) ||.||^2 (T=0) or T/2 expm1(g_t - g_s) ||.||^2, t = i/T, s = (i-1)/T (VDM eq. 13, 17)."""
    if num_steps == 0:
        gamma_t, dgamma = dgamma_dt(schedule, t)
        return 0.5 * dgamma * eps_error(denoise_fn, x, eps, t, gamma_t, parameterization)
    i = jnp.round(t * num_steps)                      # t must lie on the grid i/T, i = 1..T
    gamma_t = schedule(i / num_steps)
    gamma_s = schedule((i - 1.0) / num_steps)
    weight = 0.5 * num_steps * jnp.expm1(gamma_t - gamma_s)
    return weight * eps_error(denoise_fn, x, eps, t, gamma_t, parameterization)


def reconstruction_term(x: Array, key: Array, gamma_0: Array, decoder: str, encoding: str = "endpoints") -> Array:
    """-log p(x | z_0) per example, z_0 ~ q(z_0 | x), one sample (VDM eq. 11, first term); encoding: x's 8-bit grid."""
    z_0 = diffusion.q_sample(x, gamma_0, jax.random.normal(key, x.shape, x.dtype))
    return -diffusion.decoder_log_prob(x, z_0, gamma_0, decoder, encoding)


# ----------------------------------------------------------------------------- losses

def elbo(denoise_fn: DenoiseFn, x: Array, key: Array, *, schedule: Schedule,
         parameterization: str = "eps", num_steps: int = 0, decoder: str = "discrete",
         antithetic: bool = False, encoding: str = "endpoints") -> dict[str, Array]:
    """Per-example negative-ELBO terms in nats (VDM eq. 11): 'reconstruction', 'prior', 'diffusion', 'total'.

    num_steps=0 is continuous time; num_steps=T the T-step discrete model on the grid i/T.
    decoder: 'discrete' (8-bit data in [-1, 1]), 'discretized_gaussian' or 'gaussian' (continuous);
    encoding: the 8-bit grid of x for the discrete decoders (vdm.encoding).
    """
    if num_steps < 0 or int(num_steps) != num_steps:
        raise ValueError(f"num_steps must be 0 (continuous time) or a positive integer, got {num_steps}.")
    if decoder not in diffusion.DECODERS:
        raise ValueError(f"Unknown decoder {decoder!r}; choose one of {diffusion.DECODERS}.")
    key_rec, key_t, key_eps = jax.random.split(key, 3)
    batch = x.shape[0]
    gamma_0 = schedule(jnp.zeros((), jnp.float32))
    gamma_1 = schedule(jnp.ones((), jnp.float32))
    rec = reconstruction_term(x, key_rec, gamma_0, decoder, encoding)
    prior = diffusion.prior_kl(x, gamma_1)
    t = sample_t(key_t, batch, antithetic=antithetic)
    if num_steps:
        t = discretize_t(t, num_steps)
    eps = jax.random.normal(key_eps, x.shape, x.dtype)
    diff = diffusion_term(denoise_fn, x, eps, t, schedule=schedule,
                          parameterization=parameterization, num_steps=num_steps)
    return {"reconstruction": rec, "prior": prior, "diffusion": diff, "total": rec + prior + diff}


def weighted_loss(denoise_fn: DenoiseFn, x: Array, key: Array, *, schedule: Schedule,
                  parameterization: str = "eps", weighting: str = "elbo",
                  antithetic: bool = False, **weighting_kwargs) -> Array:
    """Per-example training loss f(gamma_t, gamma'_t) ||eps - eps_hat||^2 = 1/2 w(lambda_t) gamma'(t) ||.||^2, t ~ U(0,1) (Kingma & Gao 2023, eq. 7)."""
    get_weighting(weighting)                          # fail on a bad name before any work
    key_t, key_eps = jax.random.split(key)
    t = sample_t(key_t, x.shape[0], antithetic=antithetic)
    eps = jax.random.normal(key_eps, x.shape, x.dtype)
    gamma_t, dgamma = dgamma_dt(schedule, t)
    return weighted_diffusion_term(denoise_fn, x, eps, t, gamma_t, dgamma, parameterization=parameterization,
                                   weighting=weighting, **weighting_kwargs)


def weighted_diffusion_term(denoise_fn: DenoiseFn, x: Array, eps: Array, t: Array, gamma_t: Array,
                            dgamma: Array, *, parameterization: str = "eps", weighting: str = "elbo",
                            **weighting_kwargs) -> Array:
    """Per-example f(gamma_t, gamma'_t) ||eps - eps_hat(z_t; t)||^2 at given t, gamma_t, gamma'_t [B] (Kingma & Gao 2023, eq. 7).

    gamma_t and gamma'_t are inputs so a trainer can differentiate through them (learned schedules).
    """
    w = get_weighting(weighting)(gamma_t, dgamma, **weighting_kwargs)
    return w * eps_error(denoise_fn, x, eps, t, gamma_t, parameterization)


def bits_per_dim(nats, num_dims: int):
    """bits/dim = nats / (D ln 2) (numpy in, numpy out; jax in, jax out)."""
    return nats / (num_dims * math.log(2.0))


# ----------------------------------------------------------------------------- the training loss

def endpoint_terms(x: Array, eps_0: Array, gamma_0: Array, gamma_1: Array, decoder: str,
                   encoding: str = "endpoints") -> tuple[Array, Array]:
    """Per-example (-log p(x | z_0), KL(q(z_1|x) || N(0, I))), z_0 = alpha_0 x + sigma_0 eps_0 (VDM eq. 11)."""
    z_0 = diffusion.q_sample(x, gamma_0, eps_0)
    return -diffusion.decoder_log_prob(x, z_0, gamma_0, decoder, encoding), diffusion.prior_kl(x, gamma_1)


def loss_and_grads(net_apply: Callable[[PyTree, Array, Array], Array], model_params: PyTree,
                   schedule_apply: Callable[[PyTree, Array], Array], schedule_params: PyTree | None,
                   x: Array, t: Array, eps: Array, eps_0: Array, *, parameterization: str = "eps",
                   weighting: str = "elbo", decoder: str = "discrete", encoding: str = "endpoints",
                   schedule_grad: str = "none") -> tuple[Array, PyTree, dict]:
    """(mean loss, grads {'model'[, 'schedule']}, batch-mean terms) of reconstruction + prior + weighted diffusion (VDM eq. 11; Kingma & Gao 2023).

    net_apply(model_params, z, gamma_t) -> prediction of kind `parameterization`; schedule_apply(
    schedule_params, t) -> gamma(t). Per example: x, eps, eps_0 [B, ...], t [B]. schedule_grad:
    'none' (fixed schedule), 'mean' (the mean-loss gradient, e.g. learned endpoints of a linear
    schedule) or 'variance' (VDM sec. 5.2: grad E[L^2] for params['shape'], the mean-loss gradient
    for params['endpoints']). All from one backward pass through the network.
    """
    if schedule_grad not in SCHEDULE_GRADS:
        raise ValueError(f"schedule_grad={schedule_grad!r}; choose one of {SCHEDULE_GRADS}.")

    def schedule_outputs(sched_params):
        schedule = functools.partial(schedule_apply, sched_params)
        gamma_t, dgamma = dgamma_dt(schedule, t)
        return schedule(jnp.zeros(())), schedule(jnp.ones(())), gamma_t, dgamma

    def diffusion_loss(params, gamma_t, dgamma):
        net = lambda z, _: net_apply(params, z, gamma_t)
        return weighted_diffusion_term(net, x, eps, t, gamma_t, dgamma, parameterization=parameterization,
                                       weighting=weighting)

    (gamma_0, gamma_1, gamma_t, dgamma), sched_vjp = jax.vjp(schedule_outputs, schedule_params)
    (rec, prior), ep_vjp = jax.vjp(lambda g0, g1: endpoint_terms(x, eps_0, g0, g1, decoder, encoding), gamma_0, gamma_1)
    diff, diff_vjp = jax.vjp(diffusion_loss, model_params, gamma_t, dgamma)
    batch = x.shape[0]
    mean_cot = lambda v: jnp.full_like(v, 1.0 / batch)           # cotangent of the batch mean
    g_model, cot_gamma, cot_dgamma = diff_vjp(mean_cot(diff))
    grads = {"model": g_model}
    if schedule_grad != "none":
        (g_sched,) = sched_vjp((*ep_vjp((mean_cot(rec), mean_cot(prior))), cot_gamma, cot_dgamma))
        if schedule_grad == "variance":       # per-example partials dL_i/dgamma_i = B cot_i
            g_sched = variance_minimizing_grads(schedule_apply, schedule_params, t, diff, batch * cot_gamma,
                                                batch * cot_dgamma, g_sched.get("endpoints"))
        grads["schedule"] = g_sched
    terms = {"loss": jnp.mean(rec + prior + diff), "reconstruction": jnp.mean(rec), "prior": jnp.mean(prior),
             "diffusion": jnp.mean(diff), "diffusion_var": jnp.var(diff)}   # what a learned schedule lowers
    if schedule_grad != "none":
        terms.update(gamma_0=gamma_0, gamma_1=gamma_1)
    return terms["loss"], grads, terms


def variance_minimizing_grads(schedule_apply: Callable[[PyTree, Array], Array], schedule_params: PyTree,
                              t: Array, per_example_loss: Array, dloss_dgamma: Array, dloss_ddgamma: Array,
                              mean_grad_endpoints: PyTree | None = None) -> PyTree:
    """grad E[L^2] = grad Var[L] for the schedule's 'shape', the mean-loss gradient for its 'endpoints' (VDM sec. 5.2).

    schedule_apply(schedule_params, t) -> gamma(t); t, per_example_loss L_i, dloss_dgamma =
    dL_i/dgamma_t and dloss_ddgamma = dL_i/dgamma'(t) are all [B]. The 'shape' part is
    (1/B) sum_i 2 L_i grad_eta L_i, one jax.vjp of params -> (gamma(t), gamma'(t)); the
    'endpoints' part (if the params have one) is `mean_grad_endpoints` (zeros if None).
    See vdm/models/schedule.py for why the mean loss does not depend on the shape.
    """
    t = jnp.asarray(t, dtype=jnp.float32)
    if t.ndim != 1:
        raise ValueError(f"t must be [B], got shape {t.shape}")
    for name, a in (("per_example_loss", per_example_loss), ("dloss_dgamma", dloss_dgamma),
                    ("dloss_ddgamma", dloss_ddgamma)):
        if jnp.shape(a) != t.shape:
            raise ValueError(f"{name} must have shape {t.shape} like t, got {jnp.shape(a)}")
    inner, _ = _shape_subtree(schedule_params)

    def gamma_and_slope(p: PyTree) -> tuple[Array, Array]:
        return jax.jvp(lambda tt: schedule_apply(p, tt), (t,), (jnp.ones_like(t),))

    _, vjp = jax.vjp(gamma_and_slope, schedule_params)
    two_l_over_b = 2.0 * per_example_loss / t.shape[0]
    (grads,) = vjp((two_l_over_b * dloss_dgamma, two_l_over_b * dloss_ddgamma))
    g_inner, rebuild = _shape_subtree(grads)
    g_inner = dict(g_inner)
    if "endpoints" in inner:
        if mean_grad_endpoints is None:
            g_inner["endpoints"] = jax.tree.map(jnp.zeros_like, inner["endpoints"])
        elif jax.tree.structure(mean_grad_endpoints) != jax.tree.structure(inner["endpoints"]):
            raise ValueError("mean_grad_endpoints must be shaped like schedule params 'endpoints' "
                             f"{jax.tree.structure(inner['endpoints'])}, got {jax.tree.structure(mean_grad_endpoints)}")
        else:
            g_inner["endpoints"] = mean_grad_endpoints
    elif mean_grad_endpoints is not None:
        raise ValueError("mean_grad_endpoints given but the schedule has no 'endpoints' params "
                         "(learn_endpoints=False)")
    return rebuild(g_inner)


def _shape_subtree(params: PyTree) -> tuple[PyTree, Callable[[PyTree], PyTree]]:
    """The dict holding 'shape' (top level or under 'params') and a function rebuilding the whole from it."""
    if isinstance(params, dict) or hasattr(params, "keys"):
        if "shape" in params:
            return params, lambda inner: inner
        if "params" in params and "shape" in params["params"]:
            return params["params"], lambda inner: {**params, "params": inner}
    raise ValueError("schedule_params must hold a 'shape' sub-tree (at the top level or under 'params'), "
                     "as LearnedSchedule's variables do; got keys "
                     f"{list(params.keys()) if hasattr(params, 'keys') else type(params)}")
