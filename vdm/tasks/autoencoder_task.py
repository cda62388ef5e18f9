"""The autoencoder of latent diffusion (stage 1), trained by the VAE ELBO through the one loop (vdm/tasks/loop.py).

    python -m vdm.main --config=configs/fashion_mnist_ae.py --workdir=DIR

Each step encodes x to q(z_0 | x) = N(mean, diag e^log_var), draws z_0 by reparameterisation
(per example, from the global example index) and minimises E[-log p(x | z_0)] + beta KL(q || N(0, I))
(vdm.core.latent; beta = config.loss.kl_weight, 1 the true ELBO: Kingma & Welling 2014, Higgins et al.
2017). The eval reports, over the test split with the EMA params, the VAE's -ELBO in bits/dim
(eval/bpd with eval/bpd_recon + eval/bpd_kl, and its standard error) and the reconstruction's
mean squared error, and writes DIR/samples/recon_<step>.png (originals above reconstructions) and
prior_<step>.png (decoded z_0 ~ N(0, I): config.eval.num_images rounded up to a square number, a full
square grid), each pixel 4 x 4 for viewing. Checkpoints with resume, metrics.jsonl, TensorBoard and
DIR/config.json as for every model. A latent diffusion model reads the newest checkpoint's EMA
params (`load_autoencoder`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm.config import cli_errors, latent_checks, validation
from vdm.core import latent
from vdm.core.objectives import example_noise
from vdm.data import pipeline
from vdm.evaluation.split_eval import bpd_report, over_split
from vdm.infra import parallel
from vdm.infra.checkpoint import Checkpointer
from vdm.infra.metrics import MetricWriter, save_samples_png
from vdm.infra.optim import Optimizer, TrainState, step_keys
from vdm.models import convert
from vdm.models.autoencoder import Autoencoder, autoencoder_from_config, latent_shape
from vdm.tasks.loop import has_checkpoints, run

Array = jax.Array
PyTree = Any
log = logging.getLogger(__name__)


def square_count(n: int) -> int:
    """The least square number >= n (n >= 1): as many prior samples as fill a square grid of at least n."""
    return (math.isqrt(n - 1) + 1) ** 2


def vae_terms(
    ae: Autoencoder, params: PyTree, x: Array, eps: Array, *, kl_weight: float = 1.0, encoding: str = "endpoints"
) -> dict[str, Array]:
    """Per-example nats {'reconstruction' -log p(x | z_0), 'kl' KL(q || N(0, I)), 'total' (the -ELBO), 'loss' (KL x beta)}.

    z_0 = mean + e^{log_var / 2} eps (vdm.core.latent.reparameterize), eps shaped like the latent.
    """
    mean, log_var = ae.apply({"params": params}, x, method="encode")
    out = ae.apply({"params": params}, latent.reparameterize(mean, log_var, eps), method="decode")
    recon = -latent.decoder_log_prob(x, out, ae.decoder, encoding)
    kl = latent.kl_standard_normal(mean, log_var)
    return {"reconstruction": recon, "kl": kl, "total": recon + kl, "loss": recon + kl_weight * kl}


@dataclasses.dataclass(eq=False)
class AutoencoderTask:
    """The autoencoder as a vdm.tasks.loop.Task: the (beta-)VAE ELBO per step, the test ELBO and image grids as eval."""

    config: ml_collections.ConfigDict
    info: pipeline.DatasetInfo
    ae: Autoencoder
    optimizer: Optimizer
    cache: dict = dataclasses.field(default_factory=dict)
    display: tuple[str, ...] = ("eval/bpd", "eval/bpd_se", "eval/bpd_kl")

    def init_state(self) -> TrainState:
        """Fresh params {'model': ...} from config.seed."""
        k_init, k_run = jax.random.split(jax.random.PRNGKey(self.config.seed))
        x = jnp.zeros((1,) + tuple(self.info.shape))
        return self.optimizer.init({"model": self.ae.init(k_init, x)["params"]}, k_run)

    def noise(self, key: Array, index: Array) -> Array:
        """eps [B, *latent] of each example from its global index (objectives.example_noise: layout-independent)."""
        return example_noise(key, index, latent_shape(self.config.model, self.info.shape))["eps"]

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One step of the mean (beta-)VAE loss; metrics: loss and the per-example means of its terms."""
        k_example, _ = step_keys(state)
        eps = self.noise(k_example, batch["index"])

        def loss(params):
            terms = vae_terms(
                self.ae,
                params["model"],
                batch["x"],
                eps,
                kl_weight=self.config.loss.kl_weight,
                encoding=self.info.encoding,
            )
            means = {k: jnp.mean(v) for k, v in terms.items()}
            return means["loss"], means

        grads, metrics = jax.grad(loss, has_aux=True)(parallel.to_varying(state.params))
        return self.optimizer.update(state, grads, metrics)

    def eval_step(self, params: PyTree, batch: dict, key: Array) -> dict:
        """Per-example -ELBO terms (nats) and the squared error of the decoder's mean at z_0 = mean."""
        terms = vae_terms(
            self.ae, params["model"], batch["x"], self.noise(key, batch["index"]), encoding=self.info.encoding
        )
        image = self.reconstruct(params, batch["x"])
        terms["sq_error"] = jnp.mean(jnp.square(image - batch["x"]), axis=tuple(range(1, image.ndim)))
        return terms

    def reconstruct(self, params: PyTree, x: Array) -> Array:
        """The decoder's mean image at the encoder's mean (vdm.core.latent.decoder_image)."""
        mean, _ = self.ae.apply({"params": params["model"]}, x, method="encode")
        return self.decode(params, mean)

    def decode(self, params: PyTree, z: Array, decode: str = "mean") -> Array:
        """The image of z_0 through the decoder: its mean or its 8-bit argmax (vdm.core.latent.decoder_image)."""
        out = self.ae.apply({"params": params["model"]}, z, method="decode")
        return latent.decoder_image(out, self.ae.decoder, decode, self.info.encoding)

    def evaluate(self, state: TrainState, step: int, mesh: Any, workdir: str, writer: MetricWriter) -> dict:
        """The test -ELBO in bits/dim (EMA params) with its SE, the reconstruction MSE, and the two image grids."""
        c, d = self.config, self.info.num_dims
        if "eval" not in self.cache:
            self.cache["eval"] = parallel.data_parallel_eval(self.eval_step, mesh)
            self.cache["images"] = jax.jit(lambda p, x, z: (self.reconstruct(p, x), self.decode(p, z)))
        key = jax.random.fold_in(jax.random.PRNGKey(c.seed + 1), step)
        out = over_split(
            self.cache["eval"], state.ema_params, c.data, c.eval.batch_size, mesh, key, "test", c.eval.max_examples
        )
        result = {
            **bpd_report(out, {"total": "", "reconstruction": "_recon", "kl": "_kl"}, d),
            "eval/mse": float(np.mean(out["sq_error"])),
        }
        writer.write(step, result)
        if jax.process_index() == 0:
            n = c.eval.num_images
            x = next(pipeline.eval_iterator(c.data, n, split="test"))["x"][:n]
            z = jax.random.normal(
                jax.random.fold_in(key, 1), (square_count(n),) + latent_shape(c.model, self.info.shape)
            )
            recon, prior = (np.asarray(a) for a in self.cache["images"](parallel.to_host(state.ema_params), x, z))
            folder = os.path.join(workdir, "samples")
            save_samples_png(
                os.path.join(folder, f"recon_{step:07d}.png"), np.concatenate([x, recon]), self.info.encoding
            )
            save_samples_png(os.path.join(folder, f"prior_{step:07d}.png"), prior, self.info.encoding)
        return result


