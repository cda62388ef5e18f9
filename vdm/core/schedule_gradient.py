"""VDM's variance-minimising gradient for a learned schedule's shape (Kingma et al. 2021, sec. 5.2).

The mean loss does not depend on the shape of gamma between its endpoints (vdm/models/schedule.py), so
VDM trains the shape to lower the variance of the per-example diffusion term instead: grad E[L^2] for
the schedule's 'shape', the mean-loss gradient for its 'endpoints' and for the network, all from one
backward pass of the one loss (`neg_elbo_terms_at`, vdm/core/objectives.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vdm.core.objectives import schedule_values

Array = jax.Array
PyTree = Any


def variance_minimizing_value_and_grad(
    terms_at: Callable[[PyTree, tuple], dict],
    model_params: PyTree,
    schedule_apply: Callable[[PyTree, Array], Array],
    schedule_params: PyTree,
    t: Array,
) -> tuple[tuple[Array, dict], PyTree]:
    """((mean total, per-example terms), grads {'model', 'schedule'}) with VDM's schedule gradient (sec. 5.2).

    terms_at(model_params, gammas) -> per-example terms (neg_elbo_terms_at, the network conditioned
    on gammas' gamma(t)). The network and the schedule's 'endpoints' get the mean-loss gradient;
    the schedule's 'shape' gets grad E[L_diffusion^2] (variance_minimizing_grads), from the same
    backward pass: its per-example cotangents at gamma(t), gamma'(t).
    """

    def values(sched_params):
        return schedule_values(functools.partial(schedule_apply, sched_params), t)

    gammas, sched_vjp = jax.vjp(values, schedule_params)

    def mean_total(mp, gs):
        terms = terms_at(mp, gs)
        return jnp.mean(terms["total"]), terms

    (loss, terms), (g_model, cot) = jax.value_and_grad(mean_total, argnums=(0, 1), has_aux=True)(model_params, gammas)
    (g_mean,) = sched_vjp(cot)
    batch = t.shape[0]  # per-example partials dL_i/dgamma_i = B cot_i
    endpoints = _shape_subtree(g_mean)[0].get("endpoints")
    g_sched = variance_minimizing_grads(
        schedule_apply, schedule_params, t, terms["diffusion"], batch * cot[2], batch * cot[3], endpoints
    )
    return (loss, terms), {"model": g_model, "schedule": g_sched}


def variance_minimizing_grads(
    schedule_apply: Callable[[PyTree, Array], Array],
    schedule_params: PyTree,
    t: Array,
    per_example_loss: Array,
    dloss_dgamma: Array,
    dloss_ddgamma: Array,
    mean_grad_endpoints: PyTree | None = None,
) -> PyTree:
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
    per_example = {"per_example_loss": per_example_loss, "dloss_dgamma": dloss_dgamma, "dloss_ddgamma": dloss_ddgamma}
    for name, a in per_example.items():
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
            raise ValueError(
                "mean_grad_endpoints must be shaped like schedule params 'endpoints' "
                f"{jax.tree.structure(inner['endpoints'])}, got {jax.tree.structure(mean_grad_endpoints)}"
            )
        else:
            g_inner["endpoints"] = mean_grad_endpoints
    elif mean_grad_endpoints is not None:
        raise ValueError("mean_grad_endpoints given but the schedule has no 'endpoints' params (learn_endpoints=False)")
    return rebuild(g_inner)


def _shape_subtree(params: PyTree) -> tuple[PyTree, Callable[[PyTree], PyTree]]:
    """The dict holding 'shape' (top level or under 'params') and a function rebuilding the whole from it."""
    if isinstance(params, dict) or hasattr(params, "keys"):
        if "shape" in params:
            return params, lambda inner: inner
        if "params" in params and "shape" in params["params"]:
            return params["params"], lambda inner: {**params, "params": inner}
    raise ValueError(
        "schedule_params must hold a 'shape' sub-tree (at the top level or under 'params'), "
        "as LearnedSchedule's variables do; got keys "
        f"{list(params.keys()) if hasattr(params, 'keys') else type(params)}"
    )
