"""Experiment configs: every file and variant validates, keys are documented, bad values are named."""

from __future__ import annotations

import ast
import os

import pytest

from conftest import REPO_ROOT, load_config
from vdm import config_utils

VARIANTS = [("fashion_mnist", ""), ("fashion_mnist", "small"), ("fashion_mnist", "mnist"),
            ("fashion_mnist", "mnist,small"),
            ("cifar10", ""), ("cifar10", "learned"), ("cifar10", "small"),
            ("toy2d", ""), ("toy2d", "grid"), ("toy2d", "gaussian"), ("toy2d", "small")]
REQUIRED = ["data.dataset", "model.parameterization", "model.schedule", "loss.weighting",
            "training.num_steps", "training.batch_size", "training.eval_every",
            "training.checkpoint_every", "seed", "optimizer.learning_rate", "optimizer.ema_decay",
            "sampling.method", "sampling.num_steps", "sampling.guidance_weight", "sampling.class_label",
            "eval.num_steps", "eval.batch_size", "eval.method", "guidance.classifier_workdir",
            "sampling.grid", "sampling.eta", "sampling.order", "optimizer.decay_mask"]


def _get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_every_config_variant_validates_and_has_the_required_keys(name, arg):
    config = load_config(name, arg)
    config_utils.validate(config, device_count=1)
    for key in REQUIRED:
        _get(config, key)


def test_fashion_mnist_variants_compose_and_unknown_ones_are_named():
    c = load_config("fashion_mnist", "mnist,small")
    assert c.data.dataset == "mnist" and c.training.num_steps == load_config("fashion_mnist", "small").training.num_steps
    with pytest.raises(ValueError, match="'cifar'"):
        load_config("fashion_mnist", "small,cifar")


@pytest.mark.parametrize("arg", ["", "toy2d"])
def test_noisy_classifier_configs_validate(arg):
    config_utils.validate_classifier(load_config("noisy_classifier", arg), device_count=1)


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "toy2d", "noisy_classifier"])
def test_config_files_document_every_key_and_the_command_that_runs_them(name):
    path = os.path.join(REPO_ROOT, "configs", f"{name}.py")
    source = open(path).read()
    module = ast.parse(source)
    entry = "vdm.train_classifier" if name == "noisy_classifier" else "vdm.main"
    assert f"python -m {entry} --config=configs/{name}.py --workdir=" in ast.get_docstring(module)
    lines = source.splitlines()
    undocumented = []
    in_variants = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("if ") and ("arg" in stripped or "variants" in stripped):
            in_variants = True                    # variant overrides change documented keys
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
    assert c.loss.antithetic and c.eval.num_steps == 0


@pytest.mark.parametrize("field,bad,valid", [
    ("model.parameterization", "epsilon", "'eps', 'x0', 'score', 'v'"),
    ("model.schedule", "sigmoid", "'linear_logsnr', 'cosine', 'ddpm_linear', 'learned'"),
    ("loss.weighting", "l2", "'elbo'"),
    ("model.name", "resnet", "'vdm_unet', 'adm_unet', 'mlp'"),
    ("data.dataset", "imagenet", "'fashion_mnist'"),
    ("training.dtype", "float16", "'float32', 'bfloat16'"),
    ("training.nan_policy", "ignore", "'stop', 'skip'"),
    ("sampling.method", "euler", "'ancestral'"),
    ("optimizer.decay", "linear", "'cosine', 'constant'"),
])
def test_a_bad_choice_names_the_field_and_the_valid_choices(field, bad, valid):
    config = load_config("fashion_mnist")
    section, key = field.split(".")
    config[section][key] = bad
    with pytest.raises(config_utils.ConfigError) as err:
        config_utils.validate(config)
    message = str(err.value)
    assert f"config.{field}={bad!r} is not valid; choose one of" in message
    assert valid in message


@pytest.mark.parametrize("field,value,needle", [
    ("training.batch_size", 12, "divisible by the number of devices (8)"),
    ("training.num_steps", 0, "must be >= 1"),
    ("optimizer.ema_decay", 1.0, "must be < 1"),
    ("model.dropout", -0.1, "must be >= 0"),
    ("training.eval_every", 7, "multiple of config.training.steps_per_call"),
    ("model.gamma_max", -20.0, "must exceed config.model.gamma_min"),
    ("model.label_dropout", 0.1, "needs a class-conditional model"),
    ("model.learn_endpoints", True, "needs config.model.schedule='learned'"),
])
def test_ranges_and_cross_field_rules(field, value, needle):
    config = load_config("fashion_mnist")
    if field == "training.eval_every":
        config.training.steps_per_call = 2
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(config_utils.ConfigError) as err:
        config_utils.validate(config, device_count=8)
    assert needle in str(err.value)


def test_model_kind_must_fit_the_data():
    config = load_config("toy2d")
    config.model.name = "vdm_unet"
    with pytest.raises(config_utils.ConfigError, match="use 'mlp' for the flat toy data sets"):
        config_utils.validate(config)


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
    with pytest.raises(config_utils.ConfigError, match="no key 'method'.*older version"):
        config_utils.validate(ml_collections.ConfigDict(config))
    old_classifier = load_config("noisy_classifier").to_dict()
    del old_classifier["optimizer"]                 # the msgpack-era classifier config.json had none
    with pytest.raises(config_utils.ConfigError, match="no key 'optimizer'"):
        config_utils.validate_classifier(ml_collections.ConfigDict(old_classifier))
