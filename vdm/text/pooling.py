"""The pooled text embedding every text encoder of vdm gives: the mask-weighted mean of its sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(sequence: jax.Array, mask: jax.Array) -> jax.Array:
    """pooled = sum_l m_l h_l / max(sum_l m_l, 1): sequence [B, L, d], mask bool [B, L] -> [B, d] (0 where m = 0)."""
    assert sequence.shape[:2] == mask.shape, (sequence.shape, mask.shape)
    weights = mask.astype(sequence.dtype)[..., None]
    return jnp.sum(sequence * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
