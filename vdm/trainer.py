"""What a run trains: the state pytree, the optimizer, and the diffusion model's pure per-device steps.

State: one pytree (`TrainState`) of params, optimizer state, EMA params, step and base key. A
step's keys are derived, never stored: fold_in(fold_in(state.key, step), device index), so a
resumed run replays exactly. `optimizer_step` (guarded update + EMA) is shared by every model
this codebase trains (diffusion model, noisy classifier, feature net); the loop that drives
them is vdm/train.py.

The diffusion model (`Trainer`): network + schedule + optimizer built from the config. Its loss
is `objectives.loss_and_grads` (reconstruction + prior + weighted diffusion term, VDM eq. 11 with
w(lambda) from Kingma & Gao 2023); this module only draws the per-example noise and labels.
The steps are written per device (vdm/parallel.py wraps them in shard_map).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vdm import config_utils, data, objectives, parallel
from vdm.checkpoint import BlockLayoutError, Checkpointer
from vdm.models import LEARNED_SCHEDULES, convert, get_model, get_schedule_module
from vdm.schedules import Schedule, get_schedule

Array = jax.Array
PyTree = Any
log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: step int32 [], params, opt_state, ema_params, key uint32 [2]."""
    step: Array
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree
    key: Array


# ----------------------------------------------------------------------------- optimizer (every model)

def lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate by step: linear warmup from 0, then cosine decay to 0 at num_steps, or constant."""
    o, n = config.optimizer, config.training.num_steps
    if o.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps,
                                                  max(n, o.warmup_steps + 1), end_value=0.0)
    return optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps),
                                 optax.constant_schedule(o.learning_rate)], [o.warmup_steps])


def decay_mask(params: PyTree, mode: str) -> PyTree:
    """Which params AdamW decays: 'matrices' (per-layer ndim >= 2 under params['model']), 'non_bias' (every leaf not named 'bias', google-research/vdm), 'all'."""
    if mode == "all":
        return jax.tree.map(lambda p: True, params)
    return convert.decay_mask(params, mode)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Clip by global norm (if grad_clip > 0), then AdamW (Loshchilov & Hutter 2019) on `lr_schedule`."""
    o = config.optimizer
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    chain.append(optax.adamw(lr_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                             mask=functools.partial(decay_mask, mode=o.decay_mask)))
    return optax.chain(*chain)


