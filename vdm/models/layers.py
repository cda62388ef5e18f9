"""Shared building blocks of the denoising networks.

All networks condition on the noise level through the rescaled log-SNR
t_in = (gamma - gamma_min) / (gamma_max - gamma_min), which lies in [0, 1] on
the schedule's range (VDM, Kingma et al. 2021, appendix B), never on the raw
time t: the network then depends on the schedule only through gamma, which is
what makes the continuous-time loss invariant to the schedule between its
endpoints (see `vdm/models/schedule.py`).

Shapes: images are [B, H, W, C] (NHWC), flat data [B, D], gamma [B].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Array = jax.Array

MAX_GROUPS = 32


def rescale_gamma(gamma: Array, gamma_min: float, gamma_max: float) -> Array:
    """t_in = (gamma - gamma_min) / (gamma_max - gamma_min) (VDM appendix B)."""
    if not gamma_max > gamma_min:
        raise ValueError(f"need gamma_max > gamma_min, got gamma_min={gamma_min}, gamma_max={gamma_max}")
    return (gamma - gamma_min) / (gamma_max - gamma_min)


EMBEDDING_FREQS = ("half", "half_minus_one")


def timestep_embedding(
    t: Array, dim: int, scale: float = 1000.0, max_period: float = 10000.0, freqs: str = "half"
) -> Array:
    """Sinusoidal embedding [sin(s t w_k), cos(s t w_k)], w_k = P^(-k/n), k < half = dim/2 (Vaswani 2017; DDPM).

    t: [B] -> [B, dim]. `scale` maps t in [0, 1] to the DDPM step range.
    freqs: 'half' n = half (w spans P^0..P^(-1+1/half)); 'half_minus_one' n = half - 1
    (tensor2tensor/fairseq, google-research/vdm: w spans exactly P^0..P^-1).
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"embedding dim must be an even integer >= 2, got {dim}")
    if freqs not in EMBEDDING_FREQS:
        raise ValueError(f"unknown embedding freqs {freqs!r}; valid: {', '.join(EMBEDDING_FREQS)}")
    half = dim // 2
    denom = half if freqs == "half" else half - 1
    if denom < 1:
        raise ValueError(f"embedding freqs 'half_minus_one' need dim >= 4, got {dim}")
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / denom)
    args = scale * t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def fourier_features(z: Array, n_min: int, n_max: int) -> Array:
    """Base-2 Fourier features sin(2^n 2 pi z), cos(2^n 2 pi z), n = n_min..n_max (VDM app. B).

    The frequencies 2^n * 2 pi are those of google-research/vdm (n = 6, 7 there):
    period 2^-n, so n = 7 resolves the 8-bit grid spacing 2/255 ~ 2^-7.
    z: [..., C] -> [..., 2 * C * (n_max - n_min + 1)], channel-last.
    """
    if n_max < n_min:
        raise ValueError(f"need fourier_min <= fourier_max, got {n_min} > {n_max}")
    freqs = (2.0 ** jnp.arange(n_min, n_max + 1, dtype=jnp.float32)) * 2 * jnp.pi
    arg = z[..., None] * freqs  # [..., C, n]
    arg = arg.reshape(*z.shape[:-1], -1)  # [..., C * n]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def num_groups_for(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """Largest divisor g of `channels` with g <= max_groups and >= 2 channels per group.

    GroupNorm needs g to divide the channels. One channel per group would
    normalise away the per-channel shift by which the noise/label embedding
    enters a ResNet block, so the embedding would have no effect.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    for g in range(min(max_groups, channels // 2), 0, -1):
        if channels % g == 0:
            return g
    return 1


def group_norm(channels: int, name: str | None = None, dtype: Any = jnp.float32, groups: int = 0) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018), epsilon 1e-6; groups 0: adapted to `channels` (num_groups_for), else fixed."""
    if groups < 0:
        raise ValueError(f"norm groups must be >= 0 (0: adaptive), got {groups}")
    if groups and channels % groups:
        raise ValueError(f"norm_groups={groups} must divide the channel count {channels}")
    return nn.GroupNorm(num_groups=groups or num_groups_for(channels), name=name, dtype=dtype)


def check_inputs(z: Array, gamma: Array, ndim: int, y: Array | None = None) -> Array:
    """Validate z [B, ...] (z.ndim == ndim), gamma [B] or scalar, y [B]; return gamma as [B]."""
    if z.ndim != ndim:
        kind = "[B, H, W, C]" if ndim == 4 else "[B, D]"
        raise ValueError(f"z must be {kind} (ndim {ndim}), got shape {z.shape}")
    batch = z.shape[0]
    gamma = jnp.asarray(gamma, dtype=jnp.float32)
    if gamma.ndim == 0:
        gamma = jnp.broadcast_to(gamma, (batch,))
    if gamma.shape != (batch,):
        raise ValueError(f"gamma must be a scalar or [B]=[{batch}], got shape {gamma.shape}")
    if y is not None and jnp.shape(y) != (batch,):
        raise ValueError(f"y must be [B]=[{batch}] ints, got shape {jnp.shape(y)}")
    return gamma


class NoiseEmbedding(nn.Module):
    """Rescaled gamma -> sinusoidal embedding -> 2-layer MLP (+ label embedding).

    Class labels use an embedding with num_classes + 1 rows; row num_classes is
    the NULL class of classifier-free guidance (Ho & Salimans 2022), used when
    y is None. Returns [B, out_dim].
    """

    width: int
    out_dim: int
    gamma_min: float
    gamma_max: float
    num_classes: int = 0
    dtype: Any = jnp.float32  # compute dtype; the sinusoids are computed in float32 first
    embedding_freqs: str = "half"  # see timestep_embedding

    @nn.compact
    def __call__(self, gamma: Array, y: Array | None = None) -> Array:
        t_in = rescale_gamma(gamma, self.gamma_min, self.gamma_max)
        emb = timestep_embedding(t_in, self.width, freqs=self.embedding_freqs)
        emb = nn.Dense(self.out_dim, dtype=self.dtype, name="dense0")(emb)
        emb = nn.Dense(self.out_dim, dtype=self.dtype, name="dense1")(nn.swish(emb))
        y = class_labels(y, self.num_classes, gamma.shape)
        if y is not None:
            emb = emb + nn.Embed(self.num_classes + 1, self.out_dim, dtype=self.dtype, name="label_embedding")(y)
        return emb


def class_labels(y: Array | None, num_classes: int, shape: tuple[int, ...]) -> Array | None:
    """Integer labels of a conditional net (None: the null class `num_classes`, for guidance); None if unconditional."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if num_classes == 0:
        if y is not None:
            raise ValueError(
                "got labels y but the model has num_classes=0 (unconditional); pass y=None or set num_classes > 0"
            )
        return None
    y = jnp.full(shape, num_classes, dtype=jnp.int32) if y is None else y
    if not jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer):
        raise ValueError(f"y must be integer labels, got dtype {jnp.asarray(y).dtype}")
    return y


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_nhwc(x: Array, w: Array, padding: Sequence[tuple[int, int]]) -> Array:
    """Stride-1 2-D convolution, x [B, H, W, Cin], w [kh, kw, Cin, Cout] (cross-correlation, as lax)."""
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_canonical_grads(x: Array, w: Array, padding: tuple) -> Array:
    return _conv_nhwc(x, w, padding)


