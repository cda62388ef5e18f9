"""Latent diffusion in the unified view: a learned encoder q(z_0 | x) as one more level of the hierarchical VAE.

The diffusion model is the prior over the autoencoder's latent z_0, so the model keeps an ELBO
(LSGM, Vahdat et al. 2021, eqs. 3-5):

    -log p(x) <= E_q[-log p(x | z_0)] - H(q(z_0 | x)) + E_q[-log p(z_0)]
              <= reconstruction + neg_entropy + cross-entropy (the diffusion model's -ELBO of z_0).

The diffusion runs on u = c z_0 (c, the latent scale, puts the latents at unit spread), so its
-ELBO bounds -log p(u), and -log p(z_0) = -log p(u) - d log c (`scale_log_det`, d the latent
dimension). All per example, in nats; bits/dim divide by the *pixel* dimension D (the model is a
density over the 8-bit x, whatever the latent's size).

Pure functions: the encoder's Gaussian (`reparameterize`, `entropy`, `kl_standard_normal`), the
decoder's likelihood of x given its output channels (`decoder_log_prob`, `decoder_channels`,
`decoder_image`) and the bound's terms (`bound_terms`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vdm.core import encoding as enc
from vdm.core.gaussian import LOG_2PI, discretized_gaussian_log_prob, normal_logpdf, sum_except_batch

Array = jax.Array
# p(x | z_0) of the autoencoder, config key model.decoder of an autoencoder config: per pixel,
# 'categorical': 256 logits; 'discretized_gaussian': mean and log scale of a binned Gaussian
# (DDPM's edge-open bins); 'gaussian': mean and log scale of a density, for continuous data.
DECODERS = ("categorical", "discretized_gaussian", "gaussian")
DECODES = ("mean", "argmax")  # an image from the decoder: its mean, or its most likely 8-bit value per pixel


def reparameterize(mean: Array, log_var: Array, eps: Array) -> Array:
    """z_0 = mean + exp(log_var / 2) eps, eps ~ N(0, I): a draw from q(z_0 | x) differentiable in (mean, log_var)."""
    return mean + jnp.exp(0.5 * log_var) * eps


def entropy(log_var: Array) -> Array:
    """H(N(mean, diag e^log_var)) = 1/2 sum_i (log(2 pi e) + log_var_i) per example [B], in nats."""
    return sum_except_batch(0.5 * (LOG_2PI + 1.0 + log_var))


def kl_standard_normal(mean: Array, log_var: Array) -> Array:
    """KL(N(mean, diag e^log_var) || N(0, I)) = 1/2 sum_i (mean_i^2 + e^log_var_i - 1 - log_var_i) per example [B]."""
    return sum_except_batch(0.5 * (jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var))


def scale_log_det(scale: float, num_latent_dims: int) -> float:
    """d log c: -log p(z_0) = -log p(u) - d log c for u = c z_0 in d dimensions (change of variables)."""
    return num_latent_dims * math.log(scale)


def decoder_channels(decoder: str, channels: int) -> int:
    """Output channels of a decoder network for `channels` data channels: 256 C ('categorical') or 2 C (mean, log scale)."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown autoencoder decoder {decoder!r}; valid: {', '.join(DECODERS)}")
    return 256 * channels if decoder == "categorical" else 2 * channels


def _split(out: Array, decoder: str) -> tuple[Array, Array]:
    """(logits [..., C, 256], None) or (mean, log_scale) [..., C] of a decoder output [..., C * channels_per_pixel]."""
    if decoder == "categorical":
        return out.reshape(out.shape[:-1] + (out.shape[-1] // 256, 256)), None
    mean, log_scale = jnp.split(out, 2, axis=-1)
    return mean, log_scale


def decoder_log_prob(x: Array, out: Array, decoder: str, encoding: str = "endpoints") -> Array:
    """log p(x | z_0) per example [B] from the decoder's output `out` [B, ..., k C] (factorised over pixels).

    'categorical': log_softmax of 256 logits at x's bin; 'discretized_gaussian': the N(mean, e^{2 log_scale})
    mass of x's bin (vdm.core.gaussian.discretized_gaussian_log_prob); 'gaussian': log N(x; mean, e^{2 log_scale}).
    """
    a, b = _split(out, decoder)
    if decoder == "categorical":
        ll = jnp.take_along_axis(jax.nn.log_softmax(a, -1), enc.bin_index(x, encoding)[..., None], -1)[..., 0]
    elif decoder == "discretized_gaussian":
        ll = discretized_gaussian_log_prob(x, a, b, encoding)
    else:
        ll = normal_logpdf(x, a, jnp.exp(2.0 * b))
    return sum_except_batch(ll)


def decoder_image(out: Array, decoder: str, decode: str = "mean", encoding: str = "endpoints") -> Array:
    """An image [B, ..., C] from the decoder's output: decode='mean' the decoder's mean (the grid's values weighted by
    the 256-way probabilities; the Gaussians' mean parameter), or 'argmax' the most likely 8-bit value per pixel."""
    a, b = _split(out, decoder)
    if decode not in DECODES:
        raise ValueError(f"unknown decode {decode!r}; valid: {', '.join(DECODES)}")
    if decoder == "categorical":
        grid = enc.grid_values(encoding, a.dtype)
        return jax.nn.softmax(a, -1) @ grid if decode == "mean" else grid[jnp.argmax(a, -1)]
    if decoder == "gaussian" or decode == "mean":
        return a
    # Equal-width bins centred on the grid: among the interior ones the mean's nearest value has the most mass;
    # only the two open edge bins can have more, so the argmax is one of these three.
    grid = enc.grid_values(encoding, a.dtype)
    candidates = jnp.stack(
        [grid[enc.bin_index(jnp.clip(a, -1.0, 1.0), encoding)], jnp.full_like(a, grid[0]), jnp.full_like(a, grid[-1])]
    )
    log_mass = discretized_gaussian_log_prob(candidates, a, b, encoding)
    return jnp.take_along_axis(candidates, jnp.argmax(log_mass, axis=0)[None], axis=0)[0]


def bound_terms(reconstruction: Array, log_var: Array, cross_entropy: Array) -> dict[str, Array]:
    """The three-term bound per example: {'reconstruction', 'neg_entropy' = -H(q), 'cross_entropy', 'total'} (LSGM eq. 3).

    reconstruction = -log p(x | z_0) at z_0 ~ q; cross_entropy = -log p(z_0) (its bound: the latent
    diffusion's -ELBO with the scale's log det, `scale_log_det`); log_var: q's [B, ...].
    """
    neg_entropy = -entropy(log_var)
    return {
        "reconstruction": reconstruction,
        "neg_entropy": neg_entropy,
        "cross_entropy": cross_entropy,
        "total": reconstruction + neg_entropy + cross_entropy,
    }
