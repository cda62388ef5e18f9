"""Tests of vdm.models: denoisers, learned schedule, variance-minimising update, classifier."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vdm.core.schedule_gradient import variance_minimizing_grads
from vdm.models import MODEL_NAMES, get_model, layers
from vdm.models.classifier import NoisyClassifier
from vdm.models.schedule import LearnedSchedule

NUM_CLASSES = 3
SHAPES = {
    "vdm_unet": (2, 8, 8, 3),
    "adm_unet": (2, 16, 16, 3),
    "dit": (2, 8, 8, 3),
    "uvit": (2, 8, 8, 3),
    "mlp": (4, 2),
}


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    cfg = dict(
        name=name,
        width=8,
        num_layers=1,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_heads=2,
        dropout=0.3,
        fourier_features=True,
        fourier_min=6,
        fourier_max=7,
        num_classes=NUM_CLASSES,
        gamma_min=-13.3,
        gamma_max=5.0,
        embedding_freqs="half",
        norm_groups=0,
        residual_output=False,
        cond_proj_bias=True,
        cond_proj_zero_init=False,
        scan_blocks=False,
        remat=False,
        patch_size=2,
        mlp_ratio=2.0,
        time_input="gamma",
        # Keys the nets must ignore.
        parameterization="eps",
        schedule="linear_logsnr",
        label_dropout=0.1,
        learn_endpoints=False,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def perturb(tree, seed, scale=0.3):
    """Add N(0, scale^2) noise (numpy, nothing to compile) to every leaf: removes the zero init."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), tree)


@functools.cache
def build(name):
    """Model `name` initialised once (compiles are the cost of this file)."""
    model = get_model(model_config(name))
    z = jax.random.normal(jax.random.key(0), SHAPES[name])
    gamma = jnp.linspace(-8.0, 3.0, z.shape[0])
    capture = lambda mdl, _: isinstance(mdl, (layers.AttnBlock, layers.ResnetBlock))
    # init_with_output: the fresh prediction comes from the same compiled program.
    init = functools.partial(model.init_with_output, capture_intermediates=capture, mutable=True)
    out0, variables = jax.jit(init)({"params": jax.random.key(1, impl="unsafe_rbg")}, z, gamma)  # quick to compile
    variables = dict(variables)
    inter = variables.pop("intermediates", {})
    # One uniform signature, so calls share compiled programs:
    # apply(variables, z, gamma, y, key, train=...).
    apply = jax.jit(
        lambda v, z, g, y, key, train: model.apply(v, z, g, y, train=train, rngs={"dropout": key}),
        static_argnames="train",
    )
    return dict(
        name=name,
        model=model,
        z=z,
        gamma=gamma,
        v=variables,
        out0=out0,
        vp=perturb(variables, 2),
        apply=apply,
        inter=inter,
    )


@pytest.fixture(params=list(SHAPES))
def built(request):
    return build(request.param)


def block_outputs(inter):
    """(spatial size, channels) of every captured ResnetBlock / AttnBlock output."""
    res, attn = [], []
    for path, x in jax.tree_util.tree_flatten_with_path(inter)[0]:
        keys = [str(getattr(p, "key", "")) for p in path]
        (attn if any(k.endswith("attn") for k in keys) else res).append((x.shape[1], x.shape[-1]))
    return res, attn


def test_fresh_model_predicts_exactly_zero_with_shape_of_z(built):
    out = built["out0"]
    assert out.shape == built["z"].shape
    assert np.all(np.asarray(out) == 0.0)
    out_p = built["apply"](built["vp"], built["z"], built["gamma"], None, jax.random.key(0), train=False)
    assert out_p.shape == built["z"].shape
    assert np.all(np.isfinite(out_p)) and np.any(np.asarray(out_p) != 0.0)


