"""A denoiser conditioned on text: the text encoder's (sequence, mask, pooled) fed to a text-conditioned network.

    net.apply(variables, z, gamma, y=None, train=False, text=TEXT)

TEXT is a dict of one caption per example: {'ids', 'mask'} (int32 / bool [B, L]) for the word-level encoder
trained with the denoiser (GLIDE, Nichol et al. 2022: its params are the 'text_encoder' subtree of the model's,
trained by the same gradient), or {'sequence' [B, L, d], 'mask' [B, L], 'pooled' [B, d]} of a frozen encoder's
cached embeddings (Imagen, Saharia et al. 2022: no encoder runs in training). The network ('denoiser' subtree)
is the ADM UNet or DiT with text_conditioning=True, which cross-attends to the sequence where the mask is True
and adds the projected pooled embedding to its noise-level embedding.

The null condition of classifier-free guidance is the empty prompt, no tokens: mask all False and pooled 0
(`drop_text`). The word-level encoder maps the empty prompt to exactly that; for T5 it is "no text" rather
than T5's encoding of "" (which holds an end-of-sequence token). The cross-attention of a row without tokens
adds exactly 0 (vdm.models.layers.CrossAttention), so the null-conditioned net is an unconditional one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.text.scratch import ScratchTextEncoder

Array = jax.Array


def drop_text(text: dict, drop: Array) -> dict:
    """The null condition where drop [B] is True: mask -> False, ids -> 0 (pad), pooled -> 0 (Ho & Salimans 2022)."""
    keep = ~jnp.asarray(drop, bool)
    out = dict(text, mask=jnp.asarray(text["mask"], bool) & keep[:, None])
    if "ids" in text:
        out["ids"] = jnp.where(out["mask"], text["ids"], 0)
    if "pooled" in text:
        out["pooled"] = text["pooled"] * keep[:, None].astype(text["pooled"].dtype)
    return out


def null_text(text: dict) -> dict:
    """The null condition (no tokens) shaped like `text`: drop_text with every row dropped."""
    return drop_text(text, jnp.ones(text["mask"].shape[:1], bool))


class TextConditionedNet(nn.Module):
    """denoiser(z, gamma, y, train, context=sequence, context_mask=mask, pooled=pooled) of the caption `text`."""

    denoiser: nn.Module  # an adm_unet or dit with text_conditioning=True
    text_encoder: nn.Module | None = (
        None  # the ScratchTextEncoder trained jointly; None: `text` holds cached embeddings
    )

    @nn.compact
    def __call__(
        self, z: Array, gamma: Array, y: Array | None = None, train: bool = False, *, text: dict | None = None
    ) -> Array:
        """z [B, ...], gamma [B], y [B] or None, text (module docstring) -> the denoiser's prediction."""
        if text is None:
            raise ValueError("a text-conditioned network needs `text` (its captions: {'ids', 'mask'} or embeddings)")
        if self.text_encoder is not None:
            sequence, mask, pooled = self.text_encoder(jnp.asarray(text["ids"]), jnp.asarray(text["mask"], bool))
        else:
            sequence, mask, pooled = text["sequence"], jnp.asarray(text["mask"], bool), text["pooled"]
        return self.denoiser(z, gamma, y, train, context=sequence, context_mask=mask, pooled=pooled)


def text_network(
    denoiser: nn.Module, model_config: Any, text_config: Any, vocab_size: int | None
) -> TextConditionedNet:
    """The denoiser with text conditioning on (adm_unet: at config.model.cross_attention_resolutions), and the
    word-level encoder of config.text when vocab_size is given (encoder 'scratch'; None: cached embeddings)."""
    kwargs: dict[str, Any] = {"text_conditioning": True}
    if model_config.name == "adm_unet" and model_config.get("cross_attention_resolutions") is not None:
        kwargs["cross_attention_resolutions"] = tuple(int(r) for r in model_config.cross_attention_resolutions)
    encoder = None
    if vocab_size is not None:
        t = text_config
        encoder = ScratchTextEncoder(
            vocab_size=vocab_size,
            max_length=int(t.max_length),
            width=int(t.width),
            depth=int(t.depth),
            num_heads=int(t.num_heads),
        )
    return TextConditionedNet(denoiser.clone(**kwargs), encoder)
