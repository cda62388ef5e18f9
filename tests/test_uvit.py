"""U-ViT (vdm.models.uvit): shapes and the variance head, scanned = unrolled, the long skips' last-in first-out wiring,
the class and null tokens, text tokens under the key mask, a closed-form parameter count, and the registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vdm.models import DIT_KEYS, convert, get_model, uvit

SHAPE = (2, 8, 8, 3)


def _small(**kw) -> uvit.UViT:
    return uvit.UViT(
        **{"width": 16, "num_layers": 5, "num_heads": 2, "patch_size": 2, "mlp_ratio": 2.0, "num_classes": 3, **kw}
    )


def _inputs():
    z = jax.random.normal(jax.random.key(0), SHAPE)
    return z, jnp.array([-5.0, 2.0]), jnp.array([1, 3])


def _perturbed(module, z, gamma, y, seed=0, **kw):
    """module's init params with N(0, 0.3^2) added to every leaf (the zero-initialised final conv included)."""
    params = jax.jit(module.init)(jax.random.key(seed), z, gamma, y, **kw)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + jnp.asarray(0.3 * rng.standard_normal(p.shape), p.dtype), params)


@pytest.mark.parametrize("variance_head", [False, True])
def test_output_is_c_or_2c_channels_float32_and_exactly_zero_fresh(variance_head):
    z, gamma, y = _inputs()
    model = _small(variance_head=variance_head, num_layers=3)
    out, variables = jax.jit(model.init_with_output)(jax.random.key(1), z, gamma, y)
    assert out.shape == SHAPE[:3] + (6 if variance_head else 3,) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # the zero-initialised final 3x3 conv
    params = _perturbed(model, z, gamma, y)
    out = jax.jit(model.apply)({"params": params}, z, gamma, y)
    assert np.all(np.isfinite(out)) and float(jnp.min(jnp.max(jnp.abs(out), axis=(1, 2, 3)))) > 1e-3


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_blocks_equal_unrolled_with_the_same_weights_value_and_gradient(remat):
    z, gamma, y = _inputs()
    unrolled, scanned = _small(remat=remat), _small(remat=remat, scan_blocks=True)
    params = _perturbed(unrolled, z, gamma, y)
    stacked = convert.stack_blocks(params)
    assert set(stacked) - set(params) == {"in_blocks", "out_blocks"}
    assert stacked["out_blocks"]["block"]["skip_linear"]["kernel"].shape == (2, 32, 16)
    assert jax.tree.structure(stacked) == jax.tree.structure(
        jax.eval_shape(scanned.init, jax.random.key(0), z, gamma, y)["params"]
    )
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, z, gamma, y) ** 2)
    v_u, g_u = jax.jit(jax.value_and_grad(loss(unrolled)))(params)
    v_s, g_s = jax.jit(jax.value_and_grad(loss(scanned)))(stacked)
    np.testing.assert_allclose(v_s, v_u, rtol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g_u))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), convert.unstack_blocks(g_s), g_u)
    assert convert.is_scanned(stacked) and convert.is_scanned(params) is False
    assert convert.block_layout(["['model']['out_blocks']['block']['fc1']['kernel']"]) == "scanned"
    assert convert.block_layout(["['model']['in_blocks_0']['fc1']['kernel']"]) == "unrolled"
    mask = convert.decay_mask({"model": stacked}, "matrices")  # the [k] axis does not make a bias a matrix
    assert (
        not mask["model"]["in_blocks"]["block"]["fc1"]["bias"] and mask["model"]["in_blocks"]["block"]["fc1"]["kernel"]
    )


