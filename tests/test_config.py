"""Experiment configs: every file and variant validates, keys are documented, bad values are named."""

from __future__ import annotations

import ast
import os
import re

import pytest

from conftest import REPO_ROOT, load_config
from vdm.config import classifier_checks, validation

VARIANTS = [
    ("fashion_mnist", ""),
    ("fashion_mnist", "small"),
    ("fashion_mnist", "mnist"),
    ("fashion_mnist", "mnist,small"),
    ("fashion_mnist", "hybrid"),
    ("fashion_mnist", "hybrid,small"),
    ("fashion_mnist", "dit"),
    ("fashion_mnist", "dit,small"),
    ("fashion_mnist", "dit,classes"),
    ("fashion_mnist", "dit,hybrid"),
    ("fashion_mnist", "uvit"),
    ("fashion_mnist", "uvit,small"),
    ("cifar10", ""),
    ("cifar10", "learned"),
    ("cifar10", "small"),
    ("cifar10", "dit"),
    ("cifar10", "dit,small"),
    ("toy2d", ""),
    ("toy2d", "grid"),
    ("toy2d", "gaussian"),
    ("toy2d", "small"),
    ("shapes", ""),
    ("shapes", "small"),
    ("shapes", "t5"),
]
REQUIRED = [
    "data.dataset",
    "model.parameterization",
    "model.schedule",
    "loss.weighting",
    "training.num_steps",
    "training.batch_size",
    "training.eval_every",
    "training.checkpoint_every",
    "seed",
    "optimizer.learning_rate",
    "optimizer.ema_decay",
    "sampling.method",
    "sampling.num_steps",
    "sampling.guidance_weight",
    "sampling.class_label",
    "eval.num_steps",
    "eval.batch_size",
    "eval.method",
    "guidance.classifier_workdir",
    "sampling.grid",
    "sampling.eta",
    "sampling.order",
    "optimizer.decay_mask",
]


def _get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_every_config_variant_validates_and_has_the_required_keys(name, arg):
    config = load_config(name, arg)
    validation.validate(config, device_count=1)
    for key in REQUIRED:
        _get(config, key)


def test_fashion_mnist_variants_compose_and_unknown_ones_are_named():
    c = load_config("fashion_mnist", "mnist,small")
    assert (
        c.data.dataset == "mnist" and c.training.num_steps == load_config("fashion_mnist", "small").training.num_steps
    )
    with pytest.raises(ValueError, match="'cifar'"):
        load_config("fashion_mnist", "small,cifar")


@pytest.mark.parametrize("arg", ["", "toy2d"])
def test_noisy_classifier_configs_validate(arg):
    classifier_checks.validate_classifier(load_config("noisy_classifier", arg), device_count=1)


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "toy2d", "noisy_classifier", "shapes"])
def test_config_files_document_every_key_and_the_command_that_runs_them(name):
    path = os.path.join(REPO_ROOT, "configs", f"{name}.py")
    source = open(path).read()
    module = ast.parse(source)
    entry = "vdm.main"  # every config names its Task (config.task): one entry point trains them all
    assert f"python -m {entry} --config=configs/{name}.py --workdir=" in ast.get_docstring(module)
    lines = source.splitlines()
    undocumented = []
    in_variants = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("if ") and ("arg" in stripped or "variants" in stripped):
            in_variants = True  # variant overrides change documented keys
        if stripped.startswith("config.") and " = " in stripped and not in_variants:
            if "#" not in stripped:
                undocumented.append(stripped)
    assert not undocumented, undocumented


def test_cifar10_has_the_vdm_paper_settings():
    c = load_config("cifar10")
    assert (c.model.name, c.model.width, c.model.num_layers) == ("vdm_unet", 128, 32)
    assert c.training.batch_size == 128 and c.optimizer.learning_rate == 2e-4
    assert c.optimizer.ema_decay == 0.9999 and c.model.dropout == 0.1
    assert (c.model.gamma_min, c.model.gamma_max) == (-13.3, 5.0)
    assert (c.model.fourier_features, c.model.fourier_min, c.model.fourier_max) == (True, 6, 7)
    # google-research/vdm's ScoreUNet (model_vdm.py) and training setup (configs/cifar10.py, experiment.py).
    assert (c.model.embedding_freqs, c.model.norm_groups, c.model.residual_output) == ("half_minus_one", 32, True)
    assert (c.model.cond_proj_bias, c.model.cond_proj_zero_init) == (False, True)
    assert c.model.schedule == "learned_linear" and c.data.encoding == "bin_centres"
    assert (c.optimizer.warmup_steps, c.optimizer.grad_clip, c.optimizer.weight_decay) == (100, 0.0, 0.01)
    assert (c.optimizer.decay_mask, c.optimizer.decay, c.optimizer.b2) == ("non_bias", "constant", 0.99)
    assert c.loss.t_sampling == "antithetic" and c.eval.num_steps == 0


