"""The VDM-paper score network (Kingma et al. 2021, appendix B).

A UNet without any downsampling: n_layer ResNet blocks at full resolution on
the way down (each output kept for a skip), a middle ResNet -> self-attention
-> ResNet, and n_layer + 1 ResNet blocks on the way up, each taking the next
skip by channel concatenation. Base-2 Fourier features of z are concatenated
to its channels so the net can resolve the fine 8-bit grid at small noise.
Conditioning: rescaled gamma (and optional class label) -> embedding added in
every ResNet block. The output conv is zero-initialised, so a fresh model
predicts exactly 0 (or exactly z with residual_output).

scan_blocks=True runs the n_layer down blocks and the n_layer + 1 up blocks
each under one `nn.scan` (params stacked on a leading [L] axis under 'down' /
'up'), so the compiled program, hence compile time, does not grow with depth;
`vdm.models.convert.stack_blocks` / `unstack_blocks` map between the two
parameter layouts, which compute the same function.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.models import layers

Array = jax.Array


class _DownStep(nn.Module):
    """One scanned down block: carry h -> (h', h') (the output is also a skip)."""

    block: dict
    train: bool

    @nn.compact
    def __call__(self, h: Array, cond: Array) -> tuple[Array, Array]:
        h = _resnet_cls(self.block)(**_block_kw(self.block), name="block")(h, cond, self.train)
        return h, h


class _UpStep(nn.Module):
    """One scanned up block: carry h, skip -> (block(concat(h, skip)), None)."""

    block: dict
    train: bool

    @nn.compact
    def __call__(self, h: Array, skip: Array, cond: Array) -> tuple[Array, None]:
        h = jnp.concatenate([h, skip], axis=-1)
        return _resnet_cls(self.block)(**_block_kw(self.block), name="block")(h, cond, self.train), None


def _block_kw(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "remat"}


def _save_block_activations(prim: Any, *args: Any, **params: Any) -> bool:
    """Remat policy of a ResnetBlock: keep its two named activations (the first conv's output with the
    conditioning, the dropout's output) and the dropout's random bits; recompute the rest (norms, swish)."""
    return _NAMED(prim, *args, **params) or prim.name == "random_bits"


_NAMED = jax.checkpoint_policies.save_only_these_names("resnet_conv0", "resnet_dropout")


def _resnet_cls(block: dict) -> Any:
    """ResnetBlock under nn.remat: recomputed whole when block['remat'], else with _save_block_activations.

    Fewer kept activations cost less memory traffic than the elementwise ops they save: on CPU the
    train step is ~3% faster unrolled and ~20% under nn.scan, where every kept activation is copied
    into a stacked buffer and back (experiments/results/benchmark_reference.md). Same values.
    """
    # `train` (arg 3, counting self) is a Python bool: static under remat.
    if block["remat"]:
        return nn.remat(layers.ResnetBlock, static_argnums=(3,))
    return nn.remat(layers.ResnetBlock, static_argnums=(3,), policy=_save_block_activations)


class VDMUNet(nn.Module):
    """VDM ScoreUNet shape: [B, H, W, C] noisy image, gamma [B] -> [B, H, W, C] prediction."""

    width: int = 128
    num_layers: int = 32
    num_heads: int = 1
    dropout: float = 0.1
    fourier_features: bool = True
    fourier_min: int = 6
    fourier_max: int = 7
    num_classes: int = 0
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    dtype: Any = jnp.float32  # compute dtype (bfloat16: params stay float32; z and its Fourier features float32)
    embedding_freqs: str = "half"  # timestep_embedding frequencies; reference: 'half_minus_one'
    residual_output: bool = False  # return z + net(z); reference: True
    cond_proj_bias: bool = True  # bias on each block's cond projection; reference: False
    cond_proj_zero_init: bool = False  # zero-init that projection; reference: True
    norm_groups: int = 0  # GroupNorm groups, 0: adaptive; reference: 32
    scan_blocks: bool = False  # down/up blocks under nn.scan (stacked params)
    remat: bool = False  # rematerialise each ResNet block in the backward pass
    variance_head: bool = False  # C more output channels: the reverse variance's interpolation (improved DDPM)

    @nn.compact
    def __call__(self, z: Array, gamma: Array, y: Array | None = None, train: bool = False) -> Array:
        """z: [B, H, W, C], gamma: [B] (or scalar), y: [B] int or None -> [B, H, W, C] (2C with the variance head)."""
        layers.check_positive(width=self.width, num_layers=self.num_layers)
        layers.check_dropout(self.dropout)
        gamma = layers.check_inputs(z, gamma, 4, y)
        cond = layers.NoiseEmbedding(
            self.width,
            4 * self.width,
            self.gamma_min,
            self.gamma_max,
            self.num_classes,
            self.dtype,
            self.embedding_freqs,
            name="embed",
        )(gamma, y)
        block = dict(
            out_ch=self.width,
            dropout=self.dropout,
            dtype=self.dtype,
            norm_groups=self.norm_groups,
            cond_proj_bias=self.cond_proj_bias,
            cond_proj_zero_init=self.cond_proj_zero_init,
            remat=self.remat,
        )
        resnet = lambda name: _resnet_cls(block)(**_block_kw(block), name=name)

        h = layers.with_fourier(z, self.fourier_features, self.fourier_min, self.fourier_max)
        h = nn.Conv(self.width, (3, 3), dtype=self.dtype, name="conv_in")(h)
        if self.scan_blocks:
            h, skips = self._scanned_down(h, cond, dict(block, loop_conv=True), train)
        else:
            skips = [h]
            for i in range(self.num_layers):
                h = resnet(f"down_{i}")(h, cond, train)
                skips.append(h)

        h = resnet("mid_0")(h, cond, train)
        h = layers.AttnBlock(self.num_heads, self.dtype, self.norm_groups, name="mid_attn")(h)
        h = resnet("mid_1")(h, cond, train)

        if self.scan_blocks:
            h = self._scanned_up(h, skips, cond, dict(block, loop_conv=True), train)
        else:
            for i in range(self.num_layers + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = resnet(f"up_{i}")(h, cond, train)
            assert not skips
        channels = z.shape[-1]
        out = layers.output_head(h, channels * (2 if self.variance_head else 1), self.dtype, self.norm_groups)
        if not self.residual_output:
            return out
        return jnp.concatenate([z.astype(jnp.float32) + out[..., :channels], out[..., channels:]], axis=-1)

    def _scanned_down(self, h0: Array, cond: Array, block: dict, train: bool) -> tuple[Array, Array]:
        """num_layers down blocks in one scan; returns (h, skips [L+1, B, H, W, C], conv_in output first)."""
        scan = nn.scan(
            _DownStep,
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=nn.broadcast,
            length=self.num_layers,
        )
        h, outs = scan(block, train, name="down")(h0, cond)
        return h, jnp.concatenate([h0[None], outs], axis=0)

    def _scanned_up(self, h: Array, skips: Array, cond: Array, block: dict, train: bool) -> Array:
        """num_layers + 1 up blocks in one scan, consuming the skips last-first."""
        scan = nn.scan(
            _UpStep,
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(0, nn.broadcast),
            length=self.num_layers + 1,
        )
        h, _ = scan(block, train, name="up")(h, skips[::-1], cond)
        return h
