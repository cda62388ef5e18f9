"""A multi-resolution DDPM/ADM-style UNet (Ho et al. 2020; Dhariwal & Nichol 2021).

Level l works at resolution H / 2^l with width * channel_mult[l] channels and
num_res_blocks ResNet blocks; self-attention follows every ResNet block whose
spatial size is in `attention_resolutions`. The decoder mirrors the encoder
with num_res_blocks + 1 blocks per level, each concatenating one skip.
Conditioning: rescaled gamma -> embedding, plus an optional class embedding
with a NULL class (index num_classes) for classifier-free guidance.
Text conditioning (text_conditioning=True, Imagen, Saharia et al. 2022): the pooled text embedding, projected
(zero-initialised), is added to the noise-level embedding, and a cross-attention block to the encoder's sequence
(keys masked, zero-initialised output: layers.CrossAttention) follows the self-attention site at every size in
`cross_attention_resolutions` (None: the attention_resolutions; the middle counts as the lowest level's size).
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
    channel_mult: Sequence[int],
    num_res_blocks: int,
    attention_resolutions: Sequence[int],
    height: int,
    width: int,
    cross_attention_resolutions: Sequence[int] = (),
) -> tuple[int, ...]:
    """Check the architecture against an input size; return the level sizes."""
    if len(channel_mult) == 0:
        raise ValueError("channel_mult must be a non-empty tuple of positive ints")
    for m in channel_mult:
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"channel_mult entries must be positive ints, got {tuple(channel_mult)}")
    layers.check_positive(num_res_blocks=num_res_blocks)
    sizes = level_sizes(height, width, len(channel_mult))
    for key, given in (
        ("attention_resolutions", attention_resolutions),
        ("cross_attention_resolutions", cross_attention_resolutions),
    ):
        bad = [r for r in given if r not in sizes]
        if bad:
            raise ValueError(
                f"{key} {tuple(given)} contains "
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
    text_conditioning: bool = False  # pooled text into the embedding, cross-attention to `context` (module docstring)
    cross_attention_resolutions: tuple[int, ...] | None = (
        None  # sizes with cross-attention; None: attention_resolutions
    )

    @property
    def cross_at(self) -> tuple[int, ...]:
        """The sizes whose attention sites cross-attend to the text (none without text conditioning)."""
        if not self.text_conditioning:
            return ()
        given = self.cross_attention_resolutions
        return tuple(self.attention_resolutions if given is None else given)

    @nn.compact
    def __call__(
        self,
        z: Array,
        gamma: Array,
        y: Array | None = None,
        train: bool = False,
        context: Array | None = None,
        context_mask: Array | None = None,
        pooled: Array | None = None,
    ) -> Array:
        """z: [B, H, W, C], gamma: [B] (or scalar), y: [B] int or None; with text_conditioning the encoder's context
        [B, L, Dc], context_mask [B, L] bool (None: all valid) and pooled [B, Dp] -> [B, H, W, C] (2C: variance head)."""
        layers.check_positive(width=self.width)
        layers.check_dropout(self.dropout)
        gamma = layers.check_inputs(z, gamma, 4, y)
        layers.check_text(self.text_conditioning, context, pooled, "adm_unet")
        sizes = validate_adm(
            self.channel_mult, self.num_res_blocks, self.attention_resolutions, *z.shape[1:3], self.cross_at
        )
        attn_at, cross_at = set(self.attention_resolutions), set(self.cross_at)
        cond = layers.NoiseEmbedding(
            self.width, 4 * self.width, self.gamma_min, self.gamma_max, self.num_classes, self.dtype, name="embed"
        )(gamma, y)
        if pooled is not None:  # Imagen: the pooled text embedding joins the noise-level embedding
            proj = nn.Dense(4 * self.width, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="pooled_proj")
            cond = cond + proj(pooled.astype(self.dtype))

        def cross(h: Array, name: str) -> Array:
            return layers.CrossAttention(self.num_heads, self.dtype, name=name)(h, context, context_mask)

        def block(h: Array, ch: int, name: str) -> Array:
            h = layers.ResnetBlock(ch, self.dropout, self.dtype, name=name)(h, cond, train)
            if h.shape[1] in attn_at:
                h = layers.AttnBlock(self.num_heads, self.dtype, name=name + "_attn")(h)
            if h.shape[1] in cross_at:
                h = cross(h, name + "_cross")
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
        if sizes[-1] in cross_at:
            h = cross(h, "mid_cross")
        h = layers.ResnetBlock(h.shape[-1], self.dropout, self.dtype, name="mid_1")(h, cond, train)

        for lvl in reversed(range(len(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = block(h, self.width * self.channel_mult[lvl], f"up_{lvl}_{i}")
            if lvl != 0:
                h = layers.Upsample(self.dtype, name=f"upsample_{lvl}")(h)
        assert not skips
        return layers.output_head(h, z.shape[-1] * (2 if self.variance_head else 1), self.dtype)
