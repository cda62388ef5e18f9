"""DiT (vdm.models.dit): equal to facebookresearch/DiT as a function, scanned = unrolled, the variance head, text
conditioning as an option, and the transformer trained, evaluated and sampled through the diffusion model.

The fixture (tests/fixtures/dit_reference.npz) was written by scripts/make_dit_fixture.py, which runs their
models.py (PyTorch, in a scratch venv) on two tiny configs with random non-zero weights; no torch here.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, run_cli
from vdm.core import schedules
from vdm.core.parameterization import split_variance
from vdm.data import pipeline
from vdm.infra import parallel
from vdm.models import convert, dit
from vdm.tasks import diffusion_model as dm
from vdm.tasks import diffusion_task

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "dit_reference.npz")
CONFIGS = ("sigma", "plain")  # learn_sigma, null class, patch 2 / neither, patch 4 (scripts/make_dit_fixture.py)


@functools.cache
def reference(name: str) -> dict:
    """The fixture's entries of config `name`: kwargs, state dict, x (NHWC), t, y, their output (NHWC)."""
    with np.load(FIXTURE) as f:
        sd = {k.split("/sd/", 1)[1]: f[k] for k in f.files if k.startswith(f"{name}/sd/")}
        out = {k: f[f"{name}/{k}"] for k in ("x", "t", "y", "out")}
        return {"kwargs": json.loads(str(f[f"{name}/kwargs"])), "sd": sd, **out}


@pytest.mark.parametrize("name", CONFIGS)
def test_dit_equals_facebookresearch_dit_given_the_same_weights_input_timestep_and_class(name):
    ref = reference(name)
    module, variables, gamma_of_t = dit.from_reference(ref["sd"], **ref["kwargs"])
    gamma = gamma_of_t(jnp.asarray(ref["t"]))
    out = jax.jit(module.apply)(variables, jnp.asarray(ref["x"]), gamma, jnp.asarray(ref["y"]))
    assert out.shape == ref["out"].shape and np.abs(ref["out"]).max() > 1.0  # a non-trivial function
    np.testing.assert_allclose(np.asarray(out), ref["out"], rtol=1e-5, atol=1e-4)  # float32 (max abs err ~3e-5)
    if ref["kwargs"]["learn_sigma"]:  # their [eps, variance values] = our prediction and the 'interp' head's raw r
        c = ref["kwargs"]["in_channels"]
        eps, v = split_variance(out, "interp")
        np.testing.assert_allclose(eps, ref["out"][..., :c], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(v, (ref["out"][..., c:] + 1) / 2, rtol=1e-5, atol=1e-4)  # LEARNED_RANGE's frac


def test_the_2d_sincos_positions_are_their_pos_embed():
    ref = reference("sigma")
    grid = ref["kwargs"]["input_size"] // ref["kwargs"]["patch_size"]
    theirs = ref["sd"]["pos_embed"].reshape(grid * grid, -1)
    np.testing.assert_allclose(dit.sincos_2d(theirs.shape[1], grid, grid), theirs, atol=1e-6)


def test_gamma_of_t_is_their_schedules_log_snr_on_the_integers_linear_between_and_inverted_exactly():
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # DiT's diffusion: the linear schedule, T = 1000
    abar = np.cumprod(1 - betas)  # their alphas_cumprod[t]
    k = np.arange(1000)
    gamma = np.asarray(dit.gamma_of_t(jnp.asarray(k, jnp.float32)))
    np.testing.assert_allclose(gamma, np.log((1 - abar) / abar), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(gamma, schedules.ddpm_linear()((k + 1) / 1000), rtol=1e-5, atol=1e-4)  # our grid
    frac = jnp.linspace(-1.0, 999.9, 4001)
    g = dit.gamma_of_t(frac)
    assert bool(jnp.all(jnp.diff(g) > 0))
    lo = np.floor(np.asarray(frac)).clip(0, 998).astype(int)
    w = np.asarray(frac) - lo
    np.testing.assert_allclose(g, (1 - w) * gamma[lo] + w * gamma[lo + 1], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(schedules.ddpm_timestep_of_gamma(gamma), k)  # exact at their integer steps
    np.testing.assert_allclose(schedules.ddpm_timestep_of_gamma(g), frac, atol=2e-4)


def _perturbed(module, z, gamma, y, seed=0, **kw):
    """module's init params with N(0, 0.3^2) added to every leaf (no zero-initialised layer left)."""
    params = jax.jit(module.init)(jax.random.key(seed), z, gamma, y, **kw)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + jnp.asarray(0.3 * rng.standard_normal(p.shape), p.dtype), params)


def _small(**kw) -> dit.DiT:
    return dit.DiT(
        **{"width": 16, "num_layers": 3, "num_heads": 2, "patch_size": 2, "mlp_ratio": 2.0, "num_classes": 3, **kw}
    )


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_blocks_equal_unrolled_with_the_same_weights_value_and_gradient(remat):
    z = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    gamma, y = jnp.array([-5.0, 2.0]), jnp.array([1, 3])
    unrolled, scanned = _small(remat=remat), _small(remat=remat, scan_blocks=True)
    params = _perturbed(unrolled, z, gamma, y)
    stacked = convert.stack_blocks(params)
    assert set(stacked) - set(params) == {"blocks"} and stacked["blocks"]["block"]["fc1"]["kernel"].shape[0] == 3
    assert jax.tree.structure(stacked) == jax.tree.structure(
        jax.eval_shape(scanned.init, jax.random.key(0), z, gamma, y)["params"]
    )
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, z, gamma, y) ** 2)
    v_u, g_u = jax.jit(jax.value_and_grad(loss(unrolled)))(params)
    v_s, g_s = jax.jit(jax.value_and_grad(loss(scanned)))(stacked)
    np.testing.assert_allclose(v_s, v_u, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), convert.unstack_blocks(g_s), g_u)
    assert convert.is_scanned(stacked) and convert.is_scanned(params) is False
    assert convert.block_layout(["['model']['blocks']['block']['fc1']['kernel']"]) == "scanned"
    mask = convert.decay_mask({"model": stacked}, "matrices")  # the [L] axis does not make a bias a matrix
    assert not mask["model"]["blocks"]["block"]["fc1"]["bias"] and mask["model"]["blocks"]["block"]["fc1"]["kernel"]