def test_dropout_random_in_train_deterministic_in_eval(built):
    apply, vp, z, g = built["apply"], built["vp"], built["z"], built["gamma"]
    y = jnp.zeros(z.shape[0], jnp.int32)
    ka, kb = jax.random.key(10), jax.random.key(11)
    tr_a = apply(vp, z, g, y, ka, train=True)
    tr_a2 = apply(vp, z, g, y, ka, train=True)
    tr_b = apply(vp, z, g, y, kb, train=True)
    ev_a = apply(vp, z, g, y, ka, train=False)
    ev_b = apply(vp, z, g, y, kb, train=False)
    assert np.array_equal(tr_a, tr_a2)
    assert np.max(np.abs(tr_a - tr_b)) > 1e-3
    assert np.array_equal(ev_a, ev_b)
    assert np.max(np.abs(tr_a - ev_a)) > 1e-3


def test_null_class_and_label_and_gamma_conditioning(built):
    apply, vp, z, g = built["apply"], built["vp"], built["z"], built["gamma"]
    b, key = z.shape[0], jax.random.key(0)
    out_none = apply(vp, z, g, None, key, train=False)
    out_null = apply(vp, z, g, jnp.full((b,), NUM_CLASSES, jnp.int32), key, train=False)
    out_0 = apply(vp, z, g, jnp.zeros((b,), jnp.int32), key, train=False)
    out_1 = apply(vp, z, g, jnp.ones((b,), jnp.int32), key, train=False)
    out_g = apply(vp, z, g + 1.0, jnp.ones((b,), jnp.int32), key, train=False)
    np.testing.assert_array_equal(out_none, out_null)
    # Every example, not just the batch as a whole, must see its label / gamma.
    axes = tuple(range(1, z.ndim))
    assert np.all(np.max(np.abs(out_0 - out_1), axis=axes) > 1e-4)
    assert np.all(np.max(np.abs(out_1 - out_g), axis=axes) > 1e-4)


def test_adm_unet_is_multi_resolution_with_attention_where_asked():
    res, attn = block_outputs(build("adm_unet")["inter"])
    # Level 0: 16x16 with width 8; level 1: 8x8 with width 16.
    assert {(16, 8), (8, 16)} == set(res)
    # attention_resolutions=(8,) plus the middle block, which is also at 8.
    assert set(attn) == {(8, 16)}


def test_vdm_unet_keeps_full_resolution_throughout():
    res, attn = block_outputs(build("vdm_unet")["inter"])
    num_layers = 1
    assert len(res) == num_layers + 2 + (num_layers + 1) and len(attn) == 1
    assert set(res) == set(attn) == {(8, 8)}


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(attention_resolutions=(4,)), r"valid sizes .* \(16, 8\)"),
        (dict(channel_mult=(1, 2, 2, 2, 2, 2)), "divisible"),
        (dict(channel_mult=()), "non-empty"),
        (dict(num_heads=3), "num_heads"),
        (dict(width=0), "width"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_adm_unet_rejects_invalid_architecture(overrides, match):
    model = get_model(model_config("adm_unet", **overrides))
    z = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, jax.random.key(0), z, jnp.zeros((1,)))


def test_bad_inputs_raise_clear_errors():
    model = get_model(model_config("vdm_unet", num_classes=0))
    z = jnp.zeros((2, 8, 8, 3))
    with pytest.raises(ValueError, match="gamma"):
        jax.eval_shape(model.init, jax.random.key(0), z, jnp.zeros((3,)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 8)), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="num_classes=0"):
        jax.eval_shape(model.init, jax.random.key(0), z, jnp.zeros((2,)), jnp.zeros((2,), jnp.int32))


def test_fourier_features_are_periodic_and_switchable():
    n_min, n_max = 6, 7
    z = jax.random.uniform(jax.random.key(0), (5, 3), minval=-1, maxval=1)
    f = layers.fourier_features(z, n_min, n_max)
    assert f.shape == (5, 2 * 3 * (n_max - n_min + 1))
    # sin/cos(2^n 2 pi z) has period 2^-n, which divides 2^-n_min for n >= n_min ...
    np.testing.assert_allclose(layers.fourier_features(z + 2.0**-n_min, n_min, n_max), f, atol=1e-4)
    # ... and the top frequency flips sign over half its period 2^-(n_max+1).
    np.testing.assert_allclose(
        layers.fourier_features(z + 2.0 ** -(n_max + 1), n_min, n_max)[:, 1::2], -f[:, 1::2], atol=1e-4
    )
    np.testing.assert_allclose(f[:, :6] ** 2 + f[:, 6:] ** 2, 1.0, atol=1e-5)
    for use, in_ch in ((True, 3 + 12), (False, 3)):
        model = get_model(model_config("vdm_unet", fourier_features=use))
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)))
        assert shapes["params"]["conv_in"]["kernel"].shape == (3, 3, in_ch, 8)


