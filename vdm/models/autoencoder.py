"""The convolutional autoencoder of latent diffusion: q(z_0 | x) a diagonal Gaussian, p(x | z_0) an 8-bit decoder.

Encoder: a conv stem, per level `num_blocks` residual blocks then a strided conv halving H and W
(log2 of `downsample` levels), a last block, and a zero-initialised conv to 2 C_z channels, the
mean and log-variance of q(z_0 | x) (at init q = N(0, I), the prior). Decoder: the mirror image,
nearest-neighbour upsampling, ending in vdm.core.latent.decoder_channels(decoder, C) output channels
(256 logits per pixel, or the mean and log scale of a (binned) Gaussian). Images [B, H, W, C]
(NHWC), latents [B, H/f, W/f, C_z]. Called as `module.apply(v, x, method='encode')`, `...
method='decode')`, or `module.apply(v, x)` for both (what init uses).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.core.latent import decoder_channels
from vdm.models import layers

Array = jax.Array


class Block(nn.Module):
    """GN-swish-conv, GN-swish-conv (zero init), + skip: a residual block without conditioning."""

    out_ch: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [B, H, W, C_in] -> [B, H, W, out_ch]."""
        h = nn.Conv(self.out_ch, (3, 3), name="conv0")(nn.swish(layers.group_norm(x.shape[-1], "norm0")(x)))
        h = nn.swish(layers.group_norm(self.out_ch, "norm1")(h))
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, name="conv1")(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), name="skip")(x)
        return x + h


class Autoencoder(nn.Module):
    """encode: x [B, H, W, C] -> (mean, log_var) [B, H/f, W/f, latent_channels]; decode: z_0 -> decoder output [B, H, W, k C]."""

    channels: int  # C of the images
    latent_channels: int = 4
    downsample: int = 4  # f, a power of 2
    width: int = 32
    num_blocks: int = 1
    decoder: str = "discretized_gaussian"  # vdm.core.latent.DECODERS

    def setup(self):
        """The encoder's and decoder's layers, log2(downsample) levels each."""
        levels = int(round(math.log2(self.downsample)))
        if 2**levels != self.downsample or levels < 0:
            raise ValueError(f"downsample must be a power of 2 (1, 2, 4, ...), got {self.downsample}")
        layers.check_positive(latent_channels=self.latent_channels, width=self.width, num_blocks=self.num_blocks)
        w = self.width
        self.enc_in = nn.Conv(w, (3, 3), name="enc_in")
        self.enc_blocks = [[Block(w, name=f"enc_{i}_{j}") for j in range(self.num_blocks)] for i in range(levels)]
        self.enc_down = [nn.Conv(w, (3, 3), strides=(2, 2), name=f"enc_down_{i}") for i in range(levels)]
        self.enc_mid = Block(w, name="enc_mid")
        self.enc_norm = layers.group_norm(w, "enc_norm")
        self.enc_out = nn.Conv(2 * self.latent_channels, (3, 3), kernel_init=nn.initializers.zeros, name="enc_out")
        self.dec_in = nn.Conv(w, (3, 3), name="dec_in")
        self.dec_mid = Block(w, name="dec_mid")
        self.dec_up = [nn.Conv(w, (3, 3), name=f"dec_up_{i}") for i in range(levels)]
        self.dec_blocks = [[Block(w, name=f"dec_{i}_{j}") for j in range(self.num_blocks)] for i in range(levels)]
        self.dec_norm = layers.group_norm(w, "dec_norm")
        self.dec_out = nn.Conv(
            decoder_channels(self.decoder, self.channels), (3, 3), kernel_init=nn.initializers.zeros, name="dec_out"
        )

    def encode(self, x: Array) -> tuple[Array, Array]:
        """(mean, log_var) of q(z_0 | x), each [B, H/f, W/f, latent_channels]."""
        h = self.enc_in(x)
        for blocks, down in zip(self.enc_blocks, self.enc_down):
            for block in blocks:
                h = block(h)
            h = down(h)
        h = self.enc_out(nn.swish(self.enc_norm(self.enc_mid(h))))
        mean, log_var = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, log_var

    def decode(self, z: Array) -> Array:
        """The decoder's output for z_0 [B, h, w, latent_channels]: [B, h f, w f, decoder_channels] (vdm.core.latent.decoder_log_prob)."""
        h = self.dec_mid(self.dec_in(z))
        for up, blocks in zip(self.dec_up, self.dec_blocks):
            b, hgt, wid, c = h.shape
            h = up(jax.image.resize(h, (b, 2 * hgt, 2 * wid, c), method="nearest"))
            for block in blocks:
                h = block(h)
        return self.dec_out(nn.swish(self.dec_norm(h))).astype(jnp.float32)

    def __call__(self, x: Array) -> Array:
        """decode(mean of encode(x)): touches every parameter (for init)."""
        return self.decode(self.encode(x)[0])


def autoencoder_from_config(model_config, channels: int) -> Autoencoder:
    """The Autoencoder of an autoencoder config's model section (configs/fashion_mnist_ae.py) for C = channels."""
    m = model_config
    return Autoencoder(
        channels=channels,
        latent_channels=int(m.latent_channels),
        downsample=int(m.downsample),
        width=int(m.width),
        num_blocks=int(m.num_blocks),
        decoder=str(m.decoder),
    )


def latent_shape(model_config, image_shape) -> tuple[int, int, int]:
    """[H/f, W/f, C_z] of the autoencoder of `model_config` (f = downsample, C_z = latent_channels) on [H, W, C] images."""
    f = model_config.downsample
    return image_shape[0] // f, image_shape[1] // f, int(model_config.latent_channels)