def _conv_fwd(x, w, padding):
    return _conv_nhwc(x, w, padding), (x, w)


def _conv_bwd(padding, res, g):
    """dx = g (*) flip(w)^T with padding k - 1 - p; dw[a, b, i, o] = sum_{n,h,w} x_pad[n, h + a, w + b, i] g[n, h, w, o]."""
    x, w = res
    (lo_h, hi_h), (lo_w, hi_w) = padding
    kh, kw = w.shape[:2]
    dx = _conv_nhwc(
        g, jnp.flip(w, (0, 1)).swapaxes(2, 3), ((kh - 1 - lo_h, kh - 1 - hi_h), (kw - 1 - lo_w, kw - 1 - hi_w))
    )
    dw = _conv_nhwc(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), padding).transpose(1, 2, 0, 3)
    return dx, dw.astype(w.dtype)


_conv_canonical_grads.defvjp(_conv_fwd, _conv_bwd)


def loop_friendly_conv(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kw: Any,
) -> Array:
    """lax.conv_general_dilated for nn.Conv, whose gradient on CPU is two NHWC/HWIO convolutions (a custom VJP).

    Inside a scan (config.model.scan_blocks) XLA:CPU emits autodiff's transposed convolutions with
    non-canonical dimension orders through a slow generic loop (~30x slower than the same convs
    unrolled); the explicit transposes here keep them on the fast path. Same function and gradient
    (to float rounding). Other backends, strides, dilations or groups: lax's own.
    """
    simple = (
        tuple(window_strides) == (1, 1)
        and lhs.ndim == 4
        and feature_group_count == 1
        and all(d in (None, 1) or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
        and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
        and not kw
        and jax.default_backend() == "cpu"
    )
    if not simple:
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision=precision,
            **kw,
        )
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    return _conv_canonical_grads(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding))