def test_the_variance_head_doubles_the_channels_and_reads_v_one_half_fresh():
    z = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    out, variables = jax.jit(_small(variance_head=True).init_with_output)(jax.random.key(1), z, jnp.zeros(2))
    assert out.shape == (2, 8, 8, 2)
    pred, v = split_variance(out, "interp")
    np.testing.assert_array_equal(pred, 0.0)  # adaLN-Zero and the zero final layer: a fresh DiT predicts 0
    np.testing.assert_allclose(v, 0.5)


def test_text_conditioning_is_a_block_option_reading_the_unmasked_context_and_the_pooled_embedding():
    z = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    gamma, y = jnp.array([-1.0, 1.0]), jnp.array([0, 2])
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 12))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    pooled = jax.random.normal(jax.random.key(2), (2, 12))
    for scan in (False, True):
        model = _small(text_conditioning=True, scan_blocks=scan)
        params = _perturbed(model, z, gamma, y, context=ctx, context_mask=mask, pooled=pooled)
        run = jax.jit(lambda c, p: model.apply({"params": params}, z, gamma, y, context=c, context_mask=mask, pooled=p))
        base = run(ctx, pooled)
        np.testing.assert_allclose(run(ctx.at[:, 4].set(9.0), pooled), base, atol=1e-6)  # masked tokens are unseen
        assert float(jnp.min(jnp.max(jnp.abs(run(ctx.at[:, 0].add(1.0), pooled) - base), axis=(1, 2, 3)))) > 1e-4
        assert float(jnp.min(jnp.max(jnp.abs(run(ctx, pooled + 1.0) - base), axis=(1, 2, 3)))) > 1e-4
    with pytest.raises(ValueError, match="context"):
        jax.eval_shape(_small(text_conditioning=True).init, jax.random.key(0), z, gamma, y)
    with pytest.raises(ValueError, match="context"):
        jax.eval_shape(_small().init, jax.random.key(0), z, gamma, y, context=ctx, pooled=pooled)


