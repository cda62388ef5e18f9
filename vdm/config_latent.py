"""Config checks of latent diffusion: the autoencoder's config (configs/fashion_mnist_ae.py) and config.latent.

Like vdm.config_utils (whose helpers these use), each check raises ConfigError naming the key,
its value and what is valid.
"""

from __future__ import annotations

import math

import ml_collections

from vdm import latent
from vdm.config_utils import (ConfigError, _check, _choices, _float, _int, _names_missing_keys,
                              _validate_seed_and_data, divisible_by_devices, validate_optimizer, validate_training)

LATENTS = ("mean", "sample")   # config.latent.latents: what the diffusion prior is trained on


@_names_missing_keys
def validate_autoencoder(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first invalid or missing field of an autoencoder config."""
    c = config
    _validate_seed_and_data(c)
    m = c.model
    for key in ("latent_channels", "width", "num_blocks", "downsample"):
        _int(f"model.{key}", m[key], 1)
    _check(2 ** int(round(math.log2(m.downsample))) == m.downsample,
           f"config.model.downsample={m.downsample} must be a power of 2 (1, 2, 4, ...).")
    _choices("model.decoder", m.decoder, latent.DECODERS)
    _float("loss.kl_weight", c.loss.kl_weight, 0.0)
    validate_optimizer(c.optimizer)
    validate_training(c.training, device_count)
    _int("eval.batch_size", c.eval.batch_size, 1)
    divisible_by_devices("eval.batch_size", c.eval.batch_size, device_count)
    _int("eval.max_examples", c.eval.max_examples, 0)
    _int("eval.num_images", c.eval.num_images, 1)


def validate_for_images(config: ml_collections.ConfigDict, info) -> None:
    """The autoencoder needs 8-bit images [H, W, C] whose sides the downsampling factor divides (or continuous data for 'gaussian')."""
    m = config.model
    _check(len(info.shape) == 3, f"the autoencoder needs images [H, W, C]; {info.name!r} has shape {tuple(info.shape)}.")
    _check(all(s % m.downsample == 0 for s in info.shape[:2]),
           f"config.model.downsample={m.downsample} must divide the image sides {tuple(info.shape[:2])} of {info.name!r}.")
    _check((m.decoder != "gaussian") == bool(info.discrete),
           f"config.model.decoder={m.decoder!r} does not fit {info.name!r}: 8-bit data needs 'categorical' or "
           "'discretized_gaussian' (a probability of the 8-bit values: real bits/dim), continuous data 'gaussian'.")


def is_latent(config: ml_collections.ConfigDict) -> bool:
    """Whether a diffusion config is a latent diffusion model (config.latent.autoencoder_workdir set)."""
    return bool(config.get("latent") and config.latent.get("autoencoder_workdir"))


def validate_latent(config: ml_collections.ConfigDict) -> None:
    """config.latent of a latent diffusion model, and what the diffusion level needs on continuous latents."""
    lat, m, e = config.latent, config.model, config.eval
    _choices("latent.latents", lat.latents, LATENTS)
    _float("latent.scale", lat.scale, 0.0)
    _int("latent.scale_examples", lat.scale_examples, 2)
    _choices("sampling.decode", config.sampling.decode, latent.DECODES)
    _check(isinstance(lat.joint, bool), f"config.latent.joint={lat.joint!r} must be True or False.")
    _check(m.decoder == "gaussian",
           f"config.model.decoder={m.decoder!r}: the diffusion prior of a latent model is over continuous latents, so "
           "its decoder is 'gaussian' (the autoencoder's decoder models the 8-bit pixels).")
    _check(m.name != "mlp", "config.model.name='mlp' models flat data; a latent model needs a UNet over [h, w, C_z].")
    _check(e.method == "elbo", f"config.eval.method={e.method!r}: a latent model's bound is the three-term ELBO "
           "(eval.method='elbo'); the probability-flow ODE is not wired through the encoder.")
    _check(e.t_sampling == "uniform", "config.eval.t_sampling='importance' is not available for latent models "
           "(its pilot pass runs on pixels); use 'uniform'.")
    _check(not (lat.joint and m.schedule == "learned"),
           "config.latent.joint=True needs a schedule trained by the loss's own gradient; "
           "model.schedule='learned' (VDM's variance-minimising gradient) is not supported there.")


def check_autoencoder_data(config: ml_collections.ConfigDict, ae_config: ml_collections.ConfigDict, where: str) -> None:
    """The latent model's data must be the autoencoder's (dataset and 8-bit grid), or its latents mean nothing."""
    for key in ("dataset", "encoding"):
        mine, theirs = config.data[key], ae_config.data[key]
        if mine != theirs:
            raise ConfigError(f"config.data.{key}={mine!r} differs from the autoencoder's ({where}: {theirs!r}); a "
                              f"latent model must use its autoencoder's data.")
