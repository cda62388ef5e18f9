"""Latent diffusion (stage 2): the diffusion model as the prior over a trained autoencoder's latents, with its honest bound.

    python -m vdm.main --config=configs/fashion_mnist.py:latent \
        --config.latent.autoencoder_workdir=AE_DIR --workdir=DIR

The autoencoder (vdm.tasks.autoencoder_task) gives q(z_0 | x) and p(x | z_0); this run trains the
unchanged diffusion model (any parameterisation, weighting, schedule, t sampling) on u = c z_0,
with z_0 the encoder's mean or a draw (config.latent.latents) and c = config.latent.scale (0:
1 / std of the latents over config.latent.scale_examples train examples, computed at the start
and recorded in DIR/config.json). The diffusion level's 'gaussian' decoder makes its -ELBO a bound
on -log p(u); the autoencoder's decoder is the last level, to x. The autoencoder's params are
copied into the run's state at step 0 (params['autoencoder'], frozen: zero gradient, no weight
decay), so the run's checkpoints hold the whole model and eval/sample need nothing else.

The eval (and --mode=eval) reports the three-term bound of vdm.core.latent over the test split in
bits per *pixel* dimension: eval/bpd = eval/bpd_recon + eval/bpd_neg_entropy +
eval/bpd_cross_entropy, with eval/bpd_se; the cross-entropy's parts eval/bpd_latent_{recon,prior,
diffusion} (the diffusion -ELBO of u) and the change of variables (-d log c). config.latent.joint
(off by default; a resume may turn it on) trains encoder, decoder and prior together on that
bound (LSGM's end-to-end step; z_0 ~ q then, whatever config.latent.latents says). Samples are
drawn in latent space by config.sampling and decoded (config.sampling.decode: the decoder's mean
or its 8-bit argmax).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm.config import latent_checks, record, validation
from vdm.core import latent
from vdm.core.encoding import bits_per_dim
from vdm.core.objectives import example_noise
from vdm.data import pipeline
from vdm.evaluation.split_eval import bpd_report, over_eval_split
from vdm.infra import parallel
from vdm.infra.metrics import MetricWriter, plot_bpd, save_samples_png
from vdm.infra.optim import Optimizer, TrainState
from vdm.models import convert
from vdm.models.autoencoder import Autoencoder, autoencoder_from_config, latent_shape
from vdm.sampling.samplers import sample as run_sampler
from vdm.tasks import loop
from vdm.tasks.autoencoder_task import load_autoencoder
from vdm.tasks.diffusion_model import DiffusionModel, derived_key, eval_step, train_step
from vdm.tasks.diffusion_model import build as build_model

Array = jax.Array
PyTree = Any
AE = "autoencoder"  # the params key of the autoencoder in a latent run's state
AE_MODEL_KEYS = ("latent_channels", "downsample", "width", "num_blocks", "decoder")
log = logging.getLogger(__name__)
BOUND_TERMS = {
    "total": "",
    "reconstruction": "_recon",
    "neg_entropy": "_neg_entropy",
    "cross_entropy": "_cross_entropy",
    "latent_reconstruction": "_latent_recon",
    "latent_prior": "_latent_prior",
    "latent_diffusion": "_latent_diffusion",
}


def encoder_noise(key: Array, index: Array, shape: tuple[int, ...]) -> Array:
    """eps [B, *shape] of q(z_0 | x)'s draw per example, from fold_in(key, 1) by index (apart from the diffusion's noise)."""
    return example_noise(jax.random.fold_in(key, 1), index, shape)["eps"]


def sample_and_decode(
    denoise_fn: Callable,
    decode_fn: Callable[[Array], Array],
    shape: tuple[int, ...],
    key: Array,
    *,
    scale: float,
    **sampler_kwargs,
) -> Array:
    """decode_fn(u / c) for u ~ the diffusion prior (vdm.sampling.samplers.sample of denoise_fn over latents `shape`): x = dec(z_0)."""
    return decode_fn(run_sampler(denoise_fn, shape, key, **sampler_kwargs) / scale)


@dataclasses.dataclass(eq=False)
class LatentDiffusionTask:
    """The latent diffusion model as a loop.Task: the diffusion model on scaled latents, the three-term bound as eval."""

    model: DiffusionModel  # on the latent data (latent_info); its optimizer keeps the autoencoder frozen
    ae: Autoencoder
    pixel_info: pipeline.DatasetInfo
    ae_params: PyTree | None = None  # the autoencoder's EMA params, copied into the state at step 0 (training)
    cache: dict = dataclasses.field(default_factory=dict)
    display: tuple[str, ...] = ("eval/bpd", "eval/bpd_se", "eval/bpd_cross_entropy")

    @property
    def config(self) -> ml_collections.ConfigDict:
        """The run's config."""
        return self.model.config

    @property
    def scale(self) -> float:
        """c in u = c z_0 (config.latent.scale, recorded)."""
        return float(self.config.latent.scale)

    @property
    def log_det(self) -> float:
        """d log c (vdm.core.latent.scale_log_det), in nats, d the latent dimension."""
        return latent.scale_log_det(self.scale, self.model.info.num_dims)

    def init_state(self) -> TrainState:
        """Fresh diffusion params and the autoencoder's (loaded ones; else a fresh init, whose shapes a restore needs)."""
        k_init, k_run = jax.random.split(jax.random.PRNGKey(self.config.seed))
        params = jax.jit(DiffusionModel.init_params, static_argnums=0)(self.model, k_init)
        ae = self.ae_params
        if ae is None:
            ae = self.ae.init(jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(self.pixel_info.shape)))["params"]
        return self.model.optimizer.init({**params, AE: ae}, k_run).replace(stats=self.model.init_stats())

    def encode(self, ae_params: PyTree, x: Array, eps: Array) -> tuple[Array, Array, Array]:
        """(z_0 ~ q(z_0 | x), mean, log_var) of the encoder for x [B, H, W, C], eps shaped like z_0."""
        mean, log_var = self.ae.apply({"params": ae_params}, x, method="encode")
        return latent.reparameterize(mean, log_var, eps), mean, log_var

    def latents(self, ae_params: PyTree, batch: dict, key: Array) -> Array:
        """u = c z_0 of the batch, z_0 the encoder's mean or a draw (config.latent.latents)."""
        z, mean, _ = self.encode(ae_params, batch["x"], encoder_noise(key, batch["index"], self.model.info.shape))
        return self.scale * (mean if self.config.latent.latents == "mean" else z)

    def bound(self, params: PyTree, batch: dict, key: Array, prior_terms: Callable[[dict], dict]) -> tuple[dict, dict]:
        """(per-example three-term bound, vdm.core.latent.bound_terms, with z_0 ~ q; the prior's terms prior_terms(latent batch)).

        The bound adds the prior's parts as 'latent_reconstruction', 'latent_prior', 'latent_diffusion'.
        """
        z, _, log_var = self.encode(params[AE], batch["x"], encoder_noise(key, batch["index"], self.model.info.shape))
        out = self.ae.apply({"params": params[AE]}, z, method="decode")
        recon = -latent.decoder_log_prob(batch["x"], out, self.ae.decoder, self.pixel_info.encoding)
        prior = prior_terms({**batch, "x": self.scale * z})
        terms = latent.bound_terms(recon, log_var, prior["total"] - self.log_det)
        return {**terms, **{f"latent_{k}": prior[k] for k in ("reconstruction", "prior", "diffusion")}}, prior

    def value_and_grad(
        self, params: PyTree, batch: dict, key: Array, dropout_key: Array | None = None, stats: PyTree = None
    ) -> tuple[tuple[Array, dict], PyTree]:
        """The step's objective: two-stage, the diffusion model's own on u (frozen encoder: zero autoencoder gradient);
        config.latent.joint, the bound with the configured weighting, through encoder, decoder and prior."""
        k_diff, k_enc = jax.random.split(key)
        if not self.config.latent.joint:
            u = self.latents(jax.lax.stop_gradient(params[AE]), batch, k_enc)
            diffusion = {k: v for k, v in params.items() if k != AE}
            (loss, terms), grads = self.model.value_and_grad(diffusion, {**batch, "x": u}, k_diff, dropout_key, stats)
            return (loss, terms), {**grads, AE: jax.tree.map(jnp.zeros_like, params[AE])}

        def mean_loss(p):
            bound, prior = self.bound(
                p, batch, k_enc, lambda b: self.model.loss_terms(p, b, k_diff, dropout_key, stats=stats)
            )
            terms = {**prior, "total": bound["total"]}  # the prior's parts (and adaptive t's draws) as logged
            return jnp.mean(terms["total"]), terms

        return jax.value_and_grad(mean_loss, has_aux=True)(params)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """diffusion_model.train_step with this task's objective (value_and_grad)."""
        return train_step(self.model, state, batch, value_and_grad=self.value_and_grad)

    def eval_step(self, params: PyTree, batch: dict, key: Array) -> dict:
        """Per-example bound terms in nats: z_0 ~ q, the true (w = 1) -ELBO of u (diffusion_model.eval_step)."""
        return self.bound(params, batch, key, lambda b: eval_step(self.model, params, b, jax.random.fold_in(key, 2)))[0]

    def elbo_over_split(self, mesh: Any, params: PyTree, key: Array, split: str = "test") -> dict[str, float]:
        """The bound over the split in bits per pixel dimension: eval/bpd{,_se,_recon,_neg_entropy,_cross_entropy,...}."""
        if "eval" not in self.cache:
            self.cache["eval"] = parallel.data_parallel_eval(self.eval_step, mesh)
        out = over_eval_split(self.cache["eval"], params, self.config, mesh, key, split, "eval")
        d = self.pixel_info.num_dims
        result = bpd_report(out, BOUND_TERMS, d)
        return {**result, "eval/bpd_scale_log_det": float(bits_per_dim(-self.log_det, d))}

    @property
    def data_info(self) -> pipeline.DatasetInfo:
        """The data the model generates: the pixels its autoencoder decodes to."""
        return self.pixel_info

    def evaluate_split(self, mesh: Any, params: PyTree, key: Array) -> dict[str, float]:
        """--mode=eval's figure: the three-term bound over the test split (elbo_over_split)."""
        return {**self.elbo_over_split(mesh, params, key), "eval/num_steps": self.config.eval.num_steps}

    def sample_labels(self, num: int) -> None:
        """None: latent models are unconditional."""
        return None

    def sampler(self, num: int, classifier: tuple | None = None) -> Callable[[PyTree, Array], Array]:
        """jit fn(params, key) -> num decoded images [num, H, W, C] (config.sampling; config.sampling.decode)."""
        if classifier is not None:
            raise validation.ConfigError(
                "classifier guidance (config.guidance.classifier_workdir) is not supported "
                "for latent models yet; sample without it."
            )
        c, m = self.config, self.model
        options = make_sampler_options(c)

        def fn(params: PyTree, key: Array) -> Array:
            decode = lambda z: latent.decoder_image(
                self.ae.apply({"params": params[AE]}, z, method="decode"),
                self.ae.decoder,
                c.sampling.decode,
                self.pixel_info.encoding,
            )
            denoise = m.denoise_fn(params, None, with_variance=options.get("variance") == "learned")
            return sample_and_decode(
                denoise,
                decode,
                (num,) + tuple(m.info.shape),
                key,
                scale=self.scale,
                schedule=m.schedule(params),
                parameterization=c.model.parameterization,
                method=c.sampling.method,
                num_steps=c.sampling.num_steps,
                **options,
            )

        return jax.jit(fn)

    def evaluate(self, state: TrainState, step: int, mesh: Any, workdir: str, writer: MetricWriter) -> dict:
        """The bound over the test split (EMA params) and a grid of decoded samples to workdir/samples/step_<step>.png."""
        c = self.config
        if "sample" not in self.cache:
            self.cache["sample"] = self.sampler(c.sampling.num_samples)
        result = self.elbo_over_split(mesh, state.ema_params, derived_key(c, 1, step))
        samples = parallel.to_host(self.cache["sample"](state.ema_params, derived_key(c, 2, step)))
        result["eval/sample_nonfinite_frac"] = float(np.mean(~np.isfinite(samples)))
        writer.write(step, result)
        if jax.process_index() == 0:
            save_samples_png(f"{workdir}/samples/step_{step:07d}.png", samples, self.pixel_info.encoding)
            plot_bpd(workdir)
        return result


