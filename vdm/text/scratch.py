"""The text encoder trained from scratch, jointly with the diffusion model, as GLIDE's (Nichol et al. 2022,
"GLIDE", sec. 2.3): word ids -> a small transformer -> (sequence, mask, pooled), the same output as the T5 encoder.

    h_0 = E[ids] + P[0:L]                                   (learned token and position embeddings)
    per block: h += MHA(LN(h), keys masked), h += MLP(LN(h)) (pre-norm, GELU MLP)
    sequence = LN_final(h_depth),  pooled = masked mean of sequence

GLIDE reads its class embedding from the last token; here pooled is the mask-weighted mean for every encoder
(vdm.text.pooling), so a network conditions on either kind alike. Its params are an ordinary Flax tree that
trains with the denoiser's; the ids come from vdm.text.vocab.WordVocabulary (pad 0).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.text.pooling import masked_mean


class ScratchBlock(nn.Module):
    """One pre-norm transformer block: h + MHA(LN(h)), then h + W2 gelu(W1 LN(h))."""

    width: int
    num_heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, h: jax.Array, key_mask: jax.Array) -> jax.Array:
        """h: [B, L, width], key_mask: bool [B, 1, 1, L] -> [B, L, width]."""
        attend = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attention")
        x = nn.LayerNorm(name="attention_norm")(h)
        h = h + attend(x, x, mask=key_mask)
        x = nn.LayerNorm(name="mlp_norm")(h)
        x = nn.Dense(self.mlp_ratio * self.width, name="mlp_in")(x)
        return h + nn.Dense(self.width, name="mlp_out")(jax.nn.gelu(x))


class ScratchTextEncoder(nn.Module):
    """(ids [B, L], mask [B, L]) -> (sequence [B, L, width], mask, pooled [B, width]); L <= max_length."""

    vocab_size: int  # WordVocabulary.size (pad id 0 included)
    max_length: int  # rows of the position embedding: the longest caption, in words
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """ids int [B, L], mask bool [B, L] -> (sequence [B, L, width], mask [B, L], pooled [B, width])."""
        assert ids.ndim == 2 and mask.shape == ids.shape, (ids.shape, mask.shape)
        length = ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"ids have length {length}, more than the encoder's max_length {self.max_length}.")
        init = nn.initializers.normal(0.02)
        h = nn.Embed(self.vocab_size, self.width, embedding_init=init, name="embed")(ids)
        h = h + self.param("position", init, (self.max_length, self.width))[:length]
        key_mask = mask[:, None, None, :]  # padded keys get no weight; an all-pad prompt attends uniformly
        for i in range(self.depth):
            h = ScratchBlock(self.width, self.num_heads, self.mlp_ratio, name=f"block_{i}")(h, key_mask)
        sequence = nn.LayerNorm(name="final_norm")(h)
        return sequence, mask, masked_mean(sequence, jnp.asarray(mask))