def test_group_count_divides_channels():
    for c in range(1, 130):
        g = layers.num_groups_for(c)
        assert c % g == 0 and 1 <= g <= 32
        assert c == 1 or c // g >= 2  # a per-channel shift must survive the norm
        assert all(c % h for h in range(g + 1, min(c // 2, 32) + 1))  # largest such
    assert layers.num_groups_for(128) == 32 and layers.num_groups_for(8) == 4


def test_get_model_rejects_unknown_name_and_missing_keys():
    with pytest.raises(ValueError) as err:
        get_model(model_config("resnet"))
    for valid in ("vdm_unet", "adm_unet", "dit", "uvit", "mlp"):
        assert valid in str(err.value)
    assert set(MODEL_NAMES) == {"vdm_unet", "adm_unet", "dit", "uvit", "mlp"}
    cfg = model_config("adm_unet")
    del cfg["channel_mult"]
    with pytest.raises(ValueError, match="channel_mult"):
        get_model(cfg)


# ---------------------------------------------------------------- schedule --


@functools.cache
def schedule_init(learn_endpoints, hidden):
    sched = LearnedSchedule(learn_endpoints=learn_endpoints, hidden=hidden)
    return sched, sched.init(jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((2,)))


def make_schedule(learn_endpoints, seed, hidden=16, scale=1.0):
    """A LearnedSchedule and its initial params plus N(0, scale^2) noise."""
    sched, params = schedule_init(learn_endpoints, hidden)
    return sched, perturb(params, seed, scale)


@pytest.mark.parametrize("learn_endpoints", [False, True])
def test_learned_schedule_endpoints_exact_and_strictly_increasing(learn_endpoints):
    sched, _ = schedule_init(learn_endpoints, 16)
    grid = jnp.linspace(0.0, 1.0, 2001)
    t22 = jnp.array([[0.3, 1.0], [0.0, 0.7]])

    @jax.jit
    def evaluate(p):
        gam, slope = jax.jvp(lambda s: sched.apply(p, s), (grid,), (jnp.ones_like(grid),))
        return (
            gam,
            slope,
            sched.apply(p, t22),
            sched.apply(p, jnp.float32(1.0)),
            sched.apply(p, method=LearnedSchedule.gamma_range),
        )

    for seed in range(4):
        _, params = make_schedule(learn_endpoints, seed)
        gam, slope, out22, out1, (gmin, gmax) = jax.device_get(evaluate(params))
        if not learn_endpoints:
            assert (gmin, gmax) == (np.float32(-13.3), np.float32(5.0))
        assert gam[0] == gmin and gam[-1] == gmax
        assert np.all(np.diff(gam) > 0) and np.all(slope > 0)
        # Exact at any position and shape, also when evaluated alone.
        assert out22.shape == (2, 2) and out22[0, 1] == gmax and out22[1, 0] == gmin
        assert out1.shape == () and out1 == gmax


def test_learned_schedule_param_groups_and_ordered_endpoints():
    sched = LearnedSchedule(gamma_min_init=-10.0, gamma_max_init=6.0, learn_endpoints=True, hidden=8)
    params = jax.jit(sched.init)(jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((2,)))
    assert set(params["params"]) == {"shape", "endpoints"}
    assert set(schedule_init(False, 16)[1]["params"]) == {"shape"}
    ends = jax.jit(functools.partial(sched.apply, method=LearnedSchedule.gamma_range))
    np.testing.assert_allclose(ends(params), (-10.0, 6.0), rtol=1e-6)
    # Gradient descent on gamma_max - gamma_min drives the gap down, never below 0.
    gap = lambda p: ends(p)[1] - ends(p)[0]
    step = jax.jit(lambda p: jax.tree.map(lambda a, d: a - 50.0 * d, p, jax.grad(gap)(p)))
    for _ in range(30):
        params = step(params)
    gmin, gmax = ends(params)
    assert gmax > gmin
    params["params"]["endpoints"]["gap_raw"] = jnp.float32(-500.0)
    gmin, gmax = ends(params)
    assert gmax > gmin
    with pytest.raises(ValueError, match="gamma_max_init"):
        jax.eval_shape(LearnedSchedule(gamma_min_init=1.0, gamma_max_init=0.0).init, jax.random.key(0), jnp.zeros(1))


# ------------------------------------------------ variance-minimising grads --


def toy_loss(g, gp, c):
    """L = 1/2 c gp s2 / (s2 + e^g) with s2 = 0.5: an explicit function of (gamma, gamma')."""
    return 0.5 * c * gp * 0.5 / (0.5 + jnp.exp(g))


def toy_partials(g, gp, c):
    """dL/dgamma and dL/dgamma' of toy_loss, by hand."""
    dm = -0.5 * jnp.exp(g) / (0.5 + jnp.exp(g)) ** 2
    return 0.5 * c * gp * dm, 0.5 * c * 0.5 / (0.5 + jnp.exp(g))


@pytest.mark.parametrize("learn_endpoints", [False, True])
def test_variance_grads_match_direct_gradient_of_mean_squared_loss(learn_endpoints):
    sched, params = make_schedule(learn_endpoints, seed=3, hidden=8, scale=0.5)
    kt, kc = jax.random.split(jax.random.key(4))
    t = jax.random.uniform(kt, (32,))
    c = 1.0 + jax.random.uniform(kc, (32,))

    # Direct route: gamma' per example by reverse-mode grad of a scalar fn, then
    # jax.grad of mean(L^2) w.r.t. all params.
    @jax.jit
    def mean_sq(p):
        g = sched.apply(p, t)
        gp = jax.vmap(jax.grad(lambda s: sched.apply(p, s)))(t)
        return jnp.mean(toy_loss(g, gp, c) ** 2)

    direct = jax.jit(jax.grad(mean_sq))(params)

    @jax.jit
    def via_vjp(p, endpoint_grad):
        g, gp = jax.jvp(lambda s: sched.apply(p, s), (t,), (jnp.ones_like(t),))
        dg, dgp = toy_partials(g, gp, c)
        return variance_minimizing_grads(sched.apply, p, t, toy_loss(g, gp, c), dg, dgp, endpoint_grad)

    endpoint_grad = {"gamma_min": jnp.float32(0.25), "gap_raw": jnp.float32(-1.5)} if learn_endpoints else None
    got = via_vjp(params, endpoint_grad)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(direct["params"]["shape"]))
    assert scale > 0
    # float32: agree to 1e-3 relative, up to 1e-3 of the largest component.
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-3, atol=1e-3 * scale),
        got["params"]["shape"],
        direct["params"]["shape"],
    )
    if learn_endpoints:
        assert float(got["params"]["endpoints"]["gap_raw"]) == -1.5
        zero = via_vjp(params, None)
        assert all(float(x) == 0.0 for x in jax.tree.leaves(zero["params"]["endpoints"]))