def make_sampler_options(config: ml_collections.ConfigDict) -> dict:
    """The sampler options config.sampling sets (vdm.sampling.samplers.options_from_config); guidance is not supported on latents."""
    from vdm.sampling.samplers import options_from_config

    s = config.sampling
    if s.guidance_weight > 0 or config.guidance.classifier_workdir:
        raise validation.ConfigError(
            "guidance (config.sampling.guidance_weight, config.guidance.classifier_workdir) "
            "is not supported for latent models yet; sample without it."
        )
    return options_from_config(s)


def _latent_optimizer(config: ml_collections.ConfigDict) -> Optimizer:
    """The diffusion model's optimizer, with no weight decay on the autoencoder (frozen in two-stage training)."""

    def mask(params: PyTree, kind: str) -> PyTree:
        rest = convert.decay_mask({k: v for k, v in params.items() if k != AE}, kind)
        return {**rest, **({AE: jax.tree.map(lambda _: False, params[AE])} if AE in params else {})}

    return Optimizer.from_config(config, mask)


def check(config: ml_collections.ConfigDict, mode: str = "train") -> None:
    """Join the multi-host job if any and validate a latent diffusion config for `mode` (the diffusion keys and
    config.latent), once per run, before anything is read."""
    parallel.initialize_distributed()
    validation.validate(config, device_count=jax.device_count(), mode=mode)
    latent_checks.validate_latent(config)


