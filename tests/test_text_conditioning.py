"""Text-to-image conditioning: the ADM UNet's cross-attention and pooled embedding, caption dropout and
classifier-free guidance on captions, the shapes configs, bad prompts, and the CLI end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.models import layers
from vdm.models.unet_adm import ADMUNet

B, L, DC = 2, 5, 12


def _tiny_unet(**kw):
    return ADMUNet(
        width=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=2, dropout=0.0, **kw
    )


def _text(key, mask=None):
    k1, k2 = jax.random.split(key)
    context = jax.random.normal(k1, (B, L, DC))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], bool) if mask is None else mask
    return context, mask, jax.random.normal(k2, (B, DC))


def _randomised(params, key):
    """Every leaf replaced by noise, so the zero-initialised projections are no longer zero."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.fixture(scope="module")
def unet():
    net = _tiny_unet(text_conditioning=True, cross_attention_resolutions=(8, 4))
    z = jax.random.normal(jax.random.PRNGKey(0), (B, 8, 8, 3))
    gamma = jnp.array([-2.0, 1.0])
    context, mask, pooled = _text(jax.random.PRNGKey(1))
    params = net.init(jax.random.PRNGKey(2), z, gamma, context=context, context_mask=mask, pooled=pooled)["params"]
    return net, params, z, gamma, (context, mask, pooled)


def test_unet_text_shapes_and_params_at_every_configured_resolution(unet):
    net, params, z, gamma, (context, mask, pooled) = unet
    out = net.apply({"params": params}, z, gamma, context=context, context_mask=mask, pooled=pooled)
    assert out.shape == z.shape
    cross = sorted(k for k in params if k.endswith("cross"))
    assert cross == ["down_0_0_cross", "down_1_0_cross", "mid_cross", "up_0_0_cross", "up_0_1_cross"] + [
        "up_1_0_cross",
        "up_1_1_cross",
    ]
    assert "pooled_proj" in params
    only_low = _tiny_unet(text_conditioning=True)  # default: the attention resolutions (4) and the middle
    p = only_low.init(jax.random.PRNGKey(0), z, gamma, context=context, context_mask=mask, pooled=pooled)["params"]
    assert sorted(k for k in p if k.endswith("cross")) == [
        "down_1_0_cross",
        "mid_cross",
        "up_1_0_cross",
        "up_1_1_cross",
    ]


def test_unet_text_does_nothing_at_init(unet):
    net, params, z, gamma, (context, mask, pooled) = unet
    params = {**params, "conv_out": _randomised(params["conv_out"], jax.random.PRNGKey(3))}  # a non-zero output
    base = net.apply({"params": params}, z, gamma, context=context, context_mask=mask, pooled=pooled)
    other = net.apply({"params": params}, z, gamma, context=-context, context_mask=mask, pooled=pooled + 1.0)
    np.testing.assert_array_equal(base, other)  # zero-initialised cross-attention output and pooled projection


def test_unet_masked_tokens_do_not_change_the_output_and_unmasked_do(unet):
    net, params, z, gamma, (context, mask, pooled) = unet
    params = _randomised(params, jax.random.PRNGKey(4))
    apply = lambda c: net.apply({"params": params}, z, gamma, context=c, context_mask=mask, pooled=pooled)
    base = apply(context)
    padded = jnp.where(mask[..., None], context, 100.0 * jax.random.normal(jax.random.PRNGKey(5), context.shape))
    np.testing.assert_allclose(apply(padded), base, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(base))))
    changed = context.at[:, 0].add(1.0)  # the first token of each prompt is a real one
    diff = jnp.max(jnp.abs(apply(changed) - base), axis=(1, 2, 3))
    assert bool(jnp.all(diff > 1e-3)), diff


def test_cross_attention_without_tokens_is_the_identity():
    x = jax.random.normal(jax.random.PRNGKey(0), (B, 4, 4, 8))
    context = jax.random.normal(jax.random.PRNGKey(1), (B, L, DC))
    block = layers.CrossAttention(num_heads=2)
    params = _randomised(block.init(jax.random.PRNGKey(2), x, context)["params"], jax.random.PRNGKey(3))
    none = jnp.zeros((B, L), bool)
    np.testing.assert_array_equal(block.apply({"params": params}, x, context, none), x)
    assert float(jnp.max(jnp.abs(block.apply({"params": params}, x, context) - x))) > 1e-3


def test_unet_refuses_text_it_was_not_built_for(unet):
    _, _, z, gamma, (context, mask, pooled) = unet
    plain = _tiny_unet()
    with pytest.raises(ValueError, match="text_conditioning=False"):
        plain.init(jax.random.PRNGKey(0), z, gamma, context=context, context_mask=mask, pooled=pooled)
    with pytest.raises(ValueError, match="cross_attention_resolutions"):
        _tiny_unet(text_conditioning=True, cross_attention_resolutions=(2,)).init(
            jax.random.PRNGKey(0), z, gamma, context=context, pooled=pooled
        )