GAUSS_S = jnp.array([0.05, 0.3, 1.0, 3.0])  # data std per dimension


def gauss_loss(gamma, gp, x, eps):
    """L = 1/2 gamma' ||eps - eps_hat||^2 with the Bayes-optimal eps_hat for x ~ N(0, diag s^2)."""
    a2, s2 = jax.nn.sigmoid(-gamma)[:, None], jax.nn.sigmoid(gamma)[:, None]
    z = jnp.sqrt(a2) * x + jnp.sqrt(s2) * eps
    eps_hat = jnp.sqrt(s2) * z / (a2 * GAUSS_S**2 + s2)  # E[eps | z]
    return 0.5 * gp * jnp.sum((eps - eps_hat) ** 2, axis=-1)


def gauss_draw(sched, params, key, n):
    kt, kx, ke = jax.random.split(key, 3)
    t = jax.random.uniform(kt, (n,))
    x = GAUSS_S * jax.random.normal(kx, (n, GAUSS_S.size))
    eps = jax.random.normal(ke, (n, GAUSS_S.size))
    g, gp = jax.jvp(lambda s: sched.apply(params, s), (t,), (jnp.ones_like(t),))
    return t, g, gp, x, eps


def test_variance_minimizing_sgd_reduces_variance_and_keeps_mean():
    sched = LearnedSchedule(hidden=32)
    params = sched.init(jax.random.key(0), jnp.zeros((2,)))
    # E[L] = 1/2 sum_d int s^2/(s^2 + e^g) dg = 1/2 sum_d [g - log(s^2 + e^g)] from g_min to g_max.
    antideriv = lambda g: g - jnp.log(GAUSS_S**2 + jnp.exp(g))
    exact_mean = float(0.5 * jnp.sum(antideriv(5.0) - antideriv(-13.3)))
    n_eval = 50_000

    @jax.jit
    def mc_stats(p):  # common random numbers before / after
        draws = gauss_draw(sched, p, jax.random.key(99), n_eval)
        loss = gauss_loss(*draws[1:])
        return loss.mean(), loss.var(), loss.std() / np.sqrt(n_eval)

    opt = optax.adam(0.1)

    @jax.jit
    def step(p, opt_state, key):
        t, g, gp, x, eps = gauss_draw(sched, p, key, 256)
        loss = gauss_loss(g, gp, x, eps)
        # What a trainer does: one backward pass treating gamma_t, gamma'_t as inputs.
        dg, dgp = jax.grad(lambda a, b: gauss_loss(a, b, x, eps).sum(), argnums=(0, 1))(g, gp)
        grads = variance_minimizing_grads(sched.apply, p, t, loss, dg, dgp)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    mean0, var0, se0 = mc_stats(params)
    opt_state = opt.init(params)
    for i in range(40):
        params, opt_state = step(params, opt_state, jax.random.key(1000 + i))
    mean1, var1, se1 = mc_stats(params)
    assert var1 < 0.85 * var0, (var0, var1)
    assert abs(mean0 - exact_mean) < 4 * se0, (mean0, exact_mean, se0)
    assert abs(mean1 - exact_mean) < 4 * se1, (mean1, exact_mean, se1)


