"""U-ViT, a ViT backbone for diffusion (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models").

Every input is a token: the time token (the noise-level embedding of gamma: DiT's `TimestepEmbedder`, its sinusoid
and MLP, with the same time_input), a class token when num_classes > 0 (row num_classes: the null class of
classifier-free guidance, `layers.class_labels`), and the p x p patches (a p x p conv of stride p), plus a learned
positional embedding (truncated normal, std 0.02) over [extras, patches]. With k = num_layers // 2 (num_layers
odd: U-ViT's depth = 2k + 1 blocks), k "in" blocks, one mid block and k "out" blocks, the i-th out block taking
the long skip of the (k - 1 - i)-th in block:
    x = Dense(concat[x, skip])  (out blocks only);  x = x + Attn(LN(x));  x = x + MLP(LN(x)),
pre-norm ViT blocks (no adaLN). A final LayerNorm, a linear map of each patch token to its p x p x C' pixels (the
extra tokens dropped), un-patchified to [B, H, W, C'] (C' = 2C with the variance head), then a 3x3 conv (U-ViT's
conv=True). That conv is zero-initialised, as the project's other nets' last layer: fresh, it predicts exactly 0.

Text conditioning (text_conditioning=True), the U-ViT way: the encoder's sequence [B, L, Dc] is projected to the
width, given its own learned positions (L from the input at init), and appended to the tokens; every self-attention
masks its padded keys (context_mask), so a masked position changes nothing. The pooled embedding is projected and
added to the time token.

scan_blocks=True runs the in blocks under one nn.scan, collecting their outputs as the skips ('in_blocks':
{'block': [k, ...]}), and the out blocks under another consuming them in reverse ('out_blocks'), so compile time
does not grow with depth; unrolled they are 'in_blocks_0'.., 'mid_block', 'out_blocks_0'..
(`vdm.models.convert.stack_blocks` / `unstack_blocks` map between the layouts). remat=True recomputes each block.

A Fashion-MNIST run (28x28, patch 4: 49 patch tokens + the time token; width 128, 3 + 1 + 3 blocks):
    python -m vdm.main --config=configs/fashion_mnist.py:dit --workdir=workdir/fm_uvit \\
        --config.model.name=uvit --config.model.num_layers=7
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.models import layers
from vdm.models.dit import TIME_INPUTS, Attention, TimestepEmbedder

Array = jax.Array
LN_EPS = 1e-5  # U-ViT's LayerNorm (torch's default epsilon, learned affine)
POS_STD = 0.02  # U-ViT's trunc_normal_(std=.02) of the positional embeddings


def validate_uvit(
    width: int,
    num_layers: int,
    num_heads: int,
    patch_size: int,
    mlp_ratio: float,
    time_input: str,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Raise ValueError naming the key of an invalid U-ViT architecture (or patches that do not tile image_size)."""
    layers.check_positive(width=width, num_layers=num_layers, num_heads=num_heads, patch_size=patch_size)
    if num_layers % 2 == 0:
        raise ValueError(
            f"num_layers={num_layers} must be odd (U-ViT: num_layers // 2 in blocks, one mid block, num_layers // 2 "
            "out blocks)"
        )
    if width % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide width={width}")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio={mlp_ratio!r} must be a number > 0")
    if time_input not in TIME_INPUTS:
        raise ValueError(f"time_input={time_input!r} is not valid; choose one of {', '.join(TIME_INPUTS)}")
    if image_size is not None and (image_size[0] % patch_size or image_size[1] % patch_size):
        raise ValueError(f"patch_size={patch_size} must divide the image size {image_size[0]}x{image_size[1]}")


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


class UViTBlock(nn.Module):
    """Pre-norm ViT block (U-ViT): [x = Dense(concat[x, skip])], x += Attn(LN(x)), x += MLP(LN(x)) (GELU)."""

    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0  # in the MLP, after the activation and after fc2 (timm's Mlp(drop=p)); U-ViT: 0
    dtype: Any = jnp.float32
    long_skip: bool = False  # an out block: fuse the matching in block's output first ('skip_linear')

    @nn.compact
    def __call__(self, x: Array, skip: Array | None, mask: Array | None, train: bool) -> Array:
        """x [B, T, D], skip [B, T, D] (long_skip), mask [B, T] bool over the keys (None: all) -> [B, T, D]."""
        d = x.shape[-1]
        if self.long_skip:
            x = nn.Dense(d, dtype=self.dtype, name="skip_linear")(jnp.concatenate([x, skip.astype(x.dtype)], -1))
        x = x + Attention(self.num_heads, self.dtype, name="attn")(_layer_norm("norm1", self.dtype)(x), None, mask)
        h = nn.gelu(
            nn.Dense(int(d * self.mlp_ratio), dtype=self.dtype, name="fc1")(_layer_norm("norm2", self.dtype)(x))
        )
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.Dense(d, dtype=self.dtype, name="fc2")(h))
        return x + h