def build(
    config: ml_collections.ConfigDict, ae_params: PyTree | None = None, mode: str = "train", *, checked: bool = False
) -> LatentDiffusionTask:
    """The latent diffusion Task of a config whose config.latent.scale and .autoencoder are set (recorded), validated
    for `mode` (check) unless `checked` says that was done."""
    if not checked:
        check(config, mode)
    pixel = pipeline.get_dataset_info(config.data)
    ae_config = ml_collections.ConfigDict({"model": dict(config.latent.autoencoder)})
    shape = latent_shape(ae_config.model, pixel.shape)
    info = dataclasses.replace(pixel, name=f"{pixel.name} latents", shape=shape, discrete=False)
    validation.validate_for_data(config, info)
    model = dataclasses.replace(build_model(config, info), optimizer=_latent_optimizer(config))
    return LatentDiffusionTask(
        model, autoencoder_from_config(config.latent.autoencoder, pixel.shape[-1]), pixel, ae_params
    )


def compute_scale(config: ml_collections.ConfigDict, ae_task: Any, ae_params: PyTree) -> float:
    """c = 1 / std of the latents (config.latent.latents: means or draws) of the first config.latent.scale_examples train
    examples, over every coordinate (Rombach et al. 2022's scale factor: u = c z_0 has unit spread)."""
    lat, shape = config.latent, latent_shape(ae_task.config.model, ae_task.info.shape)

    @jax.jit
    def latents(x: Array, index: Array) -> Array:
        mean, log_var = ae_task.ae.apply({"params": ae_params}, x, method="encode")
        eps = encoder_noise(jax.random.PRNGKey(config.seed + 3), index, shape)
        return mean if lat.latents == "mean" else latent.reparameterize(mean, log_var, eps)

    batch_size = 500
    zs = [
        np.asarray(latents(b["x"], b["index"] + i * batch_size))[b["mask"]]
        for i, b in enumerate(pipeline.eval_iterator(config.data, batch_size, "train", max_examples=lat.scale_examples))
    ]
    std = float(np.std(np.concatenate(zs), dtype=np.float64))
    if not np.isfinite(std) or std <= 0:
        raise FloatingPointError(
            f"the autoencoder's latents have std {std}: config.latent.scale cannot be computed; "
            "set it by hand or retrain the autoencoder."
        )
    return 1.0 / std


