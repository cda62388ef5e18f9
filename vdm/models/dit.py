"""DiT, the diffusion transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The image [B, H, W, C] is cut into p x p patches, each linearly embedded (a p x p conv of stride p) to `width`
channels, plus a fixed 2-D sin-cos positional embedding (MAE's); `num_layers` blocks of self-attention and an MLP,
each sublayer modulated by adaLN-Zero: (shift, scale, gate) = Linear(silu(c)), zero-initialised, with
    x = x + gate * sublayer(LayerNorm(x) * (1 + scale) + shift),
c = the noise-level embedding + the class embedding (row num_classes: the null class of classifier-free
guidance, Ho & Salimans 2022). A final adaLN LayerNorm and a zero-initialised linear map each token to its
p x p x C' pixels, un-patchified to [B, H, W, C'] (C' = 2C with the variance head). Fresh, it predicts exactly 0.

The noise level enters as gamma, as every vdm network takes it (time_input): 'gamma' feeds DiT's sinusoidal
timestep embedding 1000 (gamma - gamma_min) / (gamma_max - gamma_min), as the UNets do; 'ddpm_timestep' the
fractional DDPM timestep k whose gamma it is (`vdm.core.schedules.ddpm_timestep_of_gamma`, linear betas,
T = 1000), which makes the network facebookresearch/DiT's (`from_reference`, `gamma_of_t`).

Text conditioning (text_conditioning=True): each block gains a cross-attention sublayer between the self-attention
and the MLP (PixArt-alpha, Chen et al. 2023; zero-initialised output), over the encoder's sequence with its mask,
and the pooled text embedding is projected into c, so it modulates every adaLN. The same block, one option.

scan_blocks=True runs the blocks under one nn.scan (params stacked [L, ...] under 'blocks': {'block': ...}),
so compile time does not grow with depth; unrolled they are 'blocks_0'..; `vdm.models.convert.stack_blocks` /
`unstack_blocks` map between the layouts. remat=True recomputes each block in the backward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm.core import schedules
from vdm.models import layers

Array = jax.Array
TIME_INPUTS = ("gamma", "ddpm_timestep")  # what DiT's timestep embedding is taken of (see the module docstring)
FREQUENCY_DIM = 256  # DiT's frequency_embedding_size: the sinusoid's width before the timestep MLP
LN_EPS = 1e-6  # DiT's LayerNorm epsilon (no learned affine where adaLN modulates)


def validate_dit(
    width: int,
    num_layers: int,
    num_heads: int,
    patch_size: int,
    mlp_ratio: float,
    time_input: str,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Raise ValueError naming the key of an invalid DiT architecture (or one whose patches do not tile image_size)."""
    layers.check_positive(width=width, num_layers=num_layers, num_heads=num_heads, patch_size=patch_size)
    if width % 4 or width % num_heads:
        raise ValueError(
            f"width={width} must be divisible by 4 (the 2-D sin-cos positions) and by num_heads={num_heads}"
        )
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio={mlp_ratio!r} must be a number > 0")
    if time_input not in TIME_INPUTS:
        raise ValueError(f"time_input={time_input!r} is not valid; choose one of {', '.join(TIME_INPUTS)}")
    if image_size is not None and (image_size[0] % patch_size or image_size[1] % patch_size):
        raise ValueError(f"patch_size={patch_size} must divide the image size {image_size[0]}x{image_size[1]}")