# -------------------------------------------------------------- classifier --


@pytest.mark.parametrize("shape", [(3, 8, 8, 1), (5, 2)])
def test_noisy_classifier_logits_shape_and_dependence_on_z_and_gamma(shape):
    clf = NoisyClassifier(num_classes=4, width=8)
    z = jax.random.normal(jax.random.key(0), shape)
    gamma = jnp.linspace(-5.0, 2.0, shape[0])
    shapes = jax.eval_shape(clf.init, jax.random.key(1), z, gamma)
    params = perturb(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes), 3)

    @jax.jit
    def logits_and_guidance(p, zz, g):
        # Classifier guidance uses grad_z log p(y=0 | z_t).
        f = lambda zz: jax.nn.log_softmax(clf.apply(p, zz, g, train=False))[:, 0].sum()
        return clf.apply(p, zz, g, train=False), jax.grad(f)(zz)

    logits, grad = logits_and_guidance(params, z, gamma)
    assert logits.shape == (shape[0], 4) and np.all(np.isfinite(logits))
    assert grad.shape == z.shape and float(jnp.abs(grad).max()) > 0
    logits_g, _ = logits_and_guidance(params, z, gamma + 1.0)
    assert np.all(np.abs(logits_g - logits).max(-1) > 1e-5)
    with pytest.raises(ValueError, match="num_classes"):
        jax.eval_shape(NoisyClassifier(num_classes=0).init, jax.random.key(0), z, gamma)