def test_bad_architectures_fail_naming_the_key():
    z, gamma = jnp.zeros((1, 8, 8, 1)), jnp.zeros(1)
    for kw, match in (
        ({"patch_size": 3}, "patch_size=3"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"time_input": "t"}, "time_input"),
    ):
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(_small(**kw).init, jax.random.key(0), z, gamma)


def _steps(config, shape=(28, 28, 1), num_steps=2):
    """Build the diffusion model of `config` on synthetic 8-bit data, train num_steps, evaluate a batch and sample:
    (train losses, per-example eval nats, samples)."""
    info = pipeline.DatasetInfo("synthetic", shape, 1000, 100, 10, True, encoding=config.data.encoding)
    model, mesh = dm.build(config, info), parallel.make_mesh()
    state = parallel.replicate(parallel.to_host(model.init_state(jax.random.PRNGKey(0))), mesh)
    rng = np.random.default_rng(0)
    b = config.training.batch_size
    batch = {
        "x": (rng.integers(0, 256, (b, *shape)) / 127.5 - 1).astype(np.float32),
        "label": rng.integers(0, 10, (b,)).astype(np.int32),
        "index": np.arange(b, dtype=np.int32),
    }
    step = parallel.data_parallel(lambda s, x: dm.train_step(model, s, x), mesh)
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, parallel.shard_batch(jax.tree.map(lambda a: a[None], batch), mesh, leading_axes=1))
        losses.append(float(np.mean(metrics["loss"])))
    evaluate = parallel.data_parallel_eval(lambda p, x, k: dm.eval_step(model, p, x, k)["total"], mesh)
    nats = evaluate(state.ema_params, parallel.shard_batch(batch, mesh), jax.random.PRNGKey(1))
    samples = diffusion_task.make_sampler(model, 4)(state.ema_params, jax.random.PRNGKey(2))
    return losses, np.asarray(nats), np.asarray(samples)


CASES = {  # (variants, overrides): parameterisations, weightings, samplers, the variance head, the flow recipe
    "eps-simple-ancestral": ("dit,small", {}),
    "x0-elbo-ddim-scanned": (
        "dit,small",
        {
            "model.parameterization": "x0",
            "loss.weighting": "elbo",
            "sampling.method": "ddim",
            "model.scan_blocks": True,
        },
    ),
    "v-sigmoid-pc-classes": (
        "dit,small,classes",
        {
            "model.parameterization": "v",
            "loss.weighting": "sigmoid",
            "sampling.method": "pc",
            "sampling.guidance_weight": 1.0,
        },
    ),
    "hybrid-learned-variance": ("dit,small,hybrid", {"sampling.num_steps": 3}),
    "flow-dpm_solver": ("dit,small,flow", {"sampling.method": "dpm_solver"}),
}


@pytest.mark.parametrize(  # ~30 s each on 2 CPU cores: `make test` runs the default and the variance head
    "case",
    [
        c if c in ("eps-simple-ancestral", "hybrid-learned-variance") else pytest.param(c, marks=pytest.mark.slow)
        for c in CASES
    ],
)
def test_a_tiny_dit_config_trains_evaluates_and_samples_through_the_diffusion_model(case):
    variants, overrides = CASES[case]
    config = load_config("fashion_mnist", variants)
    config.training.batch_size, config.sampling.num_steps = 4, 3
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        config[section][key] = value
    from vdm.config import validation

    validation.validate(config, device_count=1)
    assert config.model.name == "dit"
    losses, nats, samples = _steps(config)
    assert all(np.isfinite(losses)) and nats.shape == (4,) and np.all(np.isfinite(nats)) and np.all(nats > 0)
    assert samples.shape == (4, 28, 28, 1) and np.all(np.isfinite(samples))


def test_model_name_switches_the_backbone_and_a_bad_one_is_one_line_listing_dit(tmp_path):
    proc = run_cli(["--config=configs/fashion_mnist.py:small", f"--workdir={tmp_path}", "--config.model.name=resnet"])
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert (
        "config.model.name='resnet' is not valid; choose one of 'vdm_unet', 'adm_unet', 'dit', 'uvit', 'mlp'"
        in lines[0]
    )
    assert not os.listdir(tmp_path)
