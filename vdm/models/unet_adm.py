"""A multi-resolution DDPM/ADM-style UNet (Ho et al. 2020; Dhariwal & Nichol 2021).

Level l works at resolution H / 2^l with width * channel_mult[l] channels and
num_res_blocks ResNet blocks; self-attention follows every ResNet block whose
spatial size is in `attention_resolutions`. The decoder mirrors the encoder
with num_res_blocks + 1 blocks per level, each concatenating one skip.
Conditioning: rescaled gamma -> embedding, plus an optional class embedding
with a NULL class (index num_classes) for classifier-free guidance.
The output conv is zero-initialised, so a fresh model predicts exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.models import layers

Array = jax.Array


def level_sizes(height: int, width: int, num_levels: int) -> tuple[int, ...]:
    """Spatial size (H) of each level: H / 2^l, l = 0..num_levels-1; raise if H, W do not halve evenly."""
    factor = 2 ** (num_levels - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"image size {height}x{width} must be divisible by 2^(levels-1) = "
            f"{factor} for {num_levels} resolution levels (len(channel_mult))"
        )
    return tuple(height // 2**l for l in range(num_levels))


def validate_adm(
    channel_mult: Sequence[int], num_res_blocks: int, attention_resolutions: Sequence[int], height: int, width: int
) -> tuple[int, ...]:
    """Check the architecture against an input size; return the level sizes."""
    if len(channel_mult) == 0:
        raise ValueError("channel_mult must be a non-empty tuple of positive ints")
    for m in channel_mult:
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"channel_mult entries must be positive ints, got {tuple(channel_mult)}")
    layers.check_positive(num_res_blocks=num_res_blocks)
    sizes = level_sizes(height, width, len(channel_mult))
    bad = [r for r in attention_resolutions if r not in sizes]
    if bad:
        raise ValueError(
            f"attention_resolutions {tuple(attention_resolutions)} contains "
            f"{tuple(bad)}, which no level has; valid sizes for a {height}x{width} "
            f"input with {len(channel_mult)} levels are {sizes}"
        )
    return sizes


class ADMUNet(nn.Module):
    """Multi-resolution UNet: [B, H, W, C], gamma [B], y [B] or None -> [B, H, W, C]."""

    width: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 4
    dropout: float = 0.1
    fourier_features: bool = False
    fourier_min: int = 6
    fourier_max: int = 7
    num_classes: int = 0
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    dtype: Any = jnp.float32  # compute dtype (bfloat16: params stay float32; z and its Fourier features float32)
    variance_head: bool = False  # C more output channels: the reverse variance's interpolation (improved DDPM)

    @nn.compact
    def __call__(self, z: Array, gamma: Array, y: Array | None = None, train: bool = False) -> Array:
        """z: [B, H, W, C], gamma: [B] (or scalar), y: [B] int or None -> [B, H, W, C] (2C with the variance head)."""
        layers.check_positive(width=self.width)
        layers.check_dropout(self.dropout)
        gamma = layers.check_inputs(z, gamma, 4, y)
        sizes = validate_adm(self.channel_mult, self.num_res_blocks, self.attention_resolutions, z.shape[1], z.shape[2])
        attn_at = set(self.attention_resolutions)
        cond = layers.NoiseEmbedding(
            self.width, 4 * self.width, self.gamma_min, self.gamma_max, self.num_classes, self.dtype, name="embed"
        )(gamma, y)

        def block(h: Array, ch: int, name: str) -> Array:
            h = layers.ResnetBlock(ch, self.dropout, self.dtype, name=name)(h, cond, train)
            if h.shape[1] in attn_at:
                h = layers.AttnBlock(self.num_heads, self.dtype, name=name + "_attn")(h)
            return h

        h = layers.with_fourier(z, self.fourier_features, self.fourier_min, self.fourier_max)
        h = nn.Conv(self.width, (3, 3), dtype=self.dtype, name="conv_in")(h)
        skips = [h]
        last = len(self.channel_mult) - 1
        for lvl, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                h = block(h, self.width * mult, f"down_{lvl}_{i}")
                skips.append(h)
            if lvl != last:
                h = layers.Downsample(self.dtype, name=f"downsample_{lvl}")(h)
                skips.append(h)
        assert h.shape[1] == sizes[-1]

        h = layers.ResnetBlock(h.shape[-1], self.dropout, self.dtype, name="mid_0")(h, cond, train)
        h = layers.AttnBlock(self.num_heads, self.dtype, name="mid_attn")(h)
        h = layers.ResnetBlock(h.shape[-1], self.dropout, self.dtype, name="mid_1")(h, cond, train)

        for lvl in reversed(range(len(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = block(h, self.width * self.channel_mult[lvl], f"up_{lvl}_{i}")
            if lvl != 0:
                h = layers.Upsample(self.dtype, name=f"upsample_{lvl}")(h)
        assert not skips
        return layers.output_head(h, z.shape[-1] * (2 if self.variance_head else 1), self.dtype)
