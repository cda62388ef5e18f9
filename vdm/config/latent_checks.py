"""Config checks of latent diffusion: the autoencoder's config (configs/fashion_mnist_ae.py) and config.latent.

Like vdm.config.validation (whose helpers these use), each check raises ConfigError naming the key,
its value and what is valid.
"""

from __future__ import annotations

import math

import ml_collections

from vdm.config.validation import (
    ConfigError,
    check,
    check_choice,
    check_float,
    check_int,
    divisible_by_devices,
    names_missing_keys,
    task_of,
    validate_optimizer,
    validate_seed_and_data,
    validate_training,
)
from vdm.core import latent

LATENTS = ("mean", "sample")  # config.latent.latents: what the diffusion prior is trained on


@names_missing_keys
def validate_autoencoder(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first invalid or missing field of an autoencoder config."""
    c = config
    validate_seed_and_data(c)
    m = c.model
    for key in ("latent_channels", "width", "num_blocks", "downsample"):
        check_int(f"model.{key}", m[key], 1)
    check(
        2 ** int(round(math.log2(m.downsample))) == m.downsample,
        f"config.model.downsample={m.downsample} must be a power of 2 (1, 2, 4, ...).",
    )
    check_choice("model.decoder", m.decoder, latent.DECODERS)
    check_float("loss.kl_weight", c.loss.kl_weight, 0.0)
    validate_optimizer(c.optimizer)
    validate_training(c.training, device_count)
    check_int("eval.batch_size", c.eval.batch_size, 1)
    divisible_by_devices("eval.batch_size", c.eval.batch_size, device_count)
    check_int("eval.max_examples", c.eval.max_examples, 0)
    check_int("eval.num_images", c.eval.num_images, 1)


def validate_for_images(config: ml_collections.ConfigDict, info) -> None:
    """The autoencoder needs 8-bit images [H, W, C] whose sides the downsampling factor divides (or continuous data for 'gaussian')."""
    m = config.model
    check(len(info.shape) == 3, f"the autoencoder needs images [H, W, C]; {info.name!r} has shape {tuple(info.shape)}.")
    check(
        all(s % m.downsample == 0 for s in info.shape[:2]),
        f"config.model.downsample={m.downsample} must divide the image sides {tuple(info.shape[:2])} of {info.name!r}.",
    )
    check(
        (m.decoder != "gaussian") == bool(info.discrete),
        f"config.model.decoder={m.decoder!r} does not fit {info.name!r}: 8-bit data needs 'categorical' or "
        "'discretized_gaussian' (a probability of the 8-bit values: real bits/dim), continuous data 'gaussian'.",
    )


def is_latent(config: ml_collections.ConfigDict) -> bool:
    """Whether a config is a latent diffusion model's (config.task, validation.task_of)."""
    return task_of(config) == "latent_diffusion"


def validate_latent(config: ml_collections.ConfigDict) -> None:
    """config.latent of a latent diffusion model, and what the diffusion level needs on continuous latents."""
    lat, m, e = config.latent, config.model, config.eval
    check(
        bool(lat.autoencoder_workdir),
        "config.task='latent_diffusion' needs config.latent.autoencoder_workdir: the "
        "workdir of a trained autoencoder (python -m vdm.main --config=configs/fashion_mnist_ae.py --workdir=DIR).",
    )
    check_choice("latent.latents", lat.latents, LATENTS)
    check_float("latent.scale", lat.scale, 0.0)
    check_int("latent.scale_examples", lat.scale_examples, 2)
    check_choice("sampling.decode", config.sampling.decode, latent.DECODES)
    check(isinstance(lat.joint, bool), f"config.latent.joint={lat.joint!r} must be True or False.")
    check(
        m.decoder == "gaussian",
        f"config.model.decoder={m.decoder!r}: the diffusion prior of a latent model is over continuous latents, so "
        "its decoder is 'gaussian' (the autoencoder's decoder models the 8-bit pixels).",
    )
    check(m.name != "mlp", "config.model.name='mlp' models flat data; a latent model needs a UNet over [h, w, C_z].")
    check(
        e.method == "elbo",
        f"config.eval.method={e.method!r}: a latent model's bound is the three-term ELBO "
        "(eval.method='elbo'); the probability-flow ODE is not wired through the encoder.",
    )
    check(
        e.t_sampling == "uniform",
        "config.eval.t_sampling='importance' is not available for latent models "
        "(its pilot pass runs on pixels); use 'uniform'.",
    )
    check(
        not (lat.joint and m.schedule == "learned"),
        "config.latent.joint=True needs a schedule trained by the loss's own gradient; "
        "model.schedule='learned' (VDM's variance-minimising gradient) is not supported there.",
    )


def check_autoencoder_data(config: ml_collections.ConfigDict, ae_config: ml_collections.ConfigDict, where: str) -> None:
    """The latent model's data must be the autoencoder's (dataset and 8-bit grid), or its latents mean nothing."""
    for key in ("dataset", "encoding"):
        mine, theirs = config.data[key], ae_config.data[key]
        if mine != theirs:
            raise ConfigError(
                f"config.data.{key}={mine!r} differs from the autoencoder's ({where}: {theirs!r}); a "
                f"latent model must use its autoencoder's data."
            )