@pytest.mark.parametrize(
    "field,bad,valid",
    [
        ("model.parameterization", "epsilon", "'eps', 'x0', 'score', 'v'"),
        ("model.schedule", "sigmoid", "'linear_logsnr', 'cosine', 'ddpm_linear', 'ot', 'learned'"),
        ("loss.weighting", "l2", "'elbo'"),
        ("model.name", "resnet", "'vdm_unet', 'adm_unet', 'dit', 'uvit', 'mlp'"),
        ("data.dataset", "imagenet", "'fashion_mnist'"),
        ("training.dtype", "float16", "'float32', 'bfloat16'"),
        ("training.nan_policy", "ignore", "'stop', 'skip'"),
        ("sampling.method", "euler", "'ancestral'"),
        ("optimizer.decay", "linear", "'cosine', 'constant'"),
        ("model.parameterization", "velocity", "'v', 'flow'"),
        ("model.input_scaling", "edm", "'none', 'ot'"),
        ("loss.hybrid_units", "bpd", "'bits', 'nats'"),
        ("loss.weighting", "rectified", "'flow', 'eps_cosine', 'v_cosine'"),
        ("loss.t_sampling", "lognormal", "'adaptive', 'logit_normal'"),
    ],
)
def test_a_bad_choice_names_the_field_and_the_valid_choices(field, bad, valid):
    config = load_config("fashion_mnist")
    section, key = field.split(".")
    config[section][key] = bad
    with pytest.raises(validation.ConfigError) as err:
        validation.validate(config)
    message = str(err.value)
    assert f"config.{field}={bad!r} is not valid; choose one of" in message
    assert valid in message


@pytest.mark.parametrize(
    "changes,needle",
    [
        (
            {"loss.objective": "hybrid"},
            "needs config.model.variance_head 'interp' or 'sigmoid' and config.loss.num_steps",
        ),
        ({"model.variance_head": "interp"}, "is trained only by a discrete-time objective"),
        (
            {"loss.num_steps": 100, "loss.weighting": "sigmoid"},
            "trains the T-step discrete ELBO: it needs config.loss.weighting='elbo'",
        ),
        ({"loss.num_steps": 100, "loss.weighting": "elbo", "model.schedule": "learned"}, "is for continuous time"),
        ({"loss.t_sampling": "adaptive", "model.schedule": "learned_linear"}, "a learned schedule plays the same"),
        ({"loss.t_sampling": "adaptive", "loss.adaptive_uniform": 0.0}, "config.loss.adaptive_uniform=0.0 must be > 0"),
        ({"loss.t_sampling": "stratified"}, "choose one of 'uniform', 'antithetic', 'adaptive'"),
        ({"model.variance_head": "softplus"}, "choose one of 'none', 'interp', 'sigmoid'"),
        ({"eval.variance": "learned"}, "needs a model with a variance head"),
        ({"eval.t_sampling": "importance", "eval.num_steps": 10}, "is for the continuous-time ELBO"),
        ({"sampling.method": "ddim", "sampling.variance": "learned"}, "needs a model with a variance head"),
        (
            {"loss.t_sampling": "logit_normal", "loss.num_steps": 100, "loss.weighting": "elbo"},
            "draws continuous t: it needs",
        ),
        ({"loss.t_sampling": "logit_normal", "loss.logit_normal_std": 0.0}, "logit_normal_std=0.0 must be > 0"),
        ({"model.schedule": "learned", "model.schedule_shift": 2.0}, "shifts a fixed schedule"),
        ({"model.schedule_shift": -1.0}, "config.model.schedule_shift=-1.0 must be > 0"),
        ({"sampling.method": "ode", "sampling.space": "vp"}, "space must be one of ('edm', 'ot')"),
        ({"sampling.grid": "uniform_tau"}, "'uniform_ot'"),
    ],
)
def test_the_objective_rules_name_what_to_set(changes, needle):
    """loss.objective / num_steps / t_sampling, the variance head and the eval keys: one line naming the fix."""
    config = load_config("fashion_mnist")
    for field, value in changes.items():
        section, key = field.split(".")
        config[section][key] = value
    with pytest.raises(validation.ConfigError) as err:
        validation.validate(config)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_hybrid_variant_is_improved_ddpm():
    c = load_config("fashion_mnist", "hybrid")
    assert (c.model.schedule, c.model.variance_head, c.loss.objective, c.loss.weighting) == (
        "cosine",
        "interp",
        "hybrid",
        "simple",
    )
    assert c.loss.num_steps == 1000 and c.loss.hybrid_lambda == 0.001 and c.sampling.variance == "learned"
    assert validation.resolve(c).eval.variance == "learned"
    assert validation.resolve(load_config("fashion_mnist")).eval.variance == "small"
    assert (
        c.loss.hybrid_units == "bits"
    )  # lambda on L_vlb in bits, as improved-diffusion (tests/test_hybrid_reference.py)


