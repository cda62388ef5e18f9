"""A small residual MLP denoiser for flat toy data x: [B, D] (2-D mixtures, Gaussians).

Input Dense on [z, Fourier features of z (optional)], num_layers pre-norm
residual blocks each adding the gamma (+ label) embedding, then LayerNorm,
swish and a zero-initialised Dense back to D, so a fresh model predicts 0.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.models import layers

Array = jax.Array


class MLPBlock(nn.Module):
    """h + Dense(Dropout(swish(Dense(swish(LN(h))) + Dense(cond)))) (pre-norm residual)."""

    width: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, cond: Array, train: bool) -> Array:
        """h: [B, width], cond: [B, E] -> [B, width]."""
        x = nn.swish(nn.LayerNorm(dtype=self.dtype, name="norm")(h))
        x = nn.Dense(self.width, dtype=self.dtype, name="dense0")(x)
        x = x + nn.Dense(self.width, dtype=self.dtype, name="cond_proj")(nn.swish(cond))
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(x))
        return h + nn.Dense(self.width, dtype=self.dtype, name="dense1")(x)


class MLPDenoiser(nn.Module):
    """Residual MLP: z [B, D], gamma [B], y [B] or None -> [B, D] prediction."""

    width: int = 256
    num_layers: int = 4
    dropout: float = 0.0
    fourier_features: bool = False
    fourier_min: int = 6
    fourier_max: int = 7
    num_classes: int = 0
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    dtype: Any = jnp.float32  # compute dtype (bfloat16: params stay float32; z and its Fourier features float32)
    variance_head: bool = False  # D more outputs: the reverse variance's interpolation (improved DDPM)

    @nn.compact
    def __call__(self, z: Array, gamma: Array, y: Array | None = None, train: bool = False) -> Array:
        """z: [B, D], gamma: [B] (or scalar), y: [B] int or None -> [B, D] ([B, 2D] with the variance head)."""
        layers.check_positive(width=self.width, num_layers=self.num_layers)
        layers.check_dropout(self.dropout)
        gamma = layers.check_inputs(z, gamma, 2, y)
        cond = layers.NoiseEmbedding(
            self.width, self.width, self.gamma_min, self.gamma_max, self.num_classes, self.dtype, name="embed"
        )(gamma, y)
        h = layers.with_fourier(z, self.fourier_features, self.fourier_min, self.fourier_max)
        h = nn.Dense(self.width, dtype=self.dtype, name="dense_in")(h)
        for i in range(self.num_layers):
            h = MLPBlock(self.width, self.dropout, self.dtype, name=f"block_{i}")(h, cond, train)
        h = nn.swish(nn.LayerNorm(dtype=self.dtype, name="norm_out")(h))
        out = z.shape[-1] * (2 if self.variance_head else 1)
        return nn.Dense(out, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="dense_out")(h).astype(
            jnp.float32
        )