def resolve_config(config: ml_collections.ConfigDict, workdir: str) -> tuple[ml_collections.ConfigDict, PyTree | None]:
    """(config with config.latent.autoencoder and .scale set, the autoencoder's EMA params or None when resuming).

    A fresh run copies the autoencoder run's model keys and computes the scale if 0 (compute_scale);
    a resumed run takes both, and the autoencoder's workdir, from its record (DIR/config.json): its
    autoencoder is the one in its checkpoints, so the given config need not repeat them.
    """
    config = config.copy_and_resolve_references()
    config.unlock()
    lat = config.latent
    recorded = record.load_recorded(workdir) if loop.has_checkpoints(os.path.join(workdir, "checkpoints")) else None
    if recorded is not None and latent_checks.is_latent(recorded):
        if lat.autoencoder_workdir != recorded.latent.autoencoder_workdir:
            log.info(
                "resuming: the autoencoder is the one in the checkpoints (trained in %s), not %s",
                recorded.latent.autoencoder_workdir,
                lat.autoencoder_workdir,
            )
        lat.autoencoder_workdir = recorded.latent.autoencoder_workdir
        lat.autoencoder = recorded.latent.autoencoder
        lat.scale = lat.scale or recorded.latent.scale
        config.lock()
        return config, None
    ae_task, ae_params, ae_step = load_autoencoder(lat.autoencoder_workdir)
    latent_checks.check_autoencoder_data(config, ae_task.config, lat.autoencoder_workdir)
    lat.autoencoder = ml_collections.ConfigDict({k: ae_task.config.model[k] for k in AE_MODEL_KEYS})
    if not lat.scale:
        lat.scale = compute_scale(config, ae_task, ae_params["model"])
    log.info(
        "latent diffusion on the autoencoder of %s (step %d): latents %s, scale c = %.6g",
        lat.autoencoder_workdir,
        ae_step,
        tuple(latent_shape(ae_task.config.model, ae_task.info.shape)),
        lat.scale,
    )
    config.lock()
    return config, ae_params["model"]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train the latent diffusion model of `config` in `workdir` (resuming); return the last eval (the bound's bits/dim)."""
    check(config)  # before anything is read or computed
    config, ae_params = resolve_config(config, workdir)
    task = build(config, ae_params, checked=True)
    return loop.run(task, parallel.make_mesh(), workdir)