def test_the_flow_variant_is_sd3s_rectified_flow():
    c = load_config("fashion_mnist", "flow")
    m, loss, s = c.model, c.loss, c.sampling
    assert (m.schedule, m.parameterization, m.input_scaling, m.schedule_shift) == ("ot", "flow", "ot", 1.0)
    assert (loss.weighting, loss.t_sampling, loss.logit_normal_mean, loss.logit_normal_std) == (
        "flow",
        "logit_normal",
        0.0,
        1.0,
    )
    assert (s.method, s.grid, c.eval.num_steps) == ("ddim", "uniform_ot", 0)
    validation.validate(c)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("training.batch_size", 12, "divisible by the number of devices (8)"),
        ("training.num_steps", 0, "must be >= 1"),
        ("optimizer.ema_decay", 1.0, "must be < 1"),
        ("model.dropout", -0.1, "must be >= 0"),
        ("training.eval_every", 7, "multiple of config.training.steps_per_call"),
        ("model.gamma_max", -20.0, "must exceed config.model.gamma_min"),
        ("model.label_dropout", 0.1, "needs a class-conditional model"),
        ("model.learn_endpoints", True, "needs config.model.schedule='learned'"),
    ],
)
def test_ranges_and_cross_field_rules(field, value, needle):
    config = load_config("fashion_mnist")
    if field == "training.eval_every":
        config.training.steps_per_call = 2
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(validation.ConfigError) as err:
        validation.validate(config, device_count=8)
    assert needle in str(err.value)


def test_model_kind_must_fit_the_data():
    config = load_config("toy2d")
    config.model.name = "vdm_unet"
    with pytest.raises(validation.ConfigError, match="use 'mlp' for the flat toy data sets"):
        validation.validate(config)


def test_locked_config_rejects_a_misspelt_key():
    config = load_config("fashion_mnist")
    config.lock()
    with pytest.raises(AttributeError, match="paramterization"):
        config.model.paramterization = "x0"


def test_a_config_missing_a_key_is_named_not_a_traceback():
    """An old config.json (before config.eval.method existed) fails validation with the key's name."""
    import ml_collections

    config = load_config("fashion_mnist").to_dict()
    del config["eval"]["method"]
    with pytest.raises(validation.ConfigError, match="no key 'method'.*older version"):
        validation.validate(ml_collections.ConfigDict(config))
    old_classifier = load_config("noisy_classifier").to_dict()
    del old_classifier["optimizer"]  # the msgpack-era classifier config.json had none
    with pytest.raises(validation.ConfigError, match="no key 'optimizer'"):
        classifier_checks.validate_classifier(ml_collections.ConfigDict(old_classifier))


# ----------------------------------------------------------------------------- the base config and sampler options


def _assignments_without_comment(path):
    """Key assignments (`x.key = ...`) of a config file's code that carry no comment."""
    lines = open(path).read().splitlines()
    return [
        ln.strip()
        for ln in lines
        if re.match(r"\s+\w+(\.\w+)+ = ", ln)
        and "#" not in ln
        and not re.search(r" = (ml_collections\.ConfigDict\(\)|_\w+\()", ln)
    ]  # sections


def test_the_base_config_documents_every_key_and_derived_configs_only_override_it():
    """configs/base.py comments every key; each experiment config's keys are the base's (of its kind)."""
    assert not _assignments_without_comment(os.path.join(REPO_ROOT, "configs", "base.py"))
    base = load_config("base", "image")
    for name, arg, kind in (("fashion_mnist", "", "image"), ("cifar10", "small", "image"), ("toy2d", "grid", "toy")):
        keys = set(_flat(load_config(name, arg).to_dict()))
        assert keys == set(_flat(load_config("base", kind).to_dict())), (name, arg)
    assert load_config("fashion_mnist").to_dict() == base.to_dict()
    with pytest.raises(ValueError, match="'image', 'toy'"):
        load_config("base", "tiny")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


_PARSE = """
import json, sys
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file("config", None, "config", lock_config=True)
flags.FLAGS(sys.argv)
c = flags.FLAGS.config
try:
    c.sampling.etaa = 0.5
except AttributeError as e:
    print("locked:", e)
print(json.dumps(c.sampling.to_dict()))
"""


