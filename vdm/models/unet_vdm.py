"""The VDM-paper score network (Kingma et al. 2021, appendix B).

A UNet without any downsampling: n_layer ResNet blocks at full resolution on
the way down (each output kept for a skip), a middle ResNet -> self-attention
-> ResNet, and n_layer + 1 ResNet blocks on the way up, each taking the next
skip by channel concatenation. Base-2 Fourier features of z are concatenated
to its channels so the net can resolve the fine 8-bit grid at small noise.
Conditioning: rescaled gamma (and optional class label) -> embedding added in
every ResNet block. The output conv is zero-initialised, so a fresh model
predicts exactly 0.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.models import layers

Array = jax.Array


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
  dtype: Any = jnp.float32   # compute dtype (bfloat16: params stay float32; z and its Fourier features float32)

  @nn.compact
  def __call__(self, z: Array, gamma: Array, y: Optional[Array] = None,
               train: bool = False) -> Array:
    """z: [B, H, W, C], gamma: [B] (or scalar), y: [B] int or None -> [B, H, W, C]."""
    layers.check_positive(width=self.width, num_layers=self.num_layers)
    layers.check_dropout(self.dropout)
    gamma = layers.check_inputs(z, gamma, 4, y)
    cond = layers.NoiseEmbedding(
        self.width, 4 * self.width, self.gamma_min, self.gamma_max,
        self.num_classes, self.dtype, name='embed')(gamma, y)

    h = layers.with_fourier(z, self.fourier_features, self.fourier_min,
                            self.fourier_max)
    h = nn.Conv(self.width, (3, 3), dtype=self.dtype, name='conv_in')(h)
    skips = [h]
    for i in range(self.num_layers):
      h = layers.ResnetBlock(self.width, self.dropout, self.dtype, name=f'down_{i}')(
          h, cond, train)
      skips.append(h)

    h = layers.ResnetBlock(self.width, self.dropout, self.dtype, name='mid_0')(h, cond, train)
    h = layers.AttnBlock(self.num_heads, self.dtype, name='mid_attn')(h)
    h = layers.ResnetBlock(self.width, self.dropout, self.dtype, name='mid_1')(h, cond, train)

    for i in range(self.num_layers + 1):
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = layers.ResnetBlock(self.width, self.dropout, self.dtype, name=f'up_{i}')(
          h, cond, train)
    assert not skips
    return layers.output_head(h, z.shape[-1], self.dtype)
