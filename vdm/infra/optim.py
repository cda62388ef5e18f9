"""The state every trained model carries, its optimizer, and the guarded update with EMA.

State: one pytree (`TrainState`) of params, optimizer state, EMA params, step and base key. A
step's keys are derived, never stored: fold_in(state.key, step), so a resumed run replays
exactly. `Optimizer` (AdamW on a warmup + cosine/constant learning rate, global-norm clipping,
the EMA decay) is built once from config.optimizer and config.training.num_steps; its `update`
is the last line of every model's train step (the diffusion model, the noisy classifier, the
feature net). Everything here runs per device inside shard_map (vdm/infra/parallel.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vdm.infra import parallel

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: step int32 [], params, opt_state, ema_params, key uint32 [2], stats.

    stats: what a model's objective keeps between steps (None, or e.g. the adaptive noise schedule's
    histogram, {'t_histogram': ...}); checkpointed with the rest, so a resumed run continues it exactly.
    """

    step: Array
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree
    key: Array
    stats: PyTree = None


def _cosine(lr: float, warmup: int, num_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1), end_value=0.0)


def _constant(lr: float, warmup: int, num_steps: int) -> optax.Schedule:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


LR_DECAYS = {"cosine": _cosine, "constant": _constant}  # config.optimizer.decay


def lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate by step: linear warmup from 0, then cosine decay to 0 at num_steps, or constant (LR_DECAYS)."""
    o = config.optimizer
    return LR_DECAYS[o.decay](o.learning_rate, o.warmup_steps, config.training.num_steps)


def make_tx(
    config: ml_collections.ConfigDict, decay_mask: Callable[[PyTree, str], PyTree] | None = None
) -> optax.GradientTransformation:
    """Clip by global norm (if grad_clip > 0), then AdamW (Loshchilov & Hutter 2019) on `lr_schedule`.

    decay_mask(params, kind) -> bool pytree: which leaves weight decay applies to, for
    kind = config.optimizer.decay_mask (None: every leaf); the model's parameter layout decides,
    see vdm.models.convert.decay_mask.
    """
    o = config.optimizer
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    chain.append(
        optax.adamw(
            lr_schedule(config),
            b1=o.b1,
            b2=o.b2,
            eps=o.eps,
            weight_decay=o.weight_decay,
            mask=decay_mask and functools.partial(decay_mask, kind=o.decay_mask),
        )
    )
    return optax.chain(*chain)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: part of static jit arguments
class Optimizer:
    """AdamW + learning-rate schedule + EMA decay of a run: `init` a state, `update` it with gradients."""

    tx: optax.GradientTransformation
    lr: optax.Schedule
    ema_decay: float

    @classmethod
    def from_config(
        cls, config: ml_collections.ConfigDict, decay_mask: Callable[[PyTree, str], PyTree] | None = None
    ) -> Optimizer:
        """The optimizer of config.optimizer over config.training.num_steps steps (make_tx, lr_schedule)."""
        return cls(make_tx(config, decay_mask), lr_schedule(config), float(config.optimizer.ema_decay))

    def init(self, params: PyTree, key: Array) -> TrainState:
        """Step 0 of `params` (EMA = params, own buffers since the state is donated), fresh optimizer state, base key."""
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
            key=key,
        )

    def update(self, state: TrainState, grads: PyTree, terms: dict) -> tuple[TrainState, dict]:
        """Average grads and terms over 'data', apply the update and the EMA; (state, metrics) (call inside shard_map).

        A non-finite loss or gradient discards the update (params, opt_state, EMA unchanged), the
        step still advances, and metrics['nonfinite'] = 1; the loop applies config.training.nan_policy.
        """
        grads = jax.lax.pmean(grads, parallel.AXIS)
        terms = jax.lax.pmean(terms, parallel.AXIS)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm)

        def apply(s: TrainState) -> tuple:
            updates, opt_state = self.tx.update(grads, s.opt_state, s.params)
            params = optax.apply_updates(s.params, updates)
            return params, opt_state, optax.incremental_update(params, s.ema_params, 1.0 - self.ema_decay)

        # One branch runs: the update, or (non-finite) the state as it was; no select over every leaf.
        params, opt_state, ema = jax.lax.cond(finite, apply, lambda s: (s.params, s.opt_state, s.ema_params), state)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        return new_state, {
            **terms,
            "grad_norm": grad_norm,
            "nonfinite": 1 - finite.astype(jnp.int32),
            "lr": self.lr(state.step),
        }


def step_keys(state: TrainState) -> tuple[Array, Array]:
    """(per-example key, this device's key) of this step, from fold_in(base key, step) (call inside shard_map).

    The per-example key is the same on every device; a model draws its per-example noise from it
    by the example's global index (vdm.core.objectives.example_noise), so the draws do not depend on the
    device layout. The device key, fold_in(., device index), serves what is drawn per shard (dropout).
    """
    k_example, k_device = jax.random.split(jax.random.fold_in(state.key, state.step))
    return k_example, jax.random.fold_in(k_device, jax.lax.axis_index(parallel.AXIS))