def _parse(argv, cwd):
    """config.sampling of `argv`'s --config, parsed by ml_collections.config_flags (locked, as vdm.main), in `cwd`."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _PARSE] + argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )
    return proc, (json.loads(proc.stdout.splitlines()[-1]) if proc.returncode == 0 else None)


def test_command_line_sets_unset_sampler_options_from_any_working_directory(tmp_path):
    """Loaded by path from another directory, configs/fashion_mnist.py takes overrides of its unset (None)
    sampler options; a locked config still refuses a misspelt key, on the command line or in code."""
    path = os.path.join(REPO_ROOT, "configs", "fashion_mnist.py")
    proc, s = _parse(
        [
            f"--config={path}:small",
            "--config.sampling.method=ddim",
            "--config.sampling.eta=0.5",
            "--config.sampling.grid=edm",
            "--config.sampling.clip_x0=True",
            "--config.sampling.order=3",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (s["eta"], s["grid"], s["clip_x0"], s["order"], s["variance"]) == (0.5, "edm", True, 3, None)
    assert "locked:" in proc.stdout and "etaa" in proc.stdout
    proc, _ = _parse([f"--config={path}", "--config.sampling.etta=0.5"], tmp_path)
    assert proc.returncode != 0 and "etta" in proc.stderr
    proc, _ = _parse([f"--config={path}", "--config.sampling.eta=half"], tmp_path)
    assert proc.returncode != 0 and "half" in proc.stderr  # an unset option keeps its type
    config = load_config("fashion_mnist")
    config.sampling.method, config.sampling.eta = "ddim", 0.5
    validation.validate(config)


def test_a_config_naming_one_option_gets_the_methods_defaults_for_the_rest():
    """resolve() fills the method's other options with exactly what sample() uses when not given them."""
    import jax
    import numpy as np

    from vdm import sampling, schedules
    from vdm.core import analytic

    config = load_config("toy2d", "small")
    config.sampling.method, config.sampling.eta = "ddim", 0.5
    s = validation.resolve(config).sampling
    assert s.eta == 0.5 and s.grid == "uniform_t" and s.variance == "small"  # ddim's noise: eta^2 x the posterior's
    recorded = {k: s[k] for k in sampling.option_names("ddim")}
    assert None not in [v for k, v in recorded.items() if k != "dynamic_threshold"]
    sched = schedules.linear_logsnr()
    fn = analytic.denoise_fn(analytic.default_mixture(), sched)
    draw = lambda **o: np.asarray(
        sampling.sample(fn, (8, 2), jax.random.key(0), schedule=sched, method="ddim", num_steps=5, **o)
    )
    np.testing.assert_array_equal(draw(eta=0.5), draw(**sampling.options_from_config(config.sampling)))
    np.testing.assert_array_equal(draw(eta=0.5), draw(**recorded))
    assert load_config("toy2d", "small").sampling.eta is None  # the file itself leaves it unset


def test_the_resolved_options_are_recorded_in_config_json(tmp_path):
    import json

    from vdm import sampling

    config = load_config("fashion_mnist", "small")
    config.sampling.method, config.sampling.order = "dpm_solver", 3
    validation.save_config(config, str(tmp_path))
    saved = json.load(open(tmp_path / "config.json"))["sampling"]
    expect = sampling.resolve_options("dpm_solver", {"order": 3})
    assert {k: saved[k] for k in sampling.option_names("dpm_solver")} == {
        k: expect[k] for k in sampling.option_names("dpm_solver")
    }
    assert saved["grid"] == "uniform_logsnr" and saved["order"] == 3 and saved["eta"] is None
    assert config.sampling.grid is None  # the given config is left as it was


def test_bad_sampler_options_fail_in_one_line_naming_the_valid_values():
    for key, value, needle in (
        ("grid", "log", "'uniform_t', 'uniform_logsnr', 'edm'"),
        ("variance", "learned", "choose one of 'small', 'large'"),
        ("eta", 2.0, "eta must lie in [0, 1]"),
    ):
        config = load_config("fashion_mnist")
        config.sampling.method = "ddim" if key == "eta" else "ancestral"
        config.sampling[key] = value
        with pytest.raises(validation.ConfigError) as err:
            validation.validate(config)
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_an_adm_unet_whose_levels_do_not_fit_the_image_is_a_one_line_config_error():
    """28x28 images halve twice (channel_mult of 3 levels) but not three times: the data check names the rule."""
    from types import SimpleNamespace

    config = load_config("fashion_mnist")
    info = SimpleNamespace(name="fashion_mnist", shape=(28, 28, 1), discrete=True, num_classes=10)
    validation.validate_for_data(config, info)  # (1, 2, 4): 28 -> 14 -> 7
    config.model.channel_mult = (1, 2, 4, 8)
    with pytest.raises(validation.ConfigError, match="divisible by 2\\^\\(levels-1\\) = 8") as err:
        validation.validate_for_data(config, info)
    assert "\n" not in str(err.value) and "adm_unet" in str(err.value)