class ResnetBlock(nn.Module):
    """GN-swish-conv, + Dense(swish(cond)), GN-swish-dropout-conv(zero init), + skip (DDPM/VDM)."""

    out_ch: int
    dropout: float = 0.0
    dtype: Any = jnp.float32
    norm_groups: int = 0  # GroupNorm groups; 0: adaptive (num_groups_for)
    cond_proj_bias: bool = True  # google-research/vdm: False
    cond_proj_zero_init: bool = False  # google-research/vdm: True (zero kernel)
    loop_conv: bool = False  # convolutions through loop_friendly_conv (blocks under nn.scan)

    @nn.compact
    def __call__(self, x: Array, cond: Array, train: bool) -> Array:
        """x: [B, H, W, C_in], cond: [B, E] -> [B, H, W, out_ch]."""
        conv = functools.partial(
            nn.Conv, dtype=self.dtype, **({"conv_general_dilated": loop_friendly_conv} if self.loop_conv else {})
        )
        h = nn.swish(group_norm(x.shape[-1], "norm0", self.dtype, self.norm_groups)(x))
        h = conv(self.out_ch, (3, 3), name="conv0")(h)
        proj_kw = {"kernel_init": nn.initializers.zeros} if self.cond_proj_zero_init else {}
        h = (
            h
            + nn.Dense(self.out_ch, use_bias=self.cond_proj_bias, dtype=self.dtype, name="cond_proj", **proj_kw)(
                nn.swish(cond)
            )[:, None, None, :]
        )
        h = checkpoint_name(h, "resnet_conv0")  # names the VDM UNet's remat policy keeps (no-op elsewhere)
        h = nn.swish(group_norm(self.out_ch, "norm1", self.dtype, self.norm_groups)(h))
        h = checkpoint_name(nn.Dropout(self.dropout, deterministic=not train)(h), "resnet_dropout")
        h = conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, name="conv1")(h)
        if x.shape[-1] != self.out_ch:
            x = conv(self.out_ch, (1, 1), name="skip")(x)
        return x.astype(self.dtype) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H x W positions of [B, H, W, C] (Vaswani et al. 2017), zero-init output.

    Parameters as flax's MultiHeadDotProductAttention names them (query/key/value [C, heads, C/heads],
    out [heads, C/heads, C]), so checkpoints and converted weights are unchanged; computed as two
    dot_generals contracting each operand's minor axis, with positions kept as the two axes (H, W):
    the same function, and on CPU its backward pass is about 1.5x faster than flax's einsums.
    """

    num_heads: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        c = x.shape[-1]
        head = c // self.num_heads
        dense = functools.partial(nn.DenseGeneral, features=(self.num_heads, head), dtype=self.dtype)
        # [B, H, W, heads, d] -> queries and keys [B, heads, H, W, d], values [B, heads, d, H, W]
        q = jnp.transpose(dense(name="query")(x), (0, 3, 1, 2, 4)) / jnp.sqrt(head).astype(self.dtype)
        k = jnp.transpose(dense(name="key")(x), (0, 3, 1, 2, 4))
        v = jnp.transpose(dense(name="value")(x), (0, 3, 4, 1, 2))
        logits = jax.lax.dot_general(q, k, (((4,), (4,)), ((0, 1), (0, 1))))  # [B, heads, H, W, H, W]
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=(4, 5)).astype(self.dtype)
        out = jax.lax.dot_general(weights, v, (((4, 5), (3, 4)), ((0, 1), (0, 1))))  # [B, heads, H, W, d]
        out = jnp.transpose(out, (0, 2, 3, 1, 4))  # [B, H, W, heads, d]
        return nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros, dtype=self.dtype, name="out")(out)


class AttnBlock(nn.Module):
    """Residual multi-head self-attention over all H*W positions (zero-init output)."""

    num_heads: int = 1
    dtype: Any = jnp.float32
    norm_groups: int = 0  # GroupNorm groups; 0: adaptive (num_groups_for)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        c = x.shape[-1]
        if self.num_heads < 1 or c % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be >= 1 and divide the channel count {c} at the attention layer"
            )
        h = group_norm(c, "norm", self.dtype, self.norm_groups)(x)
        return x + SelfAttention(self.num_heads, self.dtype, name="attn")(h)


class CrossAttention(nn.Module):
    """Residual attention of the H x W positions of x to a token sequence, keys masked (Imagen; Saharia et al. 2022):

        x + W_o softmax(q k^T / sqrt(d_head) over the valid tokens) v,  q = W_q GN(x), k = W_k c, v = W_v c,

    c [B, L, Dc] the text encoder's sequence, mask [B, L] bool (True: a token). W_o is zero-initialised, so a fresh
    block is the identity; a padded token gets weight exactly 0 (its features cannot change the output), and a row
    with no valid token (the empty prompt, classifier-free guidance's null) adds exactly 0.
    """

    num_heads: int = 1
    dtype: Any = jnp.float32
    norm_groups: int = 0  # GroupNorm groups; 0: adaptive (num_groups_for)

    @nn.compact
    def __call__(self, x: Array, context: Array, mask: Array | None = None) -> Array:
        """x: [B, H, W, C], context: [B, L, Dc], mask: [B, L] bool or None (all valid) -> [B, H, W, C]."""
        b, hgt, wid, c = x.shape
        if self.num_heads < 1 or c % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must be >= 1 and divide the channel count {c}")
        if context.ndim != 3 or context.shape[0] != b:
            raise ValueError(f"context must be [B={b}, L, Dc], got shape {context.shape}")
        mask = jnp.ones(context.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
        head = c // self.num_heads
        dense = functools.partial(nn.DenseGeneral, features=(self.num_heads, head), dtype=self.dtype)
        h = group_norm(c, "norm", self.dtype, self.norm_groups)(x).reshape(b, hgt * wid, c)
        q = dense(name="query")(h) / jnp.sqrt(head).astype(self.dtype)  # [B, N, heads, d]
        k = dense(name="key")(context.astype(self.dtype))  # [B, L, heads, d]
        v = dense(name="value")(context.astype(self.dtype))
        logits = jnp.einsum("bnhd,blhd->bhnl", q, k).astype(jnp.float32)
        valid = mask[:, None, None, :]
        weights = jax.nn.softmax(jnp.where(valid, logits, -1e30), axis=-1) * valid  # exactly 0 on padding
        out = jnp.einsum("bhnl,blhd->bnhd", weights.astype(self.dtype), v)
        out = nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros, dtype=self.dtype, name="out")(out)
        out = out * jnp.any(mask, axis=1).astype(out.dtype)[:, None, None]  # no token: no change
        return x + out.reshape(b, hgt, wid, c)


def check_text(enabled: bool, context: Array | None, pooled: Array | None, net: str) -> None:
    """Raise ValueError unless `context` and `pooled` are both given exactly when the net is text-conditioned."""
    if enabled != (context is not None) or enabled != (pooled is not None):
        raise ValueError(
            f"text conditioning needs both `context` and `pooled`, and only a {net} with text_conditioning=True "
            f"takes them (text_conditioning={enabled})"
        )


class Downsample(nn.Module):
    """Strided 3x3 conv halving H and W (DDPM)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 resize, then 3x3 conv (DDPM)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        x = jax.image.resize(x, (b, 2 * hgt, 2 * wid, c), method="nearest")
        return nn.Conv(c, (3, 3), dtype=self.dtype, name="conv")(x)


def output_head(h: Array, out_ch: int, dtype: Any = jnp.float32, norm_groups: int = 0) -> Array:
    """Final GroupNorm, swish and zero-initialised 3x3 conv (output is 0 at init), returned in float32."""
    h = nn.swish(group_norm(h.shape[-1], "norm_out", dtype, norm_groups)(h))
    return nn.Conv(out_ch, (3, 3), kernel_init=nn.initializers.zeros, dtype=dtype, name="conv_out")(h).astype(
        jnp.float32
    )


def with_fourier(z: Array, use: bool, n_min: int, n_max: int) -> Array:
    """Concatenate base-2 Fourier features of z to its channels when `use`."""
    if not use:
        return z
    return jnp.concatenate([z, fourier_features(z, n_min, n_max)], axis=-1)


def check_positive(**kw: int) -> None:
    """Raise ValueError naming any argument that is not a positive int."""
    for k, v in kw.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


def check_dropout(rate: float) -> None:
    """Raise ValueError unless 0 <= rate < 1."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {rate}")


__all__: Sequence[str] = (
    "EMBEDDING_FREQS",
    "rescale_gamma",
    "timestep_embedding",
    "fourier_features",
    "num_groups_for",
    "group_norm",
    "check_inputs",
    "NoiseEmbedding",
    "ResnetBlock",
    "AttnBlock",
    "CrossAttention",
    "check_text",
    "Downsample",
    "Upsample",
    "output_head",
    "with_fourier",
    "check_positive",
    "check_dropout",
)