def test_out_block_i_takes_the_long_skip_of_in_block_k_minus_1_minus_i():
    """Replayed from the captured block outputs: out_i(x) = Block(Dense([out_{i-1} or mid, in_{k-1-i}])), k = 2."""
    z, gamma, y = _inputs()
    model = _small()
    params = _perturbed(model, z, gamma, y)
    _, state = jax.jit(lambda p: model.apply({"params": p}, z, gamma, y, capture_intermediates=True))(params)
    got = {k: v["__call__"][0] for k, v in state["intermediates"].items() if "blocks" in k or k == "mid_block"}
    block = uvit.UViTBlock(num_heads=2, mlp_ratio=2.0, long_skip=True)
    replay = lambda i, x, skip: block.apply({"params": params[f"out_blocks_{i}"]}, x, skip, None, False)
    np.testing.assert_allclose(replay(0, got["mid_block"], got["in_blocks_1"]), got["out_blocks_0"], atol=1e-5)
    np.testing.assert_allclose(replay(1, got["out_blocks_0"], got["in_blocks_0"]), got["out_blocks_1"], atol=1e-5)
    wrong = replay(1, got["out_blocks_0"], got["in_blocks_1"])  # the other skip gives another function
    assert float(jnp.max(jnp.abs(wrong - got["out_blocks_1"]))) > 1e-3
    half = jax.tree.map(lambda p: p, params)  # the skip's half of skip_linear carries information to the output
    half["out_blocks_1"]["skip_linear"]["kernel"] = params["out_blocks_1"]["skip_linear"]["kernel"].at[16:].set(0.0)
    base, cut = (model.apply({"params": p}, z, gamma, y) for p in (params, half))
    assert float(jnp.min(jnp.max(jnp.abs(cut - base), axis=(1, 2, 3)))) > 1e-3


def test_class_token_null_class_and_gamma_condition_every_example():
    z, gamma, y = _inputs()
    model = _small(num_layers=3)
    params = _perturbed(model, z, gamma, y)
    run = jax.jit(lambda g, y: model.apply({"params": params}, z, g, y))
    per_example = lambda a, b: float(jnp.min(jnp.max(jnp.abs(a - b), axis=(1, 2, 3))))
    null = run(gamma, jnp.full((2,), 3))
    np.testing.assert_array_equal(jax.jit(lambda g: model.apply({"params": params}, z, g))(gamma), null)  # y=None
    assert per_example(run(gamma, y.at[1].set(0)), null) > 1e-4  # a real class differs from the null class
    assert per_example(run(gamma + 1.0, y), run(gamma, y)) > 1e-4
    unconditional = _small(num_classes=0, num_layers=3)
    assert "label_embed" not in jax.eval_shape(unconditional.init, jax.random.key(0), z, gamma)["params"]
    with pytest.raises(ValueError, match="num_classes=0"):
        jax.eval_shape(unconditional.init, jax.random.key(0), z, gamma, y)


@pytest.mark.parametrize("scan", [False, True])
def test_text_tokens_are_attended_with_the_padding_mask_and_pooled_enters_the_time_token(scan):
    z, gamma, y = _inputs()
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 12))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    pooled = jax.random.normal(jax.random.key(2), (2, 12))
    model = _small(text_conditioning=True, scan_blocks=scan)
    params = _perturbed(model, z, gamma, y, context=ctx, context_mask=mask, pooled=pooled)
    assert params["context_pos"].shape == (1, 5, 16)  # the text tokens' own positions, L from the input
    run = jax.jit(lambda c, p: model.apply({"params": params}, z, gamma, y, context=c, context_mask=mask, pooled=p))
    base = run(ctx, pooled)
    np.testing.assert_allclose(run(ctx.at[:, 4].set(9.0).at[0, 3].set(-7.0), pooled), base, rtol=0, atol=1e-6)
    per_example = lambda a: float(jnp.min(jnp.max(jnp.abs(a - base), axis=(1, 2, 3))))
    assert per_example(run(ctx.at[:, 0].add(1.0), pooled)) > 1e-4  # unmasked tokens are read
    assert per_example(run(ctx, pooled + 1.0)) > 1e-4
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, z, gamma, y, context=ctx, pooled=pooled) ** 2))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads(params)))  # mask None: all valid
    with pytest.raises(ValueError, match="context"):
        jax.eval_shape(_small(text_conditioning=True).init, jax.random.key(0), z, gamma, y)
    with pytest.raises(ValueError, match="context"):
        jax.eval_shape(_small().init, jax.random.key(0), z, gamma, y, context=ctx, pooled=pooled)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num_heads": 3}, "num_heads=3"),
        ({"patch_size": 3}, "patch_size=3"),
        ({"num_layers": 4}, "num_layers=4"),
        ({"num_layers": 0}, "num_layers"),
        ({"time_input": "t"}, "time_input"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ],
)
def test_bad_architectures_fail_in_one_line_naming_the_key(kw, match):
    z, gamma = jnp.zeros((1, 8, 8, 1)), jnp.zeros(1)
    with pytest.raises(ValueError, match=match) as err:
        jax.eval_shape(_small(**kw).init, jax.random.key(0), z, gamma)
    assert "\n" not in str(err.value)


