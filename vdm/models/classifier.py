"""A small noisy classifier p(y | z_t, gamma_t) for classifier guidance (Dhariwal & Nichol 2021, sec. 4).

Images [B, H, W, C]: conv stem, per level a gamma-conditioned ResNet block
then a 2x2 average pool, global average pool, Dense to logits.
Flat data [B, D]: residual MLP conditioned the same way.
Both condition on the rescaled gamma like the denoisers and return logits
[B, num_classes]; guidance uses grad_z log softmax(logits)[y].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.core.schedules import get_schedule
from vdm.models import layers
from vdm.models.mlp import MLPBlock

Array = jax.Array


class NoisyClassifier(nn.Module):
    """Logits of y given a noisy z_t: z [B, H, W, C] or [B, D], gamma [B] -> [B, num_classes]."""

    num_classes: int
    width: int = 32
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    num_layers: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, z: Array, gamma: Array, train: bool = False) -> Array:
        """z: [B, H, W, C] or [B, D], gamma: [B] (or scalar) -> logits [B, num_classes]."""
        layers.check_positive(num_classes=self.num_classes, width=self.width, num_layers=self.num_layers)
        layers.check_dropout(self.dropout)
        if z.ndim not in (2, 4):
            raise ValueError(f"z must be [B, H, W, C] or [B, D], got shape {z.shape}")
        gamma = layers.check_inputs(z, gamma, z.ndim)
        cond = layers.NoiseEmbedding(self.width, 4 * self.width, self.gamma_min, self.gamma_max, name="embed")(gamma)
        if z.ndim == 4:
            h = nn.Conv(self.width, (3, 3), name="conv_in")(z)
            for i in range(self.num_layers):
                h = layers.ResnetBlock(self.width * 2**i, self.dropout, name=f"block_{i}")(h, cond, train)
                if h.shape[1] > 1 and h.shape[2] > 1:
                    h = nn.avg_pool(h, (2, 2), strides=(2, 2))
            h = nn.swish(layers.group_norm(h.shape[-1], name="norm_out")(h))
            h = jnp.mean(h, axis=(1, 2))
        else:
            h = nn.Dense(self.width, name="dense_in")(z)
            for i in range(self.num_layers):
                h = MLPBlock(self.width, self.dropout, name=f"block_{i}")(h, cond, train)
            h = nn.swish(nn.LayerNorm(name="norm_out")(h))
        return nn.Dense(self.num_classes, name="logits")(h)


def classifier_from_config(config, num_classes: int):
    """(NoisyClassifier, its schedule gamma(t)) of a noisy-classifier config (configs/noisy_classifier.py)."""
    m = config.model
    model = NoisyClassifier(
        num_classes=num_classes, width=m.width, num_layers=m.num_layers, gamma_min=m.gamma_min, gamma_max=m.gamma_max
    )
    schedule = get_schedule(m.schedule, gamma_min=m.gamma_min, gamma_max=m.gamma_max)
    return model, schedule