def sincos_2d(dim: int, rows: int, cols: int) -> np.ndarray:
    """Fixed 2-D positional embedding [rows * cols, dim] of MAE / DiT (He et al. 2022), tokens row-major.

    Half the channels embed the column j, half the row i (MAE's meshgrid order: the column first), each
    [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (dim/4)), k < dim/4. Computed in float64.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    row, col = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")

    def one(pos: np.ndarray) -> np.ndarray:
        arg = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(arg), np.cos(arg)], axis=1)

    return np.concatenate([one(col), one(row)], axis=1)


def frequency_embedding(t: Array, dim: int = FREQUENCY_DIM, max_period: float = 10000.0) -> Array:
    """DiT's timestep sinusoid [cos(t w_k), sin(t w_k)], w_k = P^(-k/half), k < half = dim/2 (GLIDE, ADM)."""
    emb = layers.timestep_embedding(t, dim, scale=1.0, max_period=max_period)  # [sin, cos]
    return jnp.concatenate([emb[:, dim // 2 :], emb[:, : dim // 2]], axis=-1)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """adaLN: x (1 + scale) + shift, per example over the tokens (DiT, sec. 3.2); x [B, N, D], shift, scale [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _layer_norm(name: str, dtype: Any, affine: bool = False) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, use_bias=affine, use_scale=affine, dtype=dtype, name=name)


class Attention(nn.Module):
    """Multi-head attention of x [B, N, D] over `source` [B, M, Ds] (None: x itself), mask [B, M] (Vaswani 2017).

    Self-attention projects q, k, v with one Dense 'qkv' (DiT / timm's layout: [q | k | v], heads contiguous);
    cross-attention with 'q' and 'kv'. The output projection is 'proj' (zero-initialised if zero_out).
    """

    num_heads: int
    dtype: Any = jnp.float32
    zero_out: bool = False

    @nn.compact
    def __call__(self, x: Array, source: Array | None = None, mask: Array | None = None) -> Array:
        """softmax(q k^T / sqrt(d_head)) v per head, then 'proj': x [B, N, D] -> [B, N, D]."""
        b, n, d = x.shape
        if self.num_heads < 1 or d % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must be >= 1 and divide the width {d}")
        heads = lambda h: h.reshape(h.shape[0], h.shape[1], self.num_heads, d // self.num_heads)
        if source is None:
            q, k, v = jnp.split(nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x), 3, axis=-1)
        else:
            q = nn.Dense(d, dtype=self.dtype, name="q")(x)
            k, v = jnp.split(nn.Dense(2 * d, dtype=self.dtype, name="kv")(source), 2, axis=-1)
        if mask is not None:
            mask = jnp.asarray(mask, bool)[:, None, None, :]  # [B, 1, 1, M]: every query sees the valid keys
        out = jax.nn.dot_product_attention(heads(q), heads(k), heads(v), mask=mask)  # softmax(q k^T / sqrt(d_h)) v
        init = {"kernel_init": nn.initializers.zeros} if self.zero_out else {}
        return nn.Dense(d, dtype=self.dtype, name="proj", **init)(out.reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero block (DiT, fig. 3): self-attention, [cross-attention,] MLP (GELU tanh); x [B, N, D], c [B, D]."""

    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0  # in the MLP, after the activation and after fc2 (timm's Mlp(drop=p)); DiT: 0
    dtype: Any = jnp.float32
    cross_attention: bool = False  # a text-conditioning sublayer over `context` (see the module docstring)

    @nn.compact
    def __call__(
        self, x: Array, c: Array, train: bool, context: Array | None = None, context_mask: Array | None = None
    ) -> Array:
        """x: [B, N, D], c: [B, D], context [B, L, Dc] and context_mask [B, L] (cross_attention) -> [B, N, D]."""
        d = x.shape[-1]
        mod = nn.Dense(6 * d, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="adaLN_modulation")
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod(nn.silu(c)), 6, axis=-1)
        h = modulate(_layer_norm("norm1", self.dtype)(x), shift_msa, scale_msa)
        x = x + gate_msa[:, None] * Attention(self.num_heads, self.dtype, name="attn")(h)
        if self.cross_attention:
            if context is None:
                raise ValueError("a DiT block with cross_attention needs the text `context` [B, L, Dc]")
            h = _layer_norm("norm_cross", self.dtype, affine=True)(x)
            x = x + Attention(self.num_heads, self.dtype, zero_out=True, name="cross_attn")(h, context, context_mask)
        h = modulate(_layer_norm("norm2", self.dtype)(x), shift_mlp, scale_mlp)
        h = nn.gelu(nn.Dense(int(d * self.mlp_ratio), dtype=self.dtype, name="fc1")(h), approximate=True)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.Dense(d, dtype=self.dtype, name="fc2")(h))
        return x + gate_mlp[:, None] * h


def _block_cls(remat: bool) -> Any:
    """DiTBlock, recomputed whole in the backward pass when `remat` (`train`, arg 3 counting self, static)."""
    return nn.remat(DiTBlock, static_argnums=(3,)) if remat else DiTBlock


class _ScanStep(nn.Module):
    """One scanned block: carry x -> (block(x, c, ...), None)."""

    block: dict
    remat: bool
    train: bool

    @nn.compact
    def __call__(self, x: Array, c: Array, context: Array | None, mask: Array | None) -> tuple[Array, None]:
        return _block_cls(self.remat)(**self.block, name="block")(x, c, self.train, context, mask), None


class TimestepEmbedder(nn.Module):
    """DiT's noise-level embedding: the sinusoid of the timestep (time_input of gamma) -> Linear, SiLU, Linear."""

    width: int
    time_input: str = "gamma"
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, gamma: Array) -> Array:
        """gamma [B] -> [B, width]."""
        if self.time_input == "ddpm_timestep":  # their k, from gamma = gamma_of_ddpm_timestep(k)
            t = schedules.ddpm_timestep_of_gamma(gamma)
        elif self.time_input == "gamma":  # the UNets' input: the rescaled gamma on the DDPM step range
            t = 1000.0 * layers.rescale_gamma(gamma, self.gamma_min, self.gamma_max)
        else:
            raise ValueError(f"unknown time_input {self.time_input!r}; valid: {', '.join(TIME_INPUTS)}")
        emb = nn.Dense(self.width, dtype=self.dtype, name="mlp_0")(frequency_embedding(t))
        return nn.Dense(self.width, dtype=self.dtype, name="mlp_2")(nn.silu(emb))


class DiT(nn.Module):
    """Diffusion transformer: z [B, H, W, C], gamma [B], y [B] or None -> [B, H, W, C] (2C with the variance head)."""

    width: int = 384  # hidden size D (DiT-S: 384, B: 768, L: 1024, XL: 1152)
    num_layers: int = 12  # depth (S, B: 12; L: 24; XL: 28)
    num_heads: int = 6  # attention heads (S: 6, B: 12, L and XL: 16)
    patch_size: int = 2  # p: tokens are p x p patches
    mlp_ratio: float = 4.0  # the MLP's hidden width / D
    dropout: float = 0.0  # in each MLP (DiT: none)
    fourier_features: bool = False  # concatenate VDM's Fourier features of z to its channels before the patches
    fourier_min: int = 6
    fourier_max: int = 7
    num_classes: int = 0  # 0: unconditional; else a class embedding with the null row num_classes
    gamma_min: float = -13.3  # time_input 'gamma': the rescaling of gamma
    gamma_max: float = 5.0
    time_input: str = "gamma"  # 'gamma' or 'ddpm_timestep' (TIME_INPUTS)
    dtype: Any = jnp.float32  # compute dtype (params stay float32; the output is float32)
    scan_blocks: bool = False  # blocks under nn.scan (stacked params)
    remat: bool = False  # rematerialise each block in the backward pass
    variance_head: bool = False  # C more output channels: the reverse variance's interpolation (improved DDPM)
    text_conditioning: bool = False  # cross-attention to `context` in every block, `pooled` into the adaLN input

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
        validate_dit(
            self.width, self.num_layers, self.num_heads, self.patch_size, self.mlp_ratio, self.time_input, (hgt, wid)
        )
        layers.check_dropout(self.dropout)
        layers.check_text(self.text_conditioning, context, pooled, "DiT")
        p = self.patch_size
        h = layers.with_fourier(z, self.fourier_features, self.fourier_min, self.fourier_max)
        h = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="x_embedder")(h)
        h = h.reshape(b, -1, self.width) + jnp.asarray(sincos_2d(self.width, hgt // p, wid // p), self.dtype)
        c = self._conditioning(gamma, y, pooled)
        h = self._blocks(h, c, train, context, context_mask)
        out_ch = channels * (2 if self.variance_head else 1)
        h = self._final_layer(h, c, p * p * out_ch)  # [B, N, p p C'], each token (row, col, channel) of its patch
        h = h.reshape(b, hgt // p, wid // p, p, p, out_ch).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(b, hgt, wid, out_ch).astype(jnp.float32)

    def _conditioning(self, gamma: Array, y: Array | None, pooled: Array | None) -> Array:
        """c = timestep embedding + class embedding (+ projected pooled text embedding): [B, D]."""
        c = TimestepEmbedder(
            self.width, self.time_input, self.gamma_min, self.gamma_max, self.dtype, name="t_embedder"
        )(gamma)
        y = layers.class_labels(y, self.num_classes, gamma.shape)
        if y is not None:
            c = c + nn.Embed(self.num_classes + 1, self.width, dtype=self.dtype, name="y_embedder")(y)
        if pooled is not None:
            c = c + nn.Dense(self.width, dtype=self.dtype, name="pooled_proj")(pooled)
        return c

    def _blocks(self, h: Array, c: Array, train: bool, context: Array | None, mask: Array | None) -> Array:
        """The num_layers DiT blocks, unrolled ('blocks_i') or under one nn.scan ('blocks': {'block': [L, ...]})."""
        block = dict(
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout=self.dropout,
            dtype=self.dtype,
            cross_attention=self.text_conditioning,
        )
        if self.scan_blocks:
            scan = nn.scan(
                _ScanStep,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=self.num_layers,
            )
            h, _ = scan(block, self.remat, train, name="blocks")(h, c, context, mask)
            return h
        for i in range(self.num_layers):
            h = _block_cls(self.remat)(**block, name=f"blocks_{i}")(h, c, train, context, mask)
        return h

    def _final_layer(self, h: Array, c: Array, features: int) -> Array:
        """DiT's final layer: adaLN (shift, scale) of a LayerNorm, then a zero-initialised Linear to the patch pixels."""
        mod = nn.Dense(2 * self.width, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="final_modulation")
        shift, scale = jnp.split(mod(nn.silu(c)), 2, axis=-1)
        h = modulate(_layer_norm("norm_final", self.dtype)(h), shift, scale)
        return nn.Dense(features, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="final_linear")(h)


# --- facebookresearch/DiT (models.py) -> ours ----------------------------------------------------

REFERENCE_DEFAULTS = dict(  # the keyword arguments of their DiT(...) and its defaults
    input_size=32,
    patch_size=2,
    in_channels=4,
    hidden_size=1152,
    depth=28,
    num_heads=16,
    mlp_ratio=4.0,
    class_dropout_prob=0.1,
    num_classes=1000,
    learn_sigma=True,
)


def gamma_of_t(t: Array) -> Array:
    """Our gamma = -log SNR at their (fractional) DDPM timestep t in [0, 1000) (`schedules.gamma_of_ddpm_timestep`).

    DiT trains on DDPM's linear betas 1e-4..0.02, T = 1000, with alphas_cumprod[t] = abar_t = prod_{j<=t} (1 -
    beta_j): gamma_t = log((1 - abar_t) / abar_t), our grid point (t + 1)/T of `ddpm_linear`; linear in t between
    the integers (beyond t = 999 the last step's slope continues). Strictly increasing.
    """
    return schedules.gamma_of_ddpm_timestep(t)


def _linear(sd: dict, name: str) -> dict:
    """torch Linear {weight [out, in], bias} -> flax Dense {kernel [in, out], bias}, removed from sd."""
    return {"kernel": sd.pop(name + ".weight").T, "bias": sd.pop(name + ".bias")}


def _reference_block(sd: dict, i: int) -> dict:
    """Their blocks.i (timm Attention qkv/proj, Mlp fc1/fc2, adaLN_modulation.1) -> our DiTBlock params."""
    pre = f"blocks.{i}."
    return {
        "adaLN_modulation": _linear(sd, pre + "adaLN_modulation.1"),
        "attn": {"qkv": _linear(sd, pre + "attn.qkv"), "proj": _linear(sd, pre + "attn.proj")},
        "fc1": _linear(sd, pre + "mlp.fc1"),
        "fc2": _linear(sd, pre + "mlp.fc2"),
    }


def from_reference(state_dict: Mapping[str, Any], **dit_kwargs: Any) -> tuple[DiT, dict, Any]:
    """facebookresearch/DiT's DiT(**dit_kwargs).state_dict() -> (DiT module, its variables, gamma_of_t).

    module.apply(variables, z, gamma_of_t(t), y) equals their model(x, t, y) in eval mode, z = x in NHWC, the
    output in NHWC (with learn_sigma: eps, then the C variance values, read by variance_head 'interp' exactly as
    their LEARNED_RANGE does: log var = (v + 1)/2 log beta + (1 - v)/2 log beta_tilde). y = num_classes is their
    null class (class_dropout_prob > 0); without one (class_dropout_prob = 0) our null row is zeros, their model
    has none. Their fixed pos_embed is checked against ours (sincos_2d), not loaded.
    """
    unknown = sorted(set(dit_kwargs) - set(REFERENCE_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown DiT keyword arguments {unknown}; theirs are {list(REFERENCE_DEFAULTS)}")
    kw = {**REFERENCE_DEFAULTS, **dit_kwargs}
    d, p, n_cls = kw["hidden_size"], kw["patch_size"], kw["num_classes"]
    if n_cls < 1:
        raise ValueError(f"num_classes must be >= 1 (their label embedder always adds a class), got {n_cls}")
    sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
    grid = kw["input_size"] // p
    pos = sd.pop("pos_embed").reshape(grid * grid, d)
    if not np.allclose(pos, sincos_2d(d, grid, grid), atol=1e-5):
        raise ValueError("the state dict's pos_embed is not DiT's 2-D sin-cos embedding of this size")
    table = sd.pop("y_embedder.embedding_table.weight")
    if table.shape[0] == n_cls:  # class_dropout_prob = 0: no null class row
        table = np.concatenate([table, np.zeros((1, d), np.float32)])
    conv = {"kernel": sd.pop("x_embedder.proj.weight").transpose(2, 3, 1, 0), "bias": sd.pop("x_embedder.proj.bias")}
    params = {
        "x_embedder": conv,  # torch OIHW -> flax HWIO
        "t_embedder": {"mlp_0": _linear(sd, "t_embedder.mlp.0"), "mlp_2": _linear(sd, "t_embedder.mlp.2")},
        "y_embedder": {"embedding": table},
        "final_modulation": _linear(sd, "final_layer.adaLN_modulation.1"),
        "final_linear": _linear(sd, "final_layer.linear"),
    }
    params.update({f"blocks_{i}": _reference_block(sd, i) for i in range(kw["depth"])})
    if sd:
        raise ValueError(f"state dict entries not in DiT(**{dit_kwargs}): {sorted(sd)[:8]}")
    module = DiT(
        width=d,
        num_layers=kw["depth"],
        num_heads=kw["num_heads"],
        patch_size=p,
        mlp_ratio=float(kw["mlp_ratio"]),
        num_classes=n_cls,
        time_input="ddpm_timestep",
        variance_head=bool(kw["learn_sigma"]),
    )
    return module, {"params": jax.tree.map(jnp.asarray, params)}, gamma_of_t