def new_state(params: PyTree, tx: optax.GradientTransformation, key: Array) -> TrainState:
    """Step 0 of `params` (EMA = params, own buffers since the state is donated), fresh optimizer state, base key."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params), key=key)


def step_keys(state: TrainState) -> tuple[Array, Array]:
    """(per-example key, this device's key) for this step, derived from fold_in(base key, step).

    The per-example key is the same on every device; draws from it are indexed by the global
    example index (`example_noise`), so they do not depend on the device count. The device key,
    fold_in(., device index), serves what is drawn per shard (dropout).
    """
    k_example, k_device = jax.random.split(jax.random.fold_in(state.key, state.step))
    return k_example, jax.random.fold_in(k_device, jax.lax.axis_index(parallel.AXIS))


def optimizer_step(tx: optax.GradientTransformation, state: TrainState, grads: PyTree, terms: dict,
                   *, ema_decay: float, lr: Array) -> tuple[TrainState, dict]:
    """Average grads and terms over 'data', apply the update and the EMA (decay `ema_decay`); (state, metrics).

    A non-finite loss or gradient discards the update (params, opt_state, EMA unchanged), the
    step still advances, and metrics['nonfinite'] = 1; the loop applies config.training.nan_policy.
    """
    grads = jax.lax.pmean(grads, parallel.AXIS)
    terms = jax.lax.pmean(terms, parallel.AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(new_params, state.ema_params, 1.0 - ema_decay)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(new_params, state.params),
                              opt_state=keep(opt_state, state.opt_state), ema_params=keep(ema, state.ema_params))
    return new_state, {**terms, "grad_norm": grad_norm, "nonfinite": 1 - finite.astype(jnp.int32), "lr": lr}


# ----------------------------------------------------------------------------- the diffusion model

@dataclasses.dataclass(frozen=True, eq=False)   # hashed by identity: a static jit argument
class Trainer:
    """The static pieces of a diffusion run (from the config and the data info): network, schedule, optimizer."""
    config: ml_collections.ConfigDict
    info: data.DatasetInfo
    model: nn.Module
    tx: optax.GradientTransformation
    schedule_module: nn.Module | None       # a learned schedule ('learned', 'learned_linear'), else None
    fixed_schedule: Schedule | None

    @property
    def decoder(self) -> str:
        """'discrete' (VDM's 256-way decoder) for 8-bit data, else 'gaussian'."""
        return "discrete" if self.info.discrete else "gaussian"

    @property
    def schedule_grad(self) -> str:
        """How the schedule learns (objectives.loss_and_grads): 'none', 'mean' or 'variance'."""
        return LEARNED_SCHEDULES.get(self.config.model.schedule, "none")

    def schedule_apply(self, schedule_params: PyTree | None, t: Array) -> Array:
        """gamma(t): the fixed schedule, or the learned one with `schedule_params`."""
        if self.schedule_module is None:
            return self.fixed_schedule(t)
        return self.schedule_module.apply({"params": schedule_params}, t)

    def schedule(self, params: PyTree) -> Schedule:
        """gamma(t) of this run: the fixed schedule, or the learned one at params['schedule']."""
        return functools.partial(self.schedule_apply, params.get("schedule"))

    def apply_model(self, model_params: PyTree, z: Array, gamma: Array, y: Array | None, *,
                    train: bool, dropout_key: Array | None = None) -> Array:
        """Network prediction [B, ...] (float32) of kind config.model.parameterization (bfloat16 inside if configured)."""
        rngs = {"dropout": dropout_key} if dropout_key is not None else {}
        y = y if self.config.model.num_classes > 0 else None
        out = self.model.apply({"params": model_params}, z, gamma, y=y, train=train, rngs=rngs)
        return out.astype(jnp.float32)

    def denoise_fn(self, params: PyTree, y: Array | None = None) -> Callable[[Array, Array], Array]:
        """denoise_fn(z, t) for the objectives and samplers: the network at gamma(t), eval mode."""
        schedule = self.schedule(params)

        def fn(z: Array, t: Array) -> Array:
            gamma = jnp.broadcast_to(schedule(t), z.shape[:1])
            return self.apply_model(params["model"], z, gamma, y, train=False)
        return fn


def build_trainer(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> Trainer:
    """Network, schedule and optimizer for `config` (validated) on data described by `info`."""
    m = config.model
    sched_module = get_schedule_module(m)
    fixed = None if sched_module is not None else get_schedule(m.schedule, gamma_min=m.gamma_min,
                                                               gamma_max=m.gamma_max)
    compute = jnp.bfloat16 if config.training.dtype == "bfloat16" else None
    return Trainer(config, info, get_model(m, compute), make_optimizer(config), sched_module, fixed)


def init_params(trainer: Trainer, key: Array) -> PyTree:
    """Fresh params {'model': ..., ['schedule': ...]} (shapes from a batch of 1)."""
    k_model, k_sched = jax.random.split(key)
    z = jnp.zeros((1,) + tuple(trainer.info.shape), jnp.float32)
    y = jnp.zeros((1,), jnp.int32) if trainer.config.model.num_classes > 0 else None
    params = {"model": trainer.model.init({"params": k_model}, z, jnp.zeros((1,)), y=y, train=False)["params"]}
    if trainer.schedule_module is not None:
        params["schedule"] = trainer.schedule_module.init(k_sched, jnp.zeros((1,)))["params"]
    return params


def create_train_state(trainer: Trainer, key: Array) -> TrainState:
    """Step 0: fresh params (EMA = params), fresh optimizer state; `key` becomes the run's base key."""
    k_init, k_run = jax.random.split(key)
    return new_state(jax.jit(init_params, static_argnums=0)(trainer, k_init), trainer.tx, k_run)


def example_noise(key: Array, x: Array, *, antithetic: bool) -> dict[str, Array]:
    """Per-example draws from fold_in(key, global index): t [B], eps and eps_0 like x [B, ...], u [B] (label drop).

    antithetic: t_i = (u + i/B_global) mod 1 with one u shared by the global batch (VDM's
    low-discrepancy sampler), else t_i ~ U(0, 1) independently.
    """
    local = x.shape[0]
    global_size = local * jax.lax.axis_size(parallel.AXIS)
    index = jax.lax.axis_index(parallel.AXIS) * local + jnp.arange(local)
    key_shared, key = jax.random.split(key)
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i), 4))(index)   # [B, 4, 2]
    normal = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))
    uniform = jax.vmap(lambda k: jax.random.uniform(k, ()))
    if antithetic:
        u0 = jax.random.uniform(key_shared, ())
        t = jnp.mod(u0 + index.astype(jnp.float32) / global_size, 1.0)
    else:
        t = uniform(keys[:, 0])
    return {"t": t, "eps": normal(keys[:, 1]), "eps_0": normal(keys[:, 2]), "u": uniform(keys[:, 3])}


def drop_labels(y: Array, u: Array, num_classes: int, rate: float) -> Array:
    """Classifier-free guidance training: label -> null class num_classes where u < rate, u ~ U(0,1) [B] (Ho & Salimans 2022)."""
    if rate == 0.0:
        return y
    return jnp.where(u < rate, num_classes, y)