def _operand_dtypes(jaxpr, primitives):
    """Dtypes of the first operand of every equation whose primitive is in `primitives` (sub-jaxprs too)."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in primitives:
            out.append(str(eqn.invars[0].aval.dtype))
        for sub in jax.core.jaxprs_in_params(eqn.params):
            out += _operand_dtypes(sub, primitives)
    return out


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "adm_unet" else n for n in MODEL_NAMES]
)
def test_bfloat16_models_compute_in_bf16_keep_f32_params_and_match_f32(name):
    cfg = model_config(name, dropout=0.0)
    f32, bf16 = get_model(cfg), get_model(cfg, jnp.bfloat16)
    # z on the 8-bit grid, at low noise, where the Fourier features matter most.
    z = jnp.round(jax.random.uniform(jax.random.key(0), SHAPES[name], minval=-1, maxval=1) * 127.5) / 127.5
    gamma = jnp.linspace(-12.0, 3.0, z.shape[0])
    y = jnp.arange(z.shape[0]) % NUM_CLASSES
    key = jax.random.key(1, impl="unsafe_rbg")  # quick to compile (as in build); the values are perturbed below
    params = jax.jit(bf16.init)(key, z, gamma, y)["params"]
    params_f32 = jax.eval_shape(f32.init, key, z, gamma, y)["params"]  # the float32 model's tree (nothing compiled)
    assert jax.tree.structure(params) == jax.tree.structure(params_f32)
    assert {str(p.dtype) for p in jax.tree.leaves(params)} == {"float32"}  # params stay float32
    params = perturb(params, 0, scale=0.1)
    out32 = jax.jit(f32.apply)({"params": params}, z, gamma, y)  # one compiled program each, not op by op
    out16 = jax.jit(bf16.apply)({"params": params}, z, gamma, y)
    assert out16.dtype == jnp.float32 and out16.shape == z.shape
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 0 < rel < 0.05, rel  # bf16 has an 8-bit mantissa: ~0.4% per op, a few % end to end
    jaxpr = jax.make_jaxpr(lambda p: bf16.apply({"params": p}, z, gamma, y))(params).jaxpr
    matmuls = _operand_dtypes(jaxpr, ("conv_general_dilated", "dot_general"))
    assert matmuls and set(matmuls) == {"bfloat16"}, matmuls  # every conv/matmul runs in bf16
    # The Fourier features sin(2^n 2 pi z) are taken of the float32 z (a bf16 z would be off the 8-bit grid).
    assert set(_operand_dtypes(jaxpr, ("sin",))) == {"float32"}
    assert set(
        _operand_dtypes(
            jax.make_jaxpr(lambda p: f32.apply({"params": p}, z, gamma, y))(params).jaxpr,
            ("conv_general_dilated", "dot_general"),
        )
    ) == {"float32"}


@pytest.mark.parametrize("kernel,padding", [((3, 3), "SAME"), ((1, 1), "SAME"), ((3, 3), ((2, 0), (1, 1)))])
def test_loop_friendly_conv_has_lax_convolution_value_and_gradient(kernel, padding):
    """The custom-VJP convolution of scanned blocks: value, dx and dw equal autodiff of lax.conv_general_dilated."""
    from vdm.models.layers import loop_friendly_conv

    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (2, 7, 6, 5))
    w = jax.random.normal(kw, kernel + (5, 4))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)
    ours = lambda x, w: loop_friendly_conv(x, w, (1, 1), padding, dimension_numbers=dn)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    y, vjp = jax.vjp(ours, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, y.shape)
    for a, b in zip(vjp(g), vjp_ref(g)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        assert float(jnp.max(jnp.abs(b))) > 0.1


@pytest.mark.parametrize(
    "name,residual",
    [("vdm_unet", False), ("vdm_unet", True), ("adm_unet", False), ("dit", False), ("uvit", False), ("mlp", False)],
)
def test_variance_head_adds_c_channels_read_as_v_one_half_at_init(name, residual):
    """model.variance_head: twice the channels; fresh, the prediction is as without a head and v = 1/2."""
    from vdm.parameterization import split_variance

    extra = dict(residual_output=residual) if name == "vdm_unet" else {}
    z = jax.random.normal(jax.random.key(0), SHAPES[name])
    gamma = jnp.linspace(-8.0, 3.0, z.shape[0])
    model = get_model(model_config(name, variance_head="interp", **extra))
    out, _ = jax.jit(model.init_with_output)({"params": jax.random.key(1, impl="unsafe_rbg")}, z, gamma)
    assert out.shape == z.shape[:-1] + (2 * z.shape[-1],)
    for head in ("interp", "sigmoid"):  # both heads read v = 1/2 off the zero-initialised output
        pred, v = split_variance(out, head)
        np.testing.assert_array_equal(pred, z if residual else jnp.zeros_like(z))
        np.testing.assert_allclose(v, 0.5)
