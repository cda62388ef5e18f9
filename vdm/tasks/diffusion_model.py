"""The diffusion model: network + noise schedule + decoder, its objective, and its pure per-device steps.

`DiffusionModel` is built once from the config and the data set's info (`build`). Its objective is
`objectives.neg_elbo_terms`, the one per-example loss: the reconstruction, prior and diffusion
terms of the negative ELBO (VDM eq. 11), the diffusion term weighted by config.loss.weighting
(Kingma & Gao 2023) in training and by w = 1 in evaluation. This module supplies what the
objective needs from the model: the network conditioned on gamma(t), the schedule (fixed or
learned), the decoder, the per-example noise (`objectives.example_noise` of the step key and the
example's global index, so the loss is a pure function of the batch and runs outside shard_map),
and classifier-free label dropout. The gradient is jax.value_and_grad of the batch mean; a
schedule learned the VDM way ('learned') takes schedule_gradient.variance_minimizing_value_and_grad.
Two objectives keep more than the params: improved DDPM's hybrid loss trains a variance head
(config.model.variance_head, read by parameterization.split_variance) in discrete time, and
VDM++'s adaptive noise schedule keeps its histogram in TrainState.stats ('t_histogram',
`update_stats` after each step). Evaluation has the plain ELBO (`eval_step`) and its
importance-sampled form (`pilot_eval_step`, `importance_proposal`, `importance_eval_step`).
The steps run per device (vdm/infra/parallel.py wraps them in shard_map); the update is vdm.infra.optim's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vdm.config import text_checks, validation
from vdm.core import objectives, schedule_gradient, t_sampling
from vdm.core.gaussian import expand_to
from vdm.core.parameterization import scale_input, split_variance
from vdm.core.schedules import Schedule, get_schedule
from vdm.data import pipeline
from vdm.infra import parallel
from vdm.infra.optim import Optimizer, TrainState, step_keys
from vdm.models import COMPUTE_DTYPES, LEARNED_SCHEDULES, convert, get_model, get_schedule_module
from vdm.models.text_net import drop_text, text_network
from vdm.sampling.likelihood import ode_nll
from vdm.tasks.text_condition import TextConditioning

Array = jax.Array
PyTree = Any
# The weightings' hyperparameters: objectives' keyword <- config.loss key.
T_HISTOGRAM = "t_histogram"  # TrainState.stats key of the adaptive noise schedule's histogram
WEIGHTING_KEYS = {
    "sigmoid": {"bias": "sigmoid_bias"},
    "min_snr": {"snr_gamma": "min_snr_gamma"},
    "edm": {"p_mean": "edm_p_mean", "p_std": "edm_p_std", "sigma_data": "edm_sigma_data"},
}


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static jit argument
class DiffusionModel:
    """The static pieces of a diffusion run (from the config and the data info): network, schedule, decoder, optimizer."""

    config: ml_collections.ConfigDict
    info: pipeline.DatasetInfo
    network: nn.Module
    optimizer: Optimizer
    schedule_module: nn.Module | None  # a learned schedule ('learned', 'learned_linear'), else None
    fixed_schedule: Schedule | None
    text: TextConditioning | None = None  # the captions of a text-conditioned run (config.text), else None

    def condition(self, batch: dict, split: str) -> Array | dict:
        """What the network is conditioned on: batch['label'], or with text {'label', 'text': the batch's captions}."""
        if self.text is None:
            return batch["label"]
        return {"label": batch["label"], "text": self.text.batch_text(batch, split)}

    @property
    def decoder(self) -> str:
        """p(x | z_0): config.model.decoder ('categorical', 'discretized_gaussian', 'gaussian')."""
        return self.config.model.decoder

    @property
    def variance_head(self) -> str:
        """The reverse variance's head: config.model.variance_head ('none', 'interp', 'sigmoid'; vdm.core.parameterization)."""
        return self.config.model.get("variance_head", "none")

    @property
    def eval_variance(self) -> str:
        """The T-step ELBO's reverse variance: config.eval.variance, unset: 'learned' with a variance head, else 'small'."""
        return validation.eval_variance(self.config)

    @property
    def weighting_kwargs(self) -> dict[str, float]:
        """The hyperparameters of config.loss.weighting, from their config.loss keys (WEIGHTING_KEYS)."""
        loss = self.config.loss
        return {k: float(loss[key]) for k, key in WEIGHTING_KEYS.get(loss.weighting, {}).items()}

    def schedule_apply(self, schedule_params: PyTree | None, t: Array) -> Array:
        """gamma(t): the fixed schedule, or the learned one with `schedule_params`."""
        if self.schedule_module is None:
            return self.fixed_schedule(t)
        return self.schedule_module.apply({"params": schedule_params}, t)

    def schedule(self, params: PyTree) -> Schedule:
        """gamma(t) of this run: the fixed schedule, or the learned one at params['schedule']."""
        return functools.partial(self.schedule_apply, params.get("schedule"))

    def apply_network(
        self,
        model_params: PyTree,
        z: Array,
        gamma: Array,
        y: Array | None,
        *,
        train: bool,
        dropout_key: Array | None = None,
        with_variance: bool = False,
    ) -> Array | tuple:
        """Network prediction [B, ...] (float32) of kind config.model.parameterization (bfloat16 inside if configured),
        of the input z scaled by config.model.input_scaling ('ot': z / (alpha + sigma)).

        with_variance: (prediction, v) with v the variance head's interpolation weight
        (parameterization.split_variance; None without a head).
        """
        rngs = {"dropout": dropout_key} if dropout_key is not None else {}
        text = {}
        if isinstance(y, dict):  # a text-conditioned run: {'label', 'text'} (condition)
            y, text = y["label"], {"text": y["text"]}
        y = y if self.config.model.num_classes > 0 else None
        if self.config.model.input_scaling != "none":  # 'ot': the net sees z_OT = z / (alpha + sigma)
            z = scale_input(z, expand_to(gamma, z), self.config.model.input_scaling)
        out = self.network.apply({"params": model_params}, z, gamma, y=y, train=train, rngs=rngs, **text)
        pred, v = split_variance(out.astype(jnp.float32), self.variance_head)
        return (pred, v) if with_variance else pred

    def denoise_fn(
        self, params: PyTree, y: Array | None = None, *, with_variance: bool = False
    ) -> Callable[[Array, Array], Array | tuple]:
        """denoise_fn(z, t) for the objectives and samplers: the network at gamma(t), eval mode ((pred, v) with_variance)."""
        schedule = self.schedule(params)

        def fn(z: Array, t: Array) -> Array | tuple:
            gamma = jnp.broadcast_to(schedule(t), z.shape[:1])
            return self.apply_network(params["model"], z, gamma, y, train=False, with_variance=with_variance)

        return fn

    def init_params(self, key: Array) -> PyTree:
        """Fresh params {'model': ..., ['schedule': ...]} (shapes from a batch of 1)."""
        k_model, k_sched = jax.random.split(key)
        z = jnp.zeros((1,) + tuple(self.info.shape), jnp.float32)
        y = jnp.zeros((1,), jnp.int32) if self.config.model.num_classes > 0 else None
        text = {} if self.text is None else {"text": self.text.example_text(1)}
        params = {
            "model": self.network.init({"params": k_model}, z, jnp.zeros((1,)), y=y, train=False, **text)["params"]
        }
        if self.schedule_module is not None:
            params["schedule"] = self.schedule_module.init(k_sched, jnp.zeros((1,)))["params"]
        return params

    def init_state(self, key: Array) -> TrainState:
        """Step 0: fresh params (EMA = params), fresh optimizer state, an empty adaptive-t histogram if configured;
        `key` becomes the run's base key."""
        k_init, k_run = jax.random.split(key)
        state = self.optimizer.init(jax.jit(DiffusionModel.init_params, static_argnums=0)(self, k_init), k_run)
        return state.replace(stats=self.init_stats())

    def init_stats(self) -> PyTree:
        """TrainState.stats at step 0: the adaptive noise schedule's empty histogram if configured, else None."""
        if not self.adaptive:
            return None
        return {T_HISTOGRAM: t_sampling.init_histogram(self.config.loss.adaptive_bins)}

    # ------------------------------------------------------------------------- adaptive t (VDM++)

    @property
    def adaptive(self) -> bool:
        """Whether training draws t from the adaptive noise schedule (config.loss.t_sampling='adaptive')."""
        return self.config.loss.t_sampling == "adaptive"

    def t_distribution(self, histogram: dict, schedule: Schedule | None = None) -> tuple[Array, Array]:
        """(edges [K+1] of lambda = log SNR, bin probabilities [K]) of an adaptive histogram under `schedule` (default the run's)."""
        schedule = schedule or self.fixed_schedule
        loss = self.config.loss
        edges = t_sampling.lambda_edges(schedule(jnp.zeros(())), schedule(jnp.ones(())), histogram["sums"].shape[0])
        return edges, t_sampling.bin_probs(histogram, loss.adaptive_uniform)

    def update_stats(self, stats: PyTree, terms: dict) -> PyTree:
        """The adaptive histogram after this step: EMA of W(lambda) E||eps - eps_hat||^2 per lambda bin over the global
        batch, from the step's own per-example terms 't_bin' and 't_integrand' (terms_at)."""
        hist = t_sampling.update(
            stats[T_HISTOGRAM],
            terms["t_bin"],
            terms["t_integrand"],
            self.config.loss.adaptive_decay,
            axis_name=parallel.AXIS,
        )
        return {**stats, T_HISTOGRAM: hist}

    # ------------------------------------------------------------------------- the objective

    def noise(self, batch: dict, key: Array, *, train: bool, stats: PyTree = None) -> dict[str, Array]:
        """objectives.example_noise of `key` at batch['index'] (training: t as config.loss.t_sampling; on the grid
        i/T for config.loss.num_steps = T > 0).

        'adaptive': t drawn from the histogram in stats (t_sampling.draw, stratified over the global
        batch), with its density q(t) ('density', dividing the loss) and lambda bin ('bin'). 'logit_normal': SD3's
        t = sigmoid(m + s Phi^-1(u)) of the antithetic u (t_sampling.logit_normal_t; no density: the objective is SD3's).
        """
        loss = self.config.loss
        adaptive = train and self.adaptive
        antithetic = train and loss.t_sampling in ("antithetic", "adaptive", "logit_normal")
        x = batch["x"]
        noise = objectives.example_noise(
            key,
            batch["index"],
            x.shape[1:],
            x.dtype,
            antithetic=antithetic,
            batch_size=self.config.training.batch_size,
            extra_uniform=adaptive,
        )
        if train and loss.t_sampling == "logit_normal":  # SD3: the stratified uniforms through the inverse CDF
            noise["t"] = t_sampling.logit_normal_t(noise["t"], loss.logit_normal_mean, loss.logit_normal_std)
        if adaptive:
            edges, probs = self.t_distribution(stats[T_HISTOGRAM])
            drawn = t_sampling.draw(noise["t"], noise.pop("u_t"), probs, edges, self.fixed_schedule)
            noise.update(t=drawn["t"], density=drawn["density"], bin=drawn["bin"])
        if train and loss.num_steps:
            noise["t"] = objectives.discretize_t(noise["t"], loss.num_steps)
        return noise

    def terms_at(
        self,
        model_params: PyTree,
        gammas: tuple,
        batch: dict,
        noise: dict,
        *,
        train: bool,
        dropout_key: Array | None = None,
        schedule: Schedule | None = None,
    ) -> dict[str, Array]:
        """Per-example objectives.neg_elbo_terms_at (training: the configured objective and label dropout; else w = 1).

        schedule: gamma(t) of the run, needed by a discrete-time training objective (config.loss.num_steps > 0).
        """
        c = self.config
        y = batch["label"]
        if train:
            y = drop_labels(y, noise["u"], c.model.num_classes, c.model.label_dropout)
        if self.text is not None:  # the captions (test split in evaluation), dropped to the null one as the labels
            text = self.text.batch_text(batch, "train" if train else "test")
            y = {"label": y, "text": drop_text(text, noise["u"] < c.text.caption_dropout) if train else text}
        gamma_t = gammas[2]
        discrete = train and c.loss.num_steps > 0
        if discrete and gamma_t is None:
            gamma_t = schedule(noise["t"])
        net = lambda z, t: self.apply_network(
            model_params, z, gamma_t, y, train=train, dropout_key=dropout_key, with_variance=discrete
        )
        hybrid = train and c.loss.objective == "hybrid"
        terms = objectives.neg_elbo_terms_at(
            net,
            batch["x"],
            noise["t"],
            noise["eps"],
            noise["eps_0"],
            gammas,
            schedule=schedule,
            parameterization=c.model.parameterization,
            weighting=c.loss.weighting if train else "elbo",
            decoder=self.decoder,
            encoding=self.info.encoding,
            num_steps=c.loss.num_steps if discrete else 0,
            weighting_kwargs=self.weighting_kwargs if train else None,
            variance="learned" if self.variance_head != "none" else "small",
            hybrid_lambda=c.loss.hybrid_lambda if hybrid else None,
            t_density=noise.get("density") if train else None,
            hybrid_units=c.loss.hybrid_units if hybrid else "bits",
        )
        if train and self.adaptive:  # what the step adds to the histogram (update_stats), from these same draws
            terms["t_bin"] = noise["bin"]
            terms["t_integrand"] = t_sampling.integrand(terms["diffusion"], noise["density"], gammas[3])
        return terms

    def loss_terms(
        self,
        params: PyTree,
        batch: dict,
        key: Array,
        dropout_key: Array | None = None,
        *,
        train: bool = True,
        stats: PyTree = None,
    ) -> dict[str, Array]:
        """Per-example -ELBO terms of `batch` {'x', 'label', 'index'} with noise from `key` (pure; no device axis)."""
        noise = self.noise(batch, key, train=train, stats=stats)
        schedule = self.schedule(params)
        discrete = train and self.config.loss.objective != "hybrid" and self.config.loss.num_steps
        gammas = objectives.schedule_values(schedule, noise["t"], self.config.loss.num_steps if discrete else 0)
        return self.terms_at(
            params["model"], gammas, batch, noise, train=train, dropout_key=dropout_key, schedule=schedule
        )

    def value_and_grad(
        self, params: PyTree, batch: dict, key: Array, dropout_key: Array | None = None, stats: PyTree = None
    ) -> tuple[tuple[Array, dict], PyTree]:
        """((mean loss, per-example terms), grads) of the training objective: jax.value_and_grad of the batch mean,
        or for schedule 'learned' VDM's variance-minimising schedule gradient (sec. 5.2)."""
        if LEARNED_SCHEDULES.get(self.config.model.schedule) != "variance":

            def mean_loss(p):
                terms = self.loss_terms(p, batch, key, dropout_key, stats=stats)
                return jnp.mean(terms["total"]), terms

            return jax.value_and_grad(mean_loss, has_aux=True)(params)
        noise = self.noise(batch, key, train=True)
        terms_at = lambda mp, gammas: self.terms_at(mp, gammas, batch, noise, train=True, dropout_key=dropout_key)
        return schedule_gradient.variance_minimizing_value_and_grad(
            terms_at, params["model"], self.schedule_apply, params["schedule"], noise["t"]
        )


def drop_labels(y: Array, u: Array, num_classes: int, rate: float) -> Array:
    """Classifier-free guidance training: label -> null class num_classes where u < rate, u ~ U(0,1) [B] (Ho & Salimans 2022)."""
    if rate == 0.0:
        return y
    return jnp.where(u < rate, num_classes, y)


# ----------------------------------------------------------------------------- per-device steps


def train_step(
    model: DiffusionModel, state: TrainState, batch: dict, value_and_grad: Callable | None = None
) -> tuple[TrainState, dict]:
    """One optimizer step on this device's shard (inside shard_map): loss and grads here, averaged in Optimizer.update.

    value_and_grad(params, batch, key, dropout_key, stats) -> ((loss, terms), grads): the objective's,
    default model.value_and_grad (a latent model's encodes the batch first, vdm.tasks.latent_task).
    """
    params = parallel.to_varying(state.params)  # per-device grads, averaged in the update
    key, dropout_key = step_keys(state)
    (_, terms), grads = (value_and_grad or model.value_and_grad)(params, batch, key, dropout_key, stats=state.stats)
    metrics = objectives.batch_means(terms)
    if model.schedule_module is not None:
        schedule = model.schedule(params)
        metrics.update(gamma_0=schedule(jnp.zeros(())), gamma_1=schedule(jnp.ones(())))
    new_state, metrics = model.optimizer.update(state, grads, metrics)
    if model.adaptive:
        new_state = new_state.replace(stats=model.update_stats(state.stats, terms))
    return new_state, metrics


def eval_step(model: DiffusionModel, params: PyTree, batch: dict, key: Array) -> dict:
    """Per-example negative-ELBO terms in nats [B_local] on this device's shard: the true ELBO (w = 1).

    Continuous time (independent of any reverse variance), or config.eval.num_steps discrete steps
    with the reverse variance config.eval.variance (objectives.neg_elbo_terms); the noise
    comes from `key` and batch['index'], so the figure does not depend on the device count;
    class-conditional models are evaluated with the true labels, i.e. -log p(x | y).
    """
    num_steps = model.config.eval.num_steps
    if num_steps == 0:
        return model.loss_terms(params, batch, key, train=False)
    noise = model.noise(batch, key, train=False)
    variance = model.eval_variance
    denoise = model.denoise_fn(params, model.condition(batch, "test"), with_variance=variance == "learned")
    return objectives.neg_elbo_terms(
        denoise,
        batch["x"],
        objectives.discretize_t(noise["t"], num_steps),
        noise["eps"],
        noise["eps_0"],
        schedule=model.schedule(params),
        parameterization=model.config.model.parameterization,
        decoder=model.decoder,
        encoding=model.info.encoding,
        num_steps=num_steps,
        variance=variance,
    )


IMPORTANCE_BINS = 50  # config.eval.t_sampling='importance': lambda bins of the proposal, from the pilot pass
IMPORTANCE_UNIFORM = 0.1  # ... mixed with this much uniform mass (bounded weights whatever the pilot saw)


def pilot_eval_step(model: DiffusionModel, params: PyTree, batch: dict, key: Array) -> dict:
    """Per-example lambda = -gamma(t) and integrand gamma'^-1 x (ELBO diffusion term) at t ~ U(0, 1): the pilot pass of
    importance-sampled evaluation (t_sampling.integrand; per unit lambda, 1/2 ||eps - eps_hat||^2)."""
    noise = model.noise(batch, key, train=False)
    gammas = objectives.schedule_values(model.schedule(params), noise["t"])  # one pass: the terms and the integrand
    terms = model.terms_at(params["model"], gammas, batch, noise, train=False)
    return {"lam": -gammas[2], "value": t_sampling.integrand(terms["diffusion"], jnp.ones_like(gammas[2]), gammas[3])}


def importance_proposal(model: DiffusionModel, params: PyTree, pilot: dict) -> Array:
    """Bin probabilities [IMPORTANCE_BINS] proportional to the pilot's per-bin RMS integrand (t_sampling.rms_histogram), mixed."""
    schedule = model.schedule(params)
    edges = t_sampling.lambda_edges(schedule(jnp.zeros(())), schedule(jnp.ones(())), IMPORTANCE_BINS)
    bins = t_sampling.bin_index(jnp.asarray(pilot["lam"]), edges)
    hist = t_sampling.rms_histogram(bins, jnp.asarray(pilot["value"]), IMPORTANCE_BINS)
    return t_sampling.bin_probs(hist, IMPORTANCE_UNIFORM)


def importance_eval_step(model: DiffusionModel, inputs: dict, batch: dict, key: Array) -> dict:
    """Per-example -ELBO terms (continuous time) with t ~ q(t) from inputs['probs'] and the diffusion term divided by q(t).

    inputs = {'params', 'probs'} (importance_proposal); each example draws its own lambda bin and
    point (independent, so the per-example standard error stays valid). Same expectation as
    eval_step's; a smaller variance when probs follows the integrand (VDM++'s importance sampling).
    """
    params, probs = inputs["params"], inputs["probs"]
    schedule, x = model.schedule(params), batch["x"]
    noise = objectives.example_noise(key, batch["index"], x.shape[1:], x.dtype, extra_uniform=True)
    edges = t_sampling.lambda_edges(schedule(jnp.zeros(())), schedule(jnp.ones(())), probs.shape[0])
    drawn = t_sampling.draw(noise["t"], noise["u_t"], probs, edges, schedule)
    return objectives.neg_elbo_terms(
        model.denoise_fn(params, model.condition(batch, "test")),
        x,
        drawn["t"],
        noise["eps"],
        noise["eps_0"],
        schedule=schedule,
        parameterization=model.config.model.parameterization,
        decoder=model.decoder,
        encoding=model.info.encoding,
        t_density=drawn["density"],
    )


def ode_eval_step(model: DiffusionModel, params: PyTree, batch: dict, key: Array) -> dict:
    """Per-example -log p(x) in nats through the probability-flow ODE (likelihood.ode_nll) on this device's shard.

    config.eval.ode_steps RK4 steps, ode_probes Hutchinson probes; 8-bit data dequantised (the
    D log 127.5 offset puts it on the ELBO's scale); class-conditional models get the true labels.
    """
    e = model.config.eval
    key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
    denoise = model.denoise_fn(params, model.condition(batch, "test"))
    return {
        "nll": ode_nll(
            denoise,
            batch["x"],
            key,
            schedule=model.schedule(params),
            parameterization=model.config.model.parameterization,
            num_steps=e.ode_steps,
            num_probes=e.ode_probes,
            dequantize=model.info.discrete,
            encoding=model.info.encoding,
        )
    }


# ----------------------------------------------------------------------------- set-up


def build(config: ml_collections.ConfigDict, info: pipeline.DatasetInfo) -> DiffusionModel:
    """Network, schedule and optimizer for `config` (validated) on data described by `info`."""
    m = config.model
    sched_module = get_schedule_module(m)
    fixed = None
    if sched_module is None:
        fixed = get_schedule(m.schedule, gamma_min=m.gamma_min, gamma_max=m.gamma_max, shift=m.schedule_shift)
    compute = COMPUTE_DTYPES[config.training.dtype]
    optimizer = Optimizer.from_config(config, convert.decay_mask)
    network, text = get_model(m, compute), None
    if validation.text_encoder(config) != "none":  # the captions condition the denoiser (vdm.models.text_net)
        text = TextConditioning.build(config)
        network = text_network(network, m, config.text, text.vocab_size)
    return DiffusionModel(config, info, network, optimizer, sched_module, fixed, text)


def setup(config: ml_collections.ConfigDict, mode: str = "train") -> tuple[DiffusionModel, Any]:
    """Join the multi-host job if any, validate `config` for `mode` (the one place), and build (model, mesh)."""
    parallel.initialize_distributed()
    validation.validate(config, device_count=jax.device_count(), mode=mode)
    text_checks.validate_text(config)
    info = pipeline.get_dataset_info(config.data)
    validation.validate_for_data(config, info)
    return build(config, info), parallel.make_mesh()


def derived_key(config: ml_collections.ConfigDict, stream: int, step: int) -> Array:
    """Key for evaluation (stream 1) or sampling (stream 2) at `step`, independent of the train keys."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), stream), step)
