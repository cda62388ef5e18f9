"""Text-to-image conditioning: the ADM UNet's cross-attention and pooled embedding, caption dropout and
classifier-free guidance on captions, the shapes configs, bad prompts, and the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, run_cli
from vdm.config import text_checks, validation
from vdm.config.validation import ConfigError
from vdm.models import layers, text_net
from vdm.models.unet_adm import ADMUNet
from vdm.sampling import guidance
from vdm.tasks import diffusion_model, diffusion_task

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


# ----------------------------------------------------------------------------- the diffusion model with captions


def _tiny_shapes_config(**overrides):
    config = load_config("shapes", "small")
    config.data.num_train, config.data.num_test = 48, 16
    config.training.batch_size = 4
    config.sampling.num_samples, config.sampling.num_steps = 4, 2
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


@pytest.fixture(scope="module")
def text_model():
    model, _ = diffusion_model.setup(_tiny_shapes_config())
    params = model.init_params(jax.random.PRNGKey(0))
    return model, params


def _batch(model, examples, split="train"):
    n = len(examples)
    x = jax.random.uniform(jax.random.PRNGKey(7), (n, 32, 32, 3), minval=-1, maxval=1)
    ex = jnp.asarray(examples, jnp.int32)
    return {"x": x, "label": jnp.zeros((n,), jnp.int32), "index": jnp.arange(n), "example": ex}


def test_scratch_encoder_params_live_in_the_model_params_and_train_with_it(text_model):
    model, params = text_model
    assert set(params["model"]) == {"denoiser", "text_encoder"}
    noisy = {**params, "model": _randomised(params["model"], jax.random.PRNGKey(8))}  # no zero projections
    batch = _batch(model, [0, 1, 2, 3])
    (_, terms), grads = jax.jit(lambda p: model.value_and_grad(p, batch, jax.random.PRNGKey(9)))(noisy)
    assert bool(jnp.all(jnp.isfinite(terms["total"])))
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads["model"]["text_encoder"])]
    assert max(norms) > 0 and all(np.isfinite(norms))


def test_captions_condition_the_loss_by_example(text_model):
    model, params = text_model
    noisy = {**params, "model": _randomised(params["model"], jax.random.PRNGKey(8))}
    fn = jax.jit(lambda b: model.loss_terms(noisy, b, jax.random.PRNGKey(1), train=False)["total"])
    same_x = _batch(model, [0, 0])
    other_caption = {**same_x, "example": jnp.asarray([0, 1], jnp.int32)}
    a, b = fn(same_x), fn(other_caption)
    assert float(a[0]) == float(b[0]) and abs(float(a[1]) - float(b[1])) > 1e-4  # row 1 now reads caption 1


def test_caption_dropout_is_the_empty_prompt(text_model):
    model, params = text_model
    text = model.text.batch_text({"example": jnp.asarray([0, 1, 2])}, "train")
    dropped = text_net.drop_text(text, jnp.asarray([True, False, True]))
    assert not bool(jnp.any(dropped["mask"][0])) and bool(jnp.all(dropped["mask"][1] == text["mask"][1]))
    empty = model.text.vocab.tokenize([""], length=model.text.max_length)
    np.testing.assert_array_equal(dropped["ids"][0], empty[0][0])
    noisy = _randomised(params["model"], jax.random.PRNGKey(8))
    z = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(3), (1, 32, 32, 3)), (3, 32, 32, 3))  # one z, 3 rows
    net = jax.jit(lambda t: model.network.apply({"params": noisy}, z, jnp.zeros((3,)), text=t))
    out = net(dropped)
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)  # the null condition: whatever the caption was
    assert float(jnp.max(jnp.abs(out[0] - net(text)[0]))) > 1e-4


def test_guidance_weight_zero_is_the_conditional_model_and_w_combines_linearly(text_model):
    model, params = text_model
    noisy = {**params, "model": _randomised(params["model"], jax.random.PRNGKey(8))}
    text = {k: jnp.asarray(v) for k, v in model.text.encode_prompts(["a small red circle at the top left"] * 2).items()}
    condition = {"label": None, "text": text}
    null = {"label": None, "text": text_net.null_text(text)}
    cond_fn = lambda z, t, y: model.denoise_fn(noisy, y)(z, t)
    z, t = jax.random.normal(jax.random.PRNGKey(4), (2, 32, 32, 3)), jnp.array([0.3, 0.7])
    cond, uncond = jax.jit(cond_fn)(z, t, condition), jax.jit(cond_fn)(z, t, null)
    g0 = jax.jit(guidance.cfg_denoise_fn(cond_fn, null, 0.0, y=condition))(z, t)
    np.testing.assert_allclose(g0, cond, atol=1e-5)
    w = 2.5
    gw = jax.jit(guidance.cfg_denoise_fn(cond_fn, null, w, y=condition))(z, t)
    np.testing.assert_allclose(gw, (1 + w) * cond - w * uncond, atol=1e-4)
    assert float(jnp.max(jnp.abs(cond - uncond))) > 1e-4  # the caption matters, so the check can fail


def test_bad_prompts_are_one_line_config_errors(text_model):
    model, _ = text_model
    cases = {
        "": "empty",
        "a small red circle " * 10: "max length",
        "a small magenta circle at the top left": "unknown word 'magenta'",
    }
    for prompt, needle in cases.items():
        with pytest.raises(ConfigError, match=needle) as err:
            model.text.encode_prompts([prompt])
        assert "\n" not in str(err.value)


def test_text_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="t5_folder") as err:
        text_checks.validate_text(load_config("shapes", "t5"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="lacks"):
        text_checks.check_t5_folder(str(tmp_path))
    with pytest.raises(ConfigError, match="text-conditioned"):
        text_checks.validate_text(_prompted(load_config("fashion_mnist", "small")))
    with pytest.raises(ValueError, match="not built yet"):
        load_config("shapes", "latent")
    validation.validate(load_config("shapes", "small"), device_count=1)
    text_checks.validate_text(load_config("shapes", "small"))


def _prompted(config):
    config.sampling.prompt = "a small red circle at the top left"
    return config


def test_sampler_draws_one_prompt_per_row(text_model, tmp_path):
    model, params = text_model
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red circle at the top left\n\na large blue square in the centre\n")
    config = _tiny_shapes_config(**{"sampling.prompts_file": str(prompts), "sampling.guidance_weight": 1.0})
    other = dataclasses.replace(model, config=config)
    assert np.asarray(diffusion_task.grid_labels(other, 4)).tolist() == [0, 1, 0, 1]
    samples = diffusion_task.make_sampler(other, 4)(params, jax.random.PRNGKey(0))
    assert samples.shape == (4, 32, 32, 3) and bool(jnp.all(jnp.isfinite(samples)))


# ----------------------------------------------------------------------------- the command line end to end

SHAPES_TINY = [
    "--config=configs/shapes.py:small",
    "--config.data.num_train=64",
    "--config.data.num_test=32",
    "--config.eval.batch_size=32",
    "--config.training.batch_size=8",
    "--config.training.num_steps=3",
    "--config.training.eval_every=3",
    "--config.training.checkpoint_every=3",
    "--config.training.log_every=1",
    "--config.optimizer.warmup_steps=1",
    "--config.sampling.num_steps=2",
    "--config.sampling.num_samples=4",
]


@pytest.mark.slow
def test_cli_trains_samples_with_a_prompt_and_evaluates_a_text_model(tmp_path):
    wd = str(tmp_path / "run")
    proc = run_cli(SHAPES_TINY + [f"--workdir={wd}"], timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "-log p(x | caption)" in proc.stderr and "'scratch'" in proc.stderr
    evals = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl")) if "eval/bpd" in line]
    assert evals and np.isfinite(evals[-1]["eval/bpd"]) and evals[-1]["eval/num_examples"] == 32
    assert os.path.exists(os.path.join(wd, "samples", "step_0000003.png"))
    prompt = ["--config.sampling.prompt=a small red circle at the top left", "--config.sampling.guidance_weight=2"]
    proc = run_cli(SHAPES_TINY + [f"--workdir={wd}", "--mode=sample", *prompt], timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = proc.stdout.strip().splitlines()[-1]
    assert png.endswith(".png") and os.path.exists(png) and os.path.exists(png[:-4] + ".npz")
    drawn = np.load(png[:-4] + ".npz")
    assert np.all(np.isfinite(drawn["samples"]))
    assert list(drawn["prompts"]) == ["a small red circle at the top left"] * len(
        drawn["samples"]
    )  # for prompt accuracy
    proc = run_cli(SHAPES_TINY + [f"--workdir={wd}", "--mode=eval"], timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.isfinite(json.loads(proc.stdout[proc.stdout.index("{") :])["eval/bpd"])
    assert "-log p(x | caption)" in proc.stderr
    bad = run_cli(SHAPES_TINY + [f"--workdir={wd}", "--mode=sample", "--config.sampling.prompt=a magenta circle"])
    assert bad.returncode == 1 and "unknown word 'magenta'" in bad.stderr
    assert len([line for line in bad.stderr.splitlines() if line.startswith("error:")]) == 1


def test_cli_refuses_t5_without_its_folder_in_one_line(tmp_path):
    proc = run_cli(["--config=configs/shapes.py:t5", f"--workdir={tmp_path / 'run'}"])
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "config.text.t5_folder" in errors[0], proc.stderr[-2000:]
