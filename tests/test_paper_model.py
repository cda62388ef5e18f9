"""configs/cifar10.py's vdm_unet equals google-research/vdm's ScoreUNet as a function.

The reference network is restated below in plain jax.numpy from the VDM paper (appendix B) and
the facts of the reference code (model_vdm.py), independently of vdm.models: sinusoids with
frequencies 10000^(-k/(half-1)) of 1000 t_in; cond = swish(dense1(swish(dense0([temb, c])))) with
c = 0; base-2 Fourier features (n = 6, 7), ordered channel-major, sin block then cos block;
ResNet blocks GN-swish-conv, + cond_proj(cond) (no bias), GN-swish-(dropout)-conv, + nin_shortcut
Dense when channels change; GroupNorm with 32 groups and epsilon 1e-6; one single-head attention
over all H*W positions with scale 1/sqrt(C); output eps = z + conv_out(swish(GN(h))). It takes a
parameter dict named as the reference's. Our network, built from the cifar10 config keys, gets the
same weights through vdm.models.from_reference.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10
from vdm.models import get_model
from vdm.models.convert import decay_mask, from_reference, maybe_convert_params, stack_blocks, unstack_blocks
from vdm.models.layers import timestep_embedding
from vdm.models.schedule import LearnedLinearSchedule

GAMMA_MIN, GAMMA_MAX = -13.3, 5.0
HI = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------- the reference, restated ---------


def ref_group_norm(x, p, groups=32, eps=1e-6):
    b, h, w, c = x.shape
    xg = x.reshape(b, h, w, groups, c // groups)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.square(xg - mean).mean(axis=(1, 2, 4), keepdims=True)
    xg = (xg - mean) / jnp.sqrt(var + eps)
    return xg.reshape(b, h, w, c) * p["scale"] + p["bias"]


def ref_conv3x3(x, p):
    y = jax.lax.conv_general_dilated(
        x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HI
    )
    return y + p["bias"]


def ref_dense(x, p):
    y = jnp.matmul(x, p["kernel"], precision=HI)
    return y + p["bias"] if "bias" in p else y


def swish(x):
    return x * jax.nn.sigmoid(x)


def ref_resblock(x, cond, p):
    h = ref_conv3x3(swish(ref_group_norm(x, p["GroupNorm_0"])), p["conv1"])
    h = h + ref_dense(cond, p["cond_proj"])[:, None, None, :]
    h = ref_conv3x3(swish(ref_group_norm(h, p["GroupNorm_1"])), p["conv2"])  # dropout off
    if "nin_shortcut" in p:
        x = ref_dense(x, p["nin_shortcut"])
    return x + h


def ref_attention(x, p):
    b, hh, ww, c = x.shape
    h = ref_group_norm(x, p["GroupNorm_0"]).reshape(b, hh * ww, c)
    q, k, v = (ref_dense(h, p[n]) for n in ("q", "k", "v"))
    w = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k, precision=HI) / math.sqrt(c), axis=-1)
    out = ref_dense(jnp.einsum("bij,bjc->bic", w, v, precision=HI), p["proj_out"])
    return x + out.reshape(b, hh, ww, c)


def ref_score_unet(p, z, g_t, num_layers, n_embd=128):
    t = (g_t - GAMMA_MIN) / (GAMMA_MAX - GAMMA_MIN) * 1000.0
    half = n_embd // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
    arg = t[:, None] * freqs[None, :]
    temb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg), jnp.zeros((z.shape[0], 1))], axis=1)  # + conditioning 0
    cond = swish(ref_dense(swish(ref_dense(temb, p["dense0"])), p["dense1"]))
    ws = [2.0**n * 2 * np.pi for n in (6, 7)]
    feats = jnp.stack([z * w for w in ws], axis=-1).reshape(*z.shape[:-1], -1)  # [c0 n6, c0 n7, c1 n6, ...]
    h = ref_conv3x3(jnp.concatenate([z, jnp.sin(feats), jnp.cos(feats)], axis=-1), p["conv_in"])
    hs = [h]
    for i in range(num_layers):
        hs.append(ref_resblock(hs[-1], cond, p[f"down.block_{i}"]))
    h = ref_resblock(hs[-1], cond, p["mid.block_1"])
    h = ref_attention(h, p["mid.attn_1"])
    h = ref_resblock(h, cond, p["mid.block_2"])
    for i in range(num_layers + 1):
        h = ref_resblock(jnp.concatenate([h, hs.pop()], axis=-1), cond, p[f"up.block_{i}"])
    return z + ref_conv3x3(swish(ref_group_norm(h, p["GroupNorm_0"])), p["conv_out"])


def random_reference_params(rng, num_layers, c=128, c_in=3):
    """Reference-named params, every weight random (zero-inits replaced, so each one matters)."""

    def dense(i, o, bias=True):
        d = {"kernel": rng.standard_normal((i, o)).astype(np.float32) / np.sqrt(i)}
        if bias:
            d["bias"] = 0.1 * rng.standard_normal(o).astype(np.float32)
        return d

    def conv(i, o, scale=1.0):
        return {
            "kernel": scale * rng.standard_normal((3, 3, i, o)).astype(np.float32) / np.sqrt(9 * i),
            "bias": 0.1 * rng.standard_normal(o).astype(np.float32),
        }

    def gn(ch):
        return {
            "scale": (1 + 0.1 * rng.standard_normal(ch)).astype(np.float32),
            "bias": 0.1 * rng.standard_normal(ch).astype(np.float32),
        }

    def block(i):
        d = {
            "GroupNorm_0": gn(i),
            "conv1": conv(i, c),
            "cond_proj": dense(4 * c, c, bias=False),
            "GroupNorm_1": gn(c),
            "conv2": conv(c, c, 0.3),
        }
        if i != c:
            d["nin_shortcut"] = dense(i, c)
        return d

    p = {
        "dense0": dense(c + 1, 4 * c),
        "dense1": dense(4 * c, 4 * c),
        "conv_in": conv(c_in * 5, c),
        "mid.block_1": block(c),
        "mid.block_2": block(c),
        "mid.attn_1": {
            "GroupNorm_0": gn(c),
            "q": dense(c, c),
            "k": dense(c, c),
            "v": dense(c, c),
            "proj_out": dense(c, c),
        },
        "GroupNorm_0": gn(c),
        "conv_out": conv(c, c_in, 0.3),
    }
    for i in range(num_layers):
        p[f"down.block_{i}"] = block(c)
    for i in range(num_layers + 1):
        p[f"up.block_{i}"] = block(2 * c)
    return p


def paper_model(num_layers, scan):
    m = cifar10.get_config().model
    m.num_layers, m.scan_blocks = num_layers, scan
    return get_model(m)


def _compare(num_layers, scan, hw=8, batch=2):
    rng = np.random.default_rng(num_layers)
    ref = random_reference_params(rng, num_layers)
    z = jnp.asarray(rng.standard_normal((batch, hw, hw, 3)), jnp.float32)
    g = jnp.asarray([-12.0, 3.5][:batch], jnp.float32)
    want = ref_score_unet(ref, z, g, num_layers)
    model = paper_model(num_layers, scan)
    params = from_reference({"score_model": ref}, scanned=scan)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), z, g)["params"])
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, params)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(lambda p: model.apply({"params": p}, z, g))(params)
    diff = float(jnp.max(jnp.abs(got - want)))
    scale = float(jnp.max(jnp.abs(want)))
    print(f"num_layers={num_layers} scan={scan}: max |ours - reference| = {diff:.3g} (max |output| {scale:.3g})")
    return diff, scale


@pytest.mark.parametrize("scan", [False, True])
def test_paper_unet_equals_reference_restatement_width128(scan):
    diff, scale = _compare(2, scan)
    assert diff <= 1e-5 * max(scale, 1.0)


def test_paper_unet_equals_reference_restatement_full_depth():
    diff, scale = _compare(32, True, hw=4, batch=2)
    assert diff <= 1e-4 * max(scale, 1.0)


# ------------------------------------------------------------------ embedding, schedule --------


def test_embedding_frequencies_match_closed_forms():
    t = np.array([0.0, 0.37, 1.0], np.float32)
    dim = 16
    half = dim // 2
    for freqs, n in (("half_minus_one", half - 1), ("half", half)):
        w = 10000.0 ** (-np.arange(half) / n)
        arg = 1000.0 * t[:, None].astype(np.float64) * w[None, :]
        want = np.concatenate([np.sin(arg), np.cos(arg)], axis=1)
        got = np.asarray(timestep_embedding(jnp.asarray(t), dim, freqs=freqs))
        np.testing.assert_allclose(got, want, atol=2e-4)
    # The reference's lowest frequency is exactly 10000^-1.
    e = np.asarray(timestep_embedding(jnp.asarray([1.0]), 4, scale=10000.0, freqs="half_minus_one"))
    np.testing.assert_allclose(e[0, [1, 3]], [np.sin(1.0), np.cos(1.0)], atol=1e-5)


def test_learned_linear_schedule_is_b_plus_abs_w_t():
    sched = LearnedLinearSchedule(GAMMA_MIN, GAMMA_MAX)
    t = jnp.linspace(0.0, 1.0, 11)
    params = sched.init(jax.random.PRNGKey(0), t)
    assert jax.tree.map(jnp.shape, params) == {"params": {"w": (), "b": ()}}
    np.testing.assert_allclose(
        sched.apply(params, t), GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * np.asarray(t), rtol=1e-6, atol=1e-5
    )
    for w, b in ((-4.0, 1.5), (0.25, -7.0)):
        p = {"params": {"w": jnp.float32(w), "b": jnp.float32(b)}}
        gam = np.asarray(sched.apply(p, t))
        np.testing.assert_allclose(gam, b + abs(w) * np.asarray(t), rtol=1e-6, atol=1e-6)
        assert np.all(np.diff(gam) > 0)  # strictly increasing for w != 0
        grads = jax.grad(lambda q: sched.apply(q, jnp.float32(0.3)))(p)["params"]
        np.testing.assert_allclose([grads["w"], grads["b"]], [np.sign(w) * 0.3, 1.0], rtol=1e-6)


# ---------------------------------------------------------------- scanned <-> unrolled ---------


def _small_model(scan):
    m = cifar10.get_config().model
    m.width, m.num_layers, m.norm_groups, m.scan_blocks = 32, 3, 0, scan
    return get_model(m)


def _perturbed_init(model, z, g, seed):
    p = jax.jit(model.init)(jax.random.PRNGKey(seed), z, g)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.1 * jnp.asarray(rng.standard_normal(x.shape), x.dtype), p)


@pytest.mark.slow
def test_scanned_and_unrolled_blocks_compute_the_same_function_both_ways():
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 3))
    g = jnp.array([-5.0, 1.0])
    unrolled, scanned = _small_model(False), _small_model(True)
    with jax.default_matmul_precision("highest"):
        p_u = _perturbed_init(unrolled, z, g, 0)
        p_s = stack_blocks(p_u)
        assert set(p_s) >= {"down", "up"} and not any(k.startswith(("down_", "up_")) for k in p_s)
        assert jax.tree.leaves(p_s["up"])[0].shape[0] == 4 and jax.tree.leaves(p_s["down"])[0].shape[0] == 3
        a, b = jax.jit(unrolled.apply)({"params": p_u}, z, g), jax.jit(scanned.apply)({"params": p_s}, z, g)
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(a))))
        q_s = _perturbed_init(scanned, z, g, 1)
        q_u = unstack_blocks(q_s)
        c, d = jax.jit(scanned.apply)({"params": q_s}, z, g), jax.jit(unrolled.apply)({"params": q_u}, z, g)
        np.testing.assert_allclose(c, d, atol=1e-5 * float(jnp.max(jnp.abs(c))))
    # Round trips are exact; maybe_convert_params converts only when needed, also inside a state.
    assert jax.tree.all(jax.tree.map(np.array_equal, unstack_blocks(p_s), p_u))
    state = {"params": {"model": p_u}, "opt": ({"mu": {"model": p_u}},)}
    conv = maybe_convert_params(state, scanned=True)
    assert jax.tree.structure(conv["opt"][0]["mu"]["model"]) == jax.tree.structure(p_s)
    assert maybe_convert_params(conv, scanned=True) is conv
    # The 'matrices' weight-decay mask picks the same leaves in both layouts.
    m_u = decay_mask({"model": p_u}, "matrices")
    m_s = decay_mask({"model": p_s}, "matrices")
    assert m_s["model"]["down"]["block"] == m_u["model"]["down_0"]
    assert m_s["model"]["up"]["block"] == m_u["model"]["up_0"]
    assert {k: v for k, v in m_s["model"].items() if k not in ("down", "up")} == {
        k: v for k, v in m_u["model"].items() if not k.startswith(("down_", "up_"))
    }
    assert m_u["model"]["up_0"] == {
        "conv0": {"kernel": True, "bias": False},
        "conv1": {"kernel": True, "bias": False},
        "cond_proj": {"kernel": True},
        "norm0": {"scale": False, "bias": False},
        "norm1": {"scale": False, "bias": False},
        "skip": {"kernel": True, "bias": False},
    }
    non_bias = decay_mask({"model": p_s, "schedule": {"w": jnp.float32(1), "b": jnp.float32(0)}}, "non_bias")
    assert non_bias["schedule"] == {"w": True, "b": True}  # the reference decays its schedule too
    assert non_bias["model"]["up"]["block"]["norm0"] == {"scale": True, "bias": False}


def test_dropout_under_scan_differs_per_layer():
    """With identical weights in every scanned layer, per-layer dropout keys give per-layer masks."""
    m = cifar10.get_config().model
    m.width, m.num_layers, m.norm_groups, m.scan_blocks, m.dropout = 32, 2, 0, True, 0.5
    model = get_model(m)
    z = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 4, 3))
    g = jnp.array([0.0])
    p = _perturbed_init(model, z, g, 0)
    same = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), p["down"])
    p = {**p, "down": same}
    run = jax.jit(
        lambda p: model.apply(
            {"params": p},
            z,
            g,
            train=True,
            rngs={"dropout": jax.random.PRNGKey(5)},
            capture_intermediates=lambda mdl, _: type(mdl).__name__ == "Dropout",
            mutable=["intermediates"],
        )
    )
    _, inter = run(p)
    outs = jax.tree.leaves(inter["intermediates"]["down"])
    masks = [np.asarray(o) == 0 for o in outs]
    assert masks and masks[0].shape[0] == 2  # [L, B, H, W, C]
    assert not np.array_equal(masks[0][0], masks[0][1])


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_remat_changes_memory_not_values(scan):
    """Rematerialised blocks give the same loss gradients (same dropout masks) as stored activations."""
    z = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 4, 3))
    g = jnp.array([0.5])

    def grads(remat):
        m = cifar10.get_config("small").model
        m.scan_blocks, m.remat, m.dropout = scan, remat, 0.2
        model = get_model(m)
        p = jax.jit(model.init)(jax.random.PRNGKey(0), z, g)["params"]
        loss = lambda p: jnp.sum(
            jnp.square(model.apply({"params": p}, z, g, train=True, rngs={"dropout": jax.random.PRNGKey(1)}) - z)
        )
        return jax.jit(jax.grad(loss))(p)

    for a, b in zip(jax.tree.leaves(grads(True)), jax.tree.leaves(grads(False))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