def loss_and_grads(trainer: Trainer, params: PyTree, batch: dict, example_key: Array,
                   device_key: Array) -> tuple[Array, PyTree, dict]:
    """(mean loss, grads, per-term batch means) on this device's batch (objectives.loss_and_grads); x: [B, ...], label: [B]."""
    c = trainer.config
    noise = example_noise(example_key, batch["x"], antithetic=c.loss.antithetic)
    y = drop_labels(batch["label"], noise["u"], c.model.num_classes, c.model.label_dropout)
    net = lambda p, z, gamma: trainer.apply_model(p, z, gamma, y, train=True, dropout_key=device_key)
    return objectives.loss_and_grads(net, params["model"], trainer.schedule_apply, params.get("schedule"),
                                     batch["x"], noise["t"], noise["eps"], noise["eps_0"],
                                     parameterization=c.model.parameterization, weighting=c.loss.weighting,
                                     decoder=trainer.decoder, encoding=trainer.info.encoding,
                                     schedule_grad=trainer.schedule_grad)


def train_step(trainer: Trainer, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimizer step on this device's shard (call inside shard_map): grads pmean-ed over 'data'."""
    c = trainer.config
    params = parallel.to_varying(state.params)          # per-device grads, averaged in optimizer_step
    _, grads, terms = loss_and_grads(trainer, params, batch, *step_keys(state))
    return optimizer_step(trainer.tx, state, grads, terms, ema_decay=c.optimizer.ema_decay,
                          lr=lr_schedule(c)(state.step))


def eval_step(trainer: Trainer, params: PyTree, batch: dict, key: Array) -> dict:
    """Per-example negative-ELBO terms in nats [B_local] on this device's shard (call inside shard_map).

    Uses config.eval.num_steps (0: continuous time) and the true ELBO whatever the training
    weighting; class-conditional models are evaluated with the true labels, i.e. -log p(x | y).
    """
    key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
    denoise = trainer.denoise_fn(params, batch["label"])
    return objectives.elbo(denoise, batch["x"], key, schedule=trainer.schedule(params),
                           parameterization=trainer.config.model.parameterization,
                           num_steps=trainer.config.eval.num_steps, decoder=trainer.decoder,
                           encoding=trainer.info.encoding)


def ode_eval_step(trainer: Trainer, params: PyTree, batch: dict, key: Array) -> dict:
    """Per-example -log p(x) in nats through the probability-flow ODE (likelihood.ode_nll) on this device's shard.

    config.eval.ode_steps RK4 steps, ode_probes Hutchinson probes; 8-bit data dequantised (the
    D log 127.5 offset puts it on the ELBO's scale); class-conditional models get the true labels.
    """
    from vdm.likelihood import ode_nll
    e = trainer.config.eval
    key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
    denoise = trainer.denoise_fn(params, batch["label"])
    return {"nll": ode_nll(denoise, batch["x"], key, schedule=trainer.schedule(params),
                           parameterization=trainer.config.model.parameterization, num_steps=e.ode_steps,
                           num_probes=e.ode_probes, dequantize=trainer.info.discrete, encoding=trainer.info.encoding)}


# ----------------------------------------------------------------------------- set-up

def setup(config: ml_collections.ConfigDict, mode: str = "train") -> tuple[Trainer, Any]:
    """Join the multi-host job if any, validate `config` for `mode` (the one place), and build (trainer, mesh)."""
    parallel.initialize_distributed()
    config_utils.validate(config, device_count=jax.device_count(), mode=mode)
    info = data.get_dataset_info(config.data)
    config_utils.validate_for_data(config, info)
    return build_trainer(config, info), parallel.make_mesh()


def restore_or_init(init: Callable[[], TrainState], mesh: Any, ckpt: Checkpointer,
                    *, quarantine: bool = False) -> tuple[TrainState, int]:
    """(state on the mesh, step): the newest intact checkpoint in `ckpt`, else `init()` (a fresh host state).

    quarantine=True (a training run): corrupt newer checkpoints are moved aside (Checkpointer.restore_latest).
    A checkpoint of the other VDMUNet block layout (scanned vs unrolled, config.model.scan_blocks)
    is restored in its own layout and converted (vdm.models.maybe_convert_params), with a warning.
    """
    fresh = parallel.to_host(init())
    try:
        restored, step = ckpt.restore_latest(fresh, quarantine=quarantine)
    except BlockLayoutError as e:
        scanned = bool(convert.is_scanned(fresh))
        restored, step = ckpt.restore_latest(convert.maybe_convert_params(fresh, scanned=not scanned),
                                             quarantine=quarantine)
        restored = convert.maybe_convert_params(restored, scanned=scanned)
        log.warning("%s Converted it to the %s layout.", e.args[0].split(". Either")[0],
                    "scanned" if scanned else "unrolled")
    if restored is None:
        return parallel.replicate(fresh, mesh), 0
    log.info("resuming from checkpoint step %d in %s", step, ckpt.directory)
    return parallel.replicate(restored, mesh), int(step)


def derived_key(config: ml_collections.ConfigDict, stream: int, step: int) -> Array:
    """Key for evaluation (stream 1) or sampling (stream 2) at `step`, independent of the train keys."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), stream), step)