def _closed_form_count(d, m, c_in, c_out, p, n, k, classes, text=None):
    """U-ViT's parameters: embeddings, 2k + 1 pre-norm blocks (k with a skip Dense), the head; text: (Dc, L, Dp)."""
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)  # 2 LNs, qkv, proj, fc1, fc2
    extras = 1 + (classes > 0)
    total = p * p * c_in * d + d  # patch_embed
    total += 256 * d + d + d * d + d  # time_embed: the 256-wide sinusoid -> Dense, SiLU, Dense
    total += (classes + 1) * d if classes else 0  # label_embed, the null row included
    total += (extras + n) * d  # pos_embed
    total += (2 * k + 1) * block + k * (2 * d * d + d)  # the blocks, the out blocks' skip_linear
    total += 2 * d + (d * p * p * c_out + p * p * c_out) + (9 * c_out * c_out + c_out)  # norm, decoder_pred, conv
    if text:
        dc, length, dp = text
        total += dc * d + d + length * d + dp * d + d  # context_embed, context_pos, pooled_proj
    return total


@pytest.mark.parametrize(
    "kw,text",
    [
        ({}, None),
        ({"num_layers": 7, "variance_head": True, "num_classes": 0, "fourier_features": True}, None),
        ({"text_conditioning": True, "mlp_ratio": 3.0}, (12, 5, 7)),
    ],
)
def test_parameter_count_is_the_closed_form(kw, text):
    model = _small(**kw)
    z, gamma = jnp.zeros(SHAPE), jnp.zeros(2)
    extra = {}
    if text:
        extra = dict(context=jnp.zeros((2, text[1], text[0])), pooled=jnp.zeros((2, text[2])))
    params = jax.eval_shape(model.init, jax.random.key(0), z, gamma, **extra)["params"]
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    c_in = 3 * (1 + 2 * 2) if model.fourier_features else 3  # z and sin, cos at 2 frequencies (6, 7) per channel
    c_out = 6 if model.variance_head else 3
    want = _closed_form_count(
        16, int(16 * model.mlp_ratio), c_in, c_out, 2, 16, model.num_layers // 2, model.num_classes, text
    )
    assert count == want


def test_the_registry_builds_uvit_from_dit_keys_and_num_layers_one_is_the_mid_block_alone():
    cfg = dict(name="uvit", width=8, num_layers=1, num_heads=2, patch_size=2, mlp_ratio=2.0, time_input="gamma")
    cfg.update(scan_blocks=True, remat=False, dropout=0.0, fourier_features=False, fourier_min=6, fourier_max=7)
    cfg.update(num_classes=0, gamma_min=-13.3, gamma_max=5.0, variance_head="interp")
    assert set(DIT_KEYS) <= set(cfg)
    model = get_model(ml_collections.ConfigDict(cfg))
    assert isinstance(model, uvit.UViT) and model.variance_head and model.scan_blocks
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, 1)), jnp.zeros(1))["params"]
    assert not any("blocks" in k for k in params) and "mid_block" in params