def build(config: ml_collections.ConfigDict) -> AutoencoderTask:
    """Validate an autoencoder config (vdm.config.latent_checks) against its data and build its task."""
    latent_checks.validate_autoencoder(config, device_count=jax.device_count())
    info = pipeline.get_dataset_info(config.data)
    latent_checks.validate_for_images(config, info)
    ae = autoencoder_from_config(config.model, info.shape[-1])
    return AutoencoderTask(config, info, ae, Optimizer.from_config(config, convert.decay_mask))


def load_autoencoder(workdir: str) -> tuple[AutoencoderTask, PyTree, int]:
    """(task, EMA params, step) of the newest intact checkpoint of an autoencoder run in `workdir`; clear errors if none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{workdir} holds no autoencoder run (no config.json); train one first: python -m "
            f"vdm.main --config=configs/fashion_mnist_ae.py --workdir={workdir}"
        )
    with open(path, encoding="utf-8") as f:
        recorded = ml_collections.ConfigDict(json.load(f))
    if "kl_weight" not in recorded.get("loss", {}):
        raise validation.ConfigError(
            f"{workdir} holds a run that is not an autoencoder's (its config.json has no "
            "loss.kl_weight); config.latent.autoencoder_workdir needs a vdm.tasks.autoencoder_task run."
        )
    untrained = cli_errors.untrained_hint(workdir, "autoencoder", flag="--config.latent.autoencoder_workdir")
    if not has_checkpoints(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(untrained)
    task = build(recorded)
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None, create=False) as ckpt:
        state, step = ckpt.restore_latest(parallel.to_host(task.init_state()))
    if state is None:
        raise FileNotFoundError(untrained)
    return task, state.ema_params, int(step)


def train_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (resuming) for config.training.num_steps in `workdir`; returns the last eval (eval/bpd, ...)."""
    parallel.initialize_distributed()
    task = build(config)
    return run(task, parallel.make_mesh(), workdir)