def _block_cls(remat: bool) -> Any:
    """UViTBlock, recomputed whole in the backward pass when `remat` (`train`, arg 4 counting self, static)."""
    return nn.remat(UViTBlock, static_argnums=(4,)) if remat else UViTBlock


class _InStep(nn.Module):
    """One scanned in block: carry x -> (block(x), block(x)): the outputs stack into the skips."""

    block: dict
    remat: bool
    train: bool

    @nn.compact
    def __call__(self, x: Array, mask: Array | None) -> tuple[Array, Array]:
        x = _block_cls(self.remat)(**self.block, name="block")(x, None, mask, self.train)
        return x, x


class _OutStep(nn.Module):
    """One scanned out block: carry x, its skip -> (block(x, skip), None)."""

    block: dict
    remat: bool
    train: bool

    @nn.compact
    def __call__(self, x: Array, skip: Array, mask: Array | None) -> tuple[Array, None]:
        return _block_cls(self.remat)(**self.block, long_skip=True, name="block")(x, skip, mask, self.train), None


def _scan(step: type, length: int, in_axes: tuple) -> Any:
    """nn.scan of a block step over `length` layers (params and dropout keys split per layer)."""
    return nn.scan(
        step,
        variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=length,
    )


class UViT(nn.Module):
    """U-ViT denoiser: z [B, H, W, C], gamma [B], y [B] or None -> [B, H, W, C] (2C with the variance head)."""

    width: int = 512  # embedding dim D (U-ViT-S: 512, M: 768, L: 1024, H: 1152)
    num_layers: int = 13  # depth, odd: num_layers // 2 in blocks, a mid block, num_layers // 2 out (S: 13, M: 17)
    num_heads: int = 8  # attention heads (S: 8, M: 12, L: 16, H: 16)
    patch_size: int = 2  # p: tokens are p x p patches
    mlp_ratio: float = 4.0  # the MLP's hidden width / D
    dropout: float = 0.0  # in each MLP (U-ViT: none)
    fourier_features: bool = False  # concatenate VDM's Fourier features of z to its channels before the patches
    fourier_min: int = 6
    fourier_max: int = 7
    num_classes: int = 0  # 0: unconditional; else a class token with the null row num_classes
    gamma_min: float = -13.3  # time_input 'gamma': the rescaling of gamma
    gamma_max: float = 5.0
    time_input: str = "gamma"  # 'gamma' or 'ddpm_timestep' (dit.TIME_INPUTS)
    dtype: Any = jnp.float32  # compute dtype (params stay float32; the output is float32)
    scan_blocks: bool = False  # in and out blocks under nn.scan (stacked params)
    remat: bool = False  # rematerialise each block in the backward pass
    variance_head: bool = False  # C more output channels: the reverse variance's interpolation (improved DDPM)
    text_conditioning: bool = False  # `context` tokens in the sequence (keys masked), `pooled` into the time token

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
        """z [B, H, W, C], gamma [B] (or scalar), y [B] int or None; with text_conditioning the encoder's
        context [B, L, Dc], context_mask [B, L] bool (None: all valid) and pooled [B, Dp] -> [B, H, W, C or 2C]."""
        gamma = layers.check_inputs(z, gamma, 4, y)
        b, hgt, wid, channels = z.shape
        validate_uvit(
            self.width, self.num_layers, self.num_heads, self.patch_size, self.mlp_ratio, self.time_input, (hgt, wid)
        )
        layers.check_dropout(self.dropout)
        layers.check_text(self.text_conditioning, context, pooled, "U-ViT")
        p, n = self.patch_size, (hgt // self.patch_size) * (wid // self.patch_size)
        h = layers.with_fourier(z, self.fourier_features, self.fourier_min, self.fourier_max)
        h = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed")(h)
        extras = self._extra_tokens(gamma, y, pooled)  # [B, E, D]: time (+ class)
        h = jnp.concatenate([extras.astype(h.dtype), h.reshape(b, n, self.width)], axis=1)
        h = h + self._positions("pos_embed", h.shape[1])
        mask = None
        if context is not None:
            ctx, mask = self._context_tokens(context, context_mask, h.shape[1])
            h = jnp.concatenate([h, ctx.astype(h.dtype)], axis=1)
        h = _layer_norm("norm", self.dtype)(self._blocks(h, mask, train))
        e = extras.shape[1]
        out_ch = channels * (2 if self.variance_head else 1)
        h = nn.Dense(p * p * out_ch, dtype=self.dtype, name="decoder_pred")(h[:, e : e + n])  # [B, N, p p C']
        h = h.reshape(b, hgt // p, wid // p, p, p, out_ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, hgt, wid, out_ch)
        zero = nn.initializers.zeros  # U-ViT's conv=True 3x3 conv, zero-initialised here (a fresh net predicts 0)
        h = nn.Conv(out_ch, (3, 3), padding="SAME", kernel_init=zero, dtype=self.dtype, name="final_conv")(h)
        return h.astype(jnp.float32)

    def _positions(self, name: str, length: int) -> Array:
        """A learned positional embedding [1, length, D] (truncated normal, std 0.02), in the compute dtype."""
        pos = self.param(name, nn.initializers.truncated_normal(POS_STD), (1, length, self.width), jnp.float32)
        return pos.astype(self.dtype)

    def _extra_tokens(self, gamma: Array, y: Array | None, pooled: Array | None) -> Array:
        """[time token (+ projected pooled text), class token (num_classes > 0)]: [B, 1 or 2, D]."""
        t = TimestepEmbedder(self.width, self.time_input, self.gamma_min, self.gamma_max, self.dtype, name="time_embed")
        tokens = [t(gamma)]
        if pooled is not None:
            tokens[0] = tokens[0] + nn.Dense(self.width, dtype=self.dtype, name="pooled_proj")(pooled)
        y = layers.class_labels(y, self.num_classes, gamma.shape)
        if y is not None:
            tokens.append(nn.Embed(self.num_classes + 1, self.width, dtype=self.dtype, name="label_embed")(y))
        return jnp.stack(tokens, axis=1)

    def _context_tokens(self, context: Array, context_mask: Array | None, before: int) -> tuple[Array, Array]:
        """The text tokens Dense(context) + their positions [B, L, D], and the keys' mask [B, before + L]."""
        if context.ndim != 3 or (context_mask is not None and jnp.shape(context_mask) != context.shape[:2]):
            raise ValueError(
                f"context must be [B, L, Dc] with context_mask [B, L], got {context.shape} and "
                f"{None if context_mask is None else jnp.shape(context_mask)}"
            )
        b, length = context.shape[:2]
        ctx = nn.Dense(self.width, dtype=self.dtype, name="context_embed")(context)
        ctx = ctx + self._positions("context_pos", length)
        valid = jnp.ones((b, length), bool) if context_mask is None else jnp.asarray(context_mask, bool)
        return ctx, jnp.concatenate([jnp.ones((b, before), bool), valid], axis=1)

    def _blocks(self, h: Array, mask: Array | None, train: bool) -> Array:
        """k in blocks (their outputs the skips), the mid block, k out blocks taking the skips last-in first-out."""
        block = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dropout=self.dropout, dtype=self.dtype)
        k, cls = self.num_layers // 2, _block_cls(self.remat)
        if self.scan_blocks and k:
            h, skips = _scan(_InStep, k, (nn.broadcast,))(block, self.remat, train, name="in_blocks")(h, mask)
            h = cls(**block, name="mid_block")(h, None, mask, train)
            out = _scan(_OutStep, k, (0, nn.broadcast))(block, self.remat, train, name="out_blocks")
            return out(h, skips[::-1], mask)[0]
        skips = []
        for i in range(k):
            h = cls(**block, name=f"in_blocks_{i}")(h, None, mask, train)
            skips.append(h)
        h = cls(**block, name="mid_block")(h, None, mask, train)
        for i in range(k):
            h = cls(**block, long_skip=True, name=f"out_blocks_{i}")(h, skips.pop(), mask, train)
        return h
