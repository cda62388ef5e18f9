"""Guidance as pure wrappers: each returns a new denoise_fn for vdm.sampling.samplers.sample.

Classifier-free guidance combines a conditional and an unconditional prediction,
    eps_guided = (1 + w) eps(z, t, y) - w eps(z, t, null)      (Ho & Salimans 2022, eq. 6),
and classifier guidance adds a classifier's gradient to the score,
    score_guided = score + scale grad_z log p(y | z_t, t),  i.e.
    eps_guided = eps - scale sigma_t grad_z log p(y | z_t, t)   (Dhariwal & Nichol 2021, Alg. 2).
The noisy classifier's log p(y | z_t) comes from vdm.tasks.classifier_task.load_log_prob_fn.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vdm.core.gaussian import expand_to
from vdm.core.parameterization import KINDS, convert
from vdm.core.schedules import Schedule, alpha_sigma

Array = jax.Array
CondFn = Callable[[Array, Array, Array], Array]


def cfg_denoise_fn(cond_fn: CondFn, null_label: Any, w: float, *, y: Any = None) -> Callable:
    """Classifier-free guidance: (1 + w) pred(z, t, y) - w pred(z, t, null) (Ho & Salimans 2022).

    cond_fn(z [B, ...], t [B], y) -> prediction of any kind ('eps', 'x0', 'score', 'v'); the
    guided output has the same kind. The combination is done in eps space: every conversion is
    affine in the prediction at fixed (z, gamma) and the weights (1 + w) and -w sum to 1, so
    combining in the model's own parameterisation gives exactly the eps-space result (no schedule
    needed). Both branches run as one batch of 2B. w = 0 is the conditional model.
    null_label: the null class (an int; y then int labels [B]), or the null condition itself, a pytree shaped
    like y with leading axis B (e.g. captions with no tokens, vdm.models.text_net.null_text).
    Returns fn(z, t, y), or fn(z, t) with y bound when `y` is given.
    """

    def guided(z: Array, t: Array, labels: Any) -> Array:
        if isinstance(null_label, numbers.Integral):
            labels = jnp.asarray(labels)
            if labels.shape[:1] != z.shape[:1]:
                raise ValueError(f"labels must have shape [B] = ({z.shape[0]},), got {labels.shape}.")
            null = jnp.full_like(labels, null_label)
        else:
            null = null_label
        pair = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), labels, null)
        both = cond_fn(jnp.concatenate([z, z]), jnp.concatenate([t, t]), pair)
        cond, uncond = jnp.split(both, 2)
        return (1.0 + w) * cond - w * uncond

    if y is None:
        return guided
    return lambda z, t: guided(z, t, y)


def classifier_guided_denoise_fn(
    denoise_fn: Callable[[Array, Array], Array],
    log_prob_fn: CondFn,
    y: Array,
    scale: float,
    schedule: Schedule,
    parameterization: str = "eps",
) -> Callable[[Array, Array], Array]:
    """Classifier guidance: eps - scale sigma_t grad_z sum log p(y | z_t, t) (Dhariwal & Nichol 2021).

    log_prob_fn(z [B, ...], t [B], y [B]) -> [B] log p(y | z_t) of a noise-aware classifier; the
    gradient is taken of its sum (examples are independent). Returns fn(z, t) with the same
    output kind as denoise_fn.
    """
    if parameterization not in KINDS:
        raise ValueError(f"Unknown parameterization {parameterization!r}; choose one of {KINDS}.")
    y = jnp.asarray(y)

    def guided(z: Array, t: Array) -> Array:
        pred = denoise_fn(z, t)
        gamma = expand_to(schedule(t), z)
        eps = convert(pred, z, gamma, source=parameterization, target="eps")
        grad = jax.grad(lambda zz: jnp.sum(log_prob_fn(zz, t, y)))(z)
        _, sigma = alpha_sigma(gamma)
        return convert(eps - scale * sigma * grad, z, gamma, source="eps", target=parameterization)

    return guided
