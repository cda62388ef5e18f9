"""Train state, the pure per-device train and eval steps, and the training loop.

State: one pytree (`TrainState`) of params {'model', and 'schedule' when learned}, optimizer
state, EMA params, step and base key. The step's keys are derived, never stored:
fold_in(fold_in(state.key, step), device index), so a resumed run replays exactly.

Loss per example (nats): reconstruction + prior + weighted diffusion term (VDM eq. 11 with
w(lambda) from Kingma & Gao 2023); with weighting 'elbo' the batch mean is the negative ELBO.
A learned schedule (VDM sec. 5.2) takes the variance-minimising gradient for its shape and
the mean-loss gradient for its endpoints, from the same backward pass as the network.

The steps are written per device (see vdm/parallel.py for the sharding); `train_and_evaluate`
is the loop that `python -m vdm.main` runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from vdm import config_utils, data, diffusion, objectives, parallel
from vdm.checkpoint import Checkpointer
from vdm.evaluate import evaluate_elbo, evaluate_ode, make_sampler, sample_labels
from vdm.metrics import MetricWriter, plot_bpd, save_samples_png
from vdm.models import LearnedSchedule, get_model, variance_minimizing_grads
from vdm.schedules import Schedule, dgamma_dt, get_schedule

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


@dataclasses.dataclass(frozen=True, eq=False)   # hashed by identity: a static jit argument
class Trainer:
    """The static pieces of a run (built from the config and the data info): network, schedule, optimizer."""
    config: ml_collections.ConfigDict
    info: data.DatasetInfo
    model: nn.Module
    tx: optax.GradientTransformation
    schedule_module: LearnedSchedule | None       # set iff config.model.schedule == 'learned'
    fixed_schedule: Schedule | None

    @property
    def decoder(self) -> str:
        """'discrete' (VDM's 256-way decoder) for 8-bit data, else 'gaussian'."""
        return "discrete" if self.info.discrete else "gaussian"

    def schedule(self, params: PyTree) -> Schedule:
        """gamma(t) of this run: the fixed schedule, or the learned one at params['schedule']."""
        if self.schedule_module is None:
            return self.fixed_schedule
        return functools.partial(self.schedule_module.apply, {"params": params["schedule"]})

    def apply_model(self, model_params: PyTree, z: Array, gamma: Array, y: Array | None, *,
                    train: bool, dropout_key: Array | None = None) -> Array:
        """Network prediction [B, ...] (float32) of kind config.model.parameterization.

        With config.training.dtype = 'bfloat16' the model itself computes in bfloat16 (built so by
        `build_trainer`); params, z and its Fourier features stay float32.
        """
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


def lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate by step: linear warmup from 0, then cosine decay to 0 at num_steps, or constant."""
    o, n = config.optimizer, config.training.num_steps
    if o.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps,
                                                  max(n, o.warmup_steps + 1), end_value=0.0)
    return optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps),
                                 optax.constant_schedule(o.learning_rate)], [o.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW (Loshchilov & Hutter 2019) on `lr_schedule`."""
    o = config.optimizer
    # Weight decay on the network's matrices and kernels only, not biases, norms or the schedule.
    decay_mask = lambda params: {k: jax.tree.map(lambda p: k == "model" and p.ndim >= 2, v)
                                 for k, v in params.items()}
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    chain.append(optax.adamw(lr_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                             weight_decay=o.weight_decay, mask=decay_mask))
    return optax.chain(*chain)


def build_trainer(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> Trainer:
    """Network, schedule and optimizer for `config` (validated) on data described by `info`."""
    m = config.model
    if m.schedule == "learned":
        sched_module, fixed = LearnedSchedule(m.gamma_min, m.gamma_max, m.learn_endpoints), None
    else:
        sched_module, fixed = None, get_schedule(m.schedule, gamma_min=m.gamma_min, gamma_max=m.gamma_max)
    compute = jnp.bfloat16 if config.training.dtype == "bfloat16" else None
    return Trainer(config, info, get_model(m, compute), make_optimizer(config), sched_module, fixed)


def init_params(trainer: Trainer, key: Array) -> PyTree:
    """Fresh params {'model': ..., ['schedule': ...]} (shapes from a batch of 1)."""
    k_model, k_sched = jax.random.split(key)
    z = jnp.zeros((1,) + tuple(trainer.info.shape), jnp.float32)
    y = jnp.zeros((1,), jnp.int32) if trainer.config.model.num_classes > 0 else None
    params = {"model": trainer.model.init({"params": k_model}, z, jnp.zeros((1,)), y=y,
                                          train=False)["params"]}
    if trainer.schedule_module is not None:
        params["schedule"] = trainer.schedule_module.init(k_sched, jnp.zeros((1,)))["params"]
    return params


def create_train_state(trainer: Trainer, key: Array) -> TrainState:
    """Step 0: fresh params (EMA = params), fresh optimizer state; `key` becomes the run's base key."""
    k_init, k_run = jax.random.split(key)
    params = jax.jit(init_params, static_argnums=0)(trainer, k_init)
    ema = jax.tree.map(jnp.copy, params)            # own buffers: the state is donated leaf by leaf
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=trainer.tx.init(params), ema_params=ema, key=k_run)


def step_keys(state: TrainState) -> tuple[Array, Array]:
    """(per-example key, this device's key) for this step, derived from fold_in(base key, step).

    The per-example key is the same on every device; draws from it are indexed by the global
    example index (`example_noise`), so t, eps and label drops do not depend on the device
    count. The device key, fold_in(., device index), serves what is drawn per shard (dropout).
    """
    k_example, k_device = jax.random.split(jax.random.fold_in(state.key, state.step))
    return k_example, jax.random.fold_in(k_device, jax.lax.axis_index(parallel.AXIS))


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
    """(mean loss, grads, per-term batch means) on this device's batch; x: [B, ...], label: [B]."""
    c = trainer.config
    x = batch["x"]
    noise = example_noise(example_key, x, antithetic=c.loss.antithetic)
    t, eps, k_drop = noise["t"], noise["eps"], device_key
    y = drop_labels(batch["label"], noise["u"], c.model.num_classes, c.model.label_dropout)

    def diffusion_loss(model_params, gamma_t, dgamma):
        """Per-example f(gamma_t, gamma'_t) ||eps - eps_hat||^2 (f = 1/2 w(lambda) gamma') as a function of (params, gamma_t, gamma'_t)."""
        net = lambda z, _: trainer.apply_model(model_params, z, gamma_t, y, train=True, dropout_key=k_drop)
        return objectives.weighted_diffusion_term(net, x, eps, t, gamma_t, dgamma,
                                                  parameterization=c.model.parameterization,
                                                  weighting=c.loss.weighting)

    def endpoint_terms(gamma_0, gamma_1):
        """Per-example reconstruction -log p(x|z_0) and prior KL(q(z_1|x) || N(0, I))."""
        z_0 = diffusion.q_sample(x, gamma_0, noise["eps_0"])
        return (-diffusion.decoder_log_prob(x, z_0, gamma_0, trainer.decoder),
                diffusion.prior_kl(x, gamma_1))

    def schedule_outputs(sched_params):
        schedule = trainer.schedule({"schedule": sched_params}) if sched_params is not None \
            else trainer.fixed_schedule
        gamma_t, dgamma = dgamma_dt(schedule, t)
        return schedule(jnp.zeros(())), schedule(jnp.ones(())), gamma_t, dgamma

    sched_params = params.get("schedule")
    (gamma_0, gamma_1, gamma_t, dgamma), sched_vjp = jax.vjp(schedule_outputs, sched_params)
    (rec, prior), ep_vjp = jax.vjp(endpoint_terms, gamma_0, gamma_1)
    diff, diff_vjp = jax.vjp(diffusion_loss, params["model"], gamma_t, dgamma)
    batch_size = x.shape[0]
    mean_cot = lambda v: jnp.full_like(v, 1.0 / batch_size)   # cotangent of the batch mean
    g_model, cot_gamma, cot_dgamma = diff_vjp(mean_cot(diff))
    grads = {"model": g_model}
    if sched_params is not None:
        # Mean-loss gradient w.r.t. the schedule (used for its endpoints) ...
        cot_g0, cot_g1 = ep_vjp((mean_cot(rec), mean_cot(prior)))
        (g_sched_mean,) = sched_vjp((cot_g0, cot_g1, cot_gamma, cot_dgamma))
        # ... and grad E[L^2] for its shape, from the per-example partials dL_i/dgamma_i = B cot_i.
        grads["schedule"] = variance_minimizing_grads(
            lambda p, tt: trainer.schedule_module.apply({"params": p}, tt), sched_params, t,
            diff, batch_size * cot_gamma, batch_size * cot_dgamma,
            g_sched_mean.get("endpoints") if "endpoints" in sched_params else None)
    total = rec + prior + diff
    terms = {"loss": jnp.mean(total), "reconstruction": jnp.mean(rec), "prior": jnp.mean(prior),
             "diffusion": jnp.mean(diff), "diffusion_var": jnp.var(diff),   # what a learned schedule lowers
             "gamma_0": gamma_0, "gamma_1": gamma_1}
    return terms["loss"], grads, terms


def train_step(trainer: Trainer, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimizer step on this device's shard (call inside shard_map): grads pmean-ed over 'data'.

    A non-finite loss or gradient discards the update (params, opt_state, EMA unchanged), the
    step still advances, and metrics['nonfinite'] = 1; the loop applies config.training.nan_policy.
    """
    c = trainer.config
    params = parallel.to_varying(state.params)          # per-device grads, averaged below
    _, grads, terms = loss_and_grads(trainer, params, batch, *step_keys(state))
    grads = jax.lax.pmean(grads, parallel.AXIS)
    terms = jax.lax.pmean(terms, parallel.AXIS)
    updates, opt_state = trainer.tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(new_params, state.ema_params, 1.0 - c.optimizer.ema_decay)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(new_params, state.params),
                              opt_state=keep(opt_state, state.opt_state),
                              ema_params=keep(ema, state.ema_params))
    metrics = {**terms, "grad_norm": grad_norm, "nonfinite": 1 - finite.astype(jnp.int32),
               "lr": lr_schedule(c)(state.step)}
    return new_state, metrics


def eval_step(trainer: Trainer, params: PyTree, batch: dict, key: Array) -> dict:
    """Per-example negative-ELBO terms in nats [B_local] on this device's shard (call inside shard_map).

    Uses config.eval.num_steps (0: continuous time) and the true ELBO whatever the training
    weighting; class-conditional models are evaluated with the true labels, i.e. -log p(x | y).
    """
    key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
    denoise = trainer.denoise_fn(params, batch["label"])
    return objectives.elbo(denoise, batch["x"], key, schedule=trainer.schedule(params),
                           parameterization=trainer.config.model.parameterization,
                           num_steps=trainer.config.eval.num_steps, decoder=trainer.decoder)


def setup(config: ml_collections.ConfigDict) -> tuple[Trainer, Any]:
    """Validate `config`, join the multi-host job if any, and build (trainer, mesh)."""
    parallel.initialize_distributed()
    config_utils.validate(config, device_count=jax.device_count())
    info = data.get_dataset_info(config.data)
    config_utils.validate_for_data(config, info)
    return build_trainer(config, info), parallel.make_mesh()


def restore_or_init(trainer: Trainer, mesh: Any, ckpt: Checkpointer) -> tuple[TrainState, int]:
    """(state on the mesh, step): the newest intact checkpoint in `ckpt`, else a fresh state from config.seed."""
    fresh = parallel.to_host(create_train_state(trainer, jax.random.PRNGKey(trainer.config.seed)))
    restored, step = ckpt.restore_latest(fresh)
    if restored is None:
        return parallel.replicate(fresh, mesh), 0
    log.info("resuming from checkpoint step %d in %s", step, ckpt.directory)
    return parallel.replicate(restored, mesh), int(step)


def _derived_key(config: ml_collections.ConfigDict, stream: int, step: int) -> Array:
    """Key for evaluation (stream 1) or sampling (stream 2) at `step`, independent of the train keys."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), stream), step)


class _Window:
    """Train metrics of the steps since the last flush, kept on device until needed."""

    def __init__(self, config: ml_collections.ConfigDict, writer: MetricWriter):
        self.config, self.writer, self.items, self.skipped_total = config, writer, [], 0
        self.t0 = time.perf_counter()

    def add(self, first_step: int, metrics: dict) -> None:
        self.items.append((first_step, metrics))

    def flush(self, step: int, ckpt: Checkpointer) -> dict:
        """Fetch, apply the NaN policy, write means to the writer; returns the scalars written."""
        if not self.items:
            return {}
        host = [(s, parallel.to_host(m)) for s, m in self.items]
        nonfinite = np.concatenate([m["nonfinite"] for _, m in host])
        steps = np.concatenate([s + 1 + np.arange(len(m["nonfinite"])) for s, m in host])
        if nonfinite.any() and self.config.training.nan_policy == "stop":
            bad = int(steps[np.argmax(nonfinite)])
            raise FloatingPointError(
                f"non-finite loss or gradient at step {bad} (config.training.nan_policy='stop'); "
                f"the update was discarded and nothing after step {ckpt.latest_step()} was saved. "
                "Lower the learning rate, use bfloat16 less, or set nan_policy='skip'.")
        ok = nonfinite == 0
        cat = {k: np.concatenate([m[k] for _, m in host]) for k in host[0][1]}
        scalars = {f"train/{k}": float(np.mean(v[ok])) if ok.any() else float("nan")
                   for k, v in cat.items() if k != "nonfinite"}
        if self.config.model.schedule != "learned":
            scalars.pop("train/gamma_0"), scalars.pop("train/gamma_1")
        self.skipped_total += int(nonfinite.sum())
        scalars["train/skipped"] = int(nonfinite.sum())
        scalars["train/skipped_total"] = self.skipped_total
        now = time.perf_counter()
        scalars["train/steps_per_sec"] = len(steps) / max(now - self.t0, 1e-9)
        self.t0, self.items = now, []
        self.writer.write(step, scalars)
        return scalars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train config.training.num_steps steps in `workdir` (resuming from its checkpoints); return the last eval metrics.

    Writes workdir/config.json, metrics.jsonl, tb/, checkpoints/ and samples/step_*.png.
    """
    trainer, mesh = setup(config)
    t = config.training
    is_main = jax.process_index() == 0
    if is_main:
        config_utils.save_config(config, workdir)
    writer = MetricWriter(workdir, enabled=is_main)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.keep_checkpoints)
    state, step = restore_or_init(trainer, mesh, ckpt)
    train_fn = parallel.data_parallel(functools.partial(train_step, trainer), mesh,
                                      steps_per_call=t.steps_per_call)
    eval_fn = parallel.data_parallel_eval(functools.partial(eval_step, trainer), mesh)
    sampler = make_sampler(trainer, config.sampling.num_samples)
    window, last_eval = _Window(config, writer), {}
    pbar = tqdm.tqdm(total=t.num_steps, initial=step, unit="step", disable=not is_main,
                     dynamic_ncols=True, desc="train",
                     mininterval=0.1 if sys.stderr.isatty() else 30.0)   # few lines in log files
    try:
        if step >= t.num_steps:
            log.info("workdir already holds step %d >= num_steps; evaluating only.", step)
        batches = data.train_iterator(config.data, t.batch_size, seed=config.seed, start_step=step,
                                      **parallel.process_shard())     # this process's rows only
        while step < t.num_steps:
            group = [next(batches) for _ in range(t.steps_per_call)]
            stacked = {k: np.stack([b[k] for b in group]) for k in ("x", "label")}
            state, metrics = train_fn(state, parallel.shard_batch(stacked, mesh, leading_axes=1))
            window.add(step, metrics)
            step += t.steps_per_call
            pbar.update(t.steps_per_call)
            save = step % t.checkpoint_every == 0 or step == t.num_steps
            evaluate = step % t.eval_every == 0 or step == t.num_steps
            if step % t.log_every == 0 or save or evaluate:
                scalars = window.flush(step, ckpt)      # raises under nan_policy='stop'
                pbar.set_postfix(loss=f"{scalars['train/loss']:.4g}", refresh=False)
            if save:
                ckpt.save(step, parallel.to_host(state), info={"config": config.to_json()})
            if evaluate:
                last_eval = evaluate_and_sample(trainer, mesh, eval_fn, sampler, state, step, workdir, writer)
                pbar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()
                                                        if k.startswith("eval/bpd")))
        if not last_eval:
            last_eval = evaluate_and_sample(trainer, mesh, eval_fn, sampler, state, step, workdir, writer)
    finally:
        pbar.close()
        ckpt.close()
        writer.close()
    return last_eval


def evaluate_and_sample(trainer: Trainer, mesh: Any, eval_fn: Callable, sampler: Callable,
                        state: TrainState, step: int, workdir: str, writer: MetricWriter) -> dict:
    """ELBO over the test split with the EMA params, and a sample grid to workdir/samples/step_<step>.png."""
    config = trainer.config
    t0 = time.perf_counter()
    result = evaluate_elbo(eval_fn, state.ema_params, config, trainer.info, mesh,
                           _derived_key(config, 1, step))
    result["eval/seconds"] = time.perf_counter() - t0
    samples = parallel.to_host(sampler(state.ema_params, _derived_key(config, 2, step)))
    result["eval/sample_nonfinite_frac"] = float(np.mean(~np.isfinite(samples)))
    if jax.process_index() == 0:
        save_samples_png(os.path.join(workdir, "samples", f"step_{step:07d}.png"), samples)
    writer.write(step, result)
    if jax.process_index() == 0:
        plot_bpd(workdir, num_dims=trainer.info.num_dims)
    return result


def _restore_for_inference(config: ml_collections.ConfigDict, workdir: str) -> tuple[Trainer, Any, TrainState, int]:
    """(trainer, mesh, state, step) from the newest intact checkpoint of `workdir`; error if there is none."""
    trainer, mesh = setup(config)
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None) as ckpt:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}; "
                                    "train first (--mode=train) with this --workdir.")
        state, step = restore_or_init(trainer, mesh, ckpt)
    return trainer, mesh, state, step


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, method: str = "elbo",
             ode_steps: int = 64, max_examples: int = 0) -> dict:
    """--mode=eval with the newest checkpoint's EMA params: -ELBO bits/dim (continuous, or
    config.eval.num_steps discrete) for method='elbo'; probability-flow ODE bits/dim for 'ode'."""
    if method not in ("elbo", "ode"):
        raise config_utils.ConfigError(f"eval method {method!r} is not valid; choose one of 'elbo', 'ode'.")
    trainer, mesh, state, step = _restore_for_inference(config, workdir)
    key = _derived_key(config, 1, step)
    if method == "ode":
        result = evaluate_ode(trainer.denoise_fn(state.ema_params), trainer.schedule(state.ema_params),
                              config, trainer.info, key, num_steps=ode_steps, max_examples=max_examples)
    else:
        eval_fn = parallel.data_parallel_eval(functools.partial(eval_step, trainer), mesh)
        result = evaluate_elbo(eval_fn, state.ema_params, config, trainer.info, mesh, key)
        result["eval/num_steps"] = config.eval.num_steps
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=False)
    writer.write(step, result)
    writer.close()
    return result


def sample_chunk_size(num_samples: int, batch_size: int, num_classes: int = 0) -> int:
    """Samples per sampler call: batch_size (0: all), rounded down to a multiple of num_classes so that
    the class cycle arange(n) % num_classes of every chunk continues the whole run's."""
    if batch_size <= 0 or batch_size >= num_samples:
        return num_samples
    if num_classes > 0:
        batch_size = max(num_classes, batch_size - batch_size % num_classes)
    return min(batch_size, num_samples)


def sample(config: ml_collections.ConfigDict, workdir: str, *, classifier_workdir: str | None = None,
           classifier_scale: float = 0.0, classifier_label: int = -1) -> str:
    """--mode=sample: config.sampling.num_samples samples from the newest checkpoint to a PNG grid and an .npz; returns the PNG path.

    classifier_workdir/classifier_scale: classifier guidance with a noisy classifier trained by
    vdm.train_classifier, toward classifier_label (or each class in turn if -1); the diffusion
    model itself may be unconditional.
    """
    trainer, mesh, state, step = _restore_for_inference(config, workdir)
    s = config.sampling
    guidance = None
    if classifier_workdir:
        from vdm.train_classifier import load_log_prob_fn
        log_prob_fn, num_classes = load_log_prob_fn(classifier_workdir)
        if not -1 <= classifier_label < num_classes:
            raise config_utils.ConfigError(f"classifier_label={classifier_label} must be -1 (each class in "
                                           f"turn) or a class of the classifier, in [0, {num_classes}).")
        labels = (jnp.full((s.num_samples,), classifier_label, jnp.int32) if classifier_label >= 0
                  else jnp.arange(s.num_samples, dtype=jnp.int32) % num_classes)
        guidance = (log_prob_fn, labels, classifier_scale)
    chunk = sample_chunk_size(s.num_samples, s.get("batch_size", 0),
                              num_classes if guidance else config.model.num_classes)
    chunk_guidance = (guidance[0], guidance[1][:chunk], guidance[2]) if guidance else None
    sampler = make_sampler(trainer, chunk, classifier=chunk_guidance)
    key = _derived_key(config, 2, step)
    num_chunks = -(-s.num_samples // chunk)
    samples = np.concatenate([np.asarray(sampler(state.ema_params, key if num_chunks == 1
                                                 else jax.random.fold_in(key, i)))
                              for i in range(num_chunks)])[:s.num_samples]
    name = f"sample_step{step}_{s.method}{s.num_steps}_w{s.guidance_weight:g}_c{s.class_label}"
    if classifier_workdir:
        name += f"_cls{classifier_scale:g}_y{classifier_label}"
    path = os.path.join(workdir, "samples", name)
    if jax.process_index() == 0:
        save_samples_png(path + ".png", samples)
        labels = guidance[1] if guidance else sample_labels(config, s.num_samples)
        np.savez(path + ".npz", samples=samples,
                 labels=np.asarray(labels) if labels is not None else np.zeros((0,), np.int32))
    return path + ".png"
