"""Validate an experiment config before anything runs; every message names the valid choices.

Unknown keys are caught by ml_collections itself (configs are locked), wrong types by its
type-safe fields; `validate` adds choice sets, ranges and cross-field rules, and
`validate_for_data` the rules that need the data set's shape and classes.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import ml_collections

from vdm.core import discrete_time, gaussian, parameterization, schedules, weightings
from vdm.data.shapes import NAME as SHAPES
from vdm.data.tfds_sets import IMAGE_DATASETS
from vdm.data.toy_sets import TOY_DATASETS
from vdm.evaluation.split_eval import eval_batch_size
from vdm.infra.fileio import atomic_write_text

# The choice sets come from the modules that implement them, so they cannot drift; the loop's and
# the eval modes' (above this layer) are defined here and compared by name there.
NAN_POLICIES = ("stop", "skip")  # vdm.tasks.loop._Window.flush
EVAL_METHODS = ("elbo", "ode")  # vdm.cli.modes.evaluate


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what is valid."""


# config.task: which model a config trains (vdm.tasks.registry holds each one's Task).
TASKS = ("diffusion", "latent_diffusion", "autoencoder", "classifier", "attribute_classifier")


def task_of(config: Any) -> str:
    """config.task (checked), or for a config recorded before that key, the Task its keys say: an autoencoder's
    loss.kl_weight, a classifier's missing sampling section, a latent model's config.latent.autoencoder_workdir."""
    if "task" in config:
        check_choice("task", config["task"], TASKS)
        return config["task"]
    if "kl_weight" in config.get("loss", {}):
        return "autoencoder"
    if "sampling" not in config:
        return "classifier"
    return "latent_diffusion" if (config.get("latent") or {}).get("autoencoder_workdir") else "diffusion"


def check_choice(name: str, value: Any, valid: Iterable[str]) -> None:
    """Raise ConfigError unless config.NAME = value is one of `valid` (the message lists them)."""
    valid = tuple(valid)
    if value not in valid:
        raise ConfigError(
            f"config.{name}={value!r} is not valid; choose one of " + ", ".join(repr(v) for v in valid) + "."
        )


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok."""
    if not ok:
        raise ConfigError(message)


def check_int(name: str, value: Any, lo: int | None = None) -> int:
    """config.NAME = value, checked to be an integer >= lo (if given)."""
    check(isinstance(value, int) and not isinstance(value, bool), f"config.{name}={value!r} must be an integer.")
    if lo is not None:
        check(value >= lo, f"config.{name}={value} must be >= {lo}.")
    return value


def check_float(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """config.NAME = value, checked to be a number in [lo, hi] (open ends where asked)."""
    check(isinstance(value, (int, float)) and not isinstance(value, bool), f"config.{name}={value!r} must be a number.")
    if lo is not None:
        check(value > lo if lo_open else value >= lo, f"config.{name}={value} must be {'>' if lo_open else '>='} {lo}.")
    if hi is not None:
        check(value < hi if hi_open else value <= hi, f"config.{name}={value} must be {'<' if hi_open else '<='} {hi}.")
    return value


def _validate_model(c: ml_collections.ConfigDict) -> None:
    from vdm.models import LEARNED_SCHEDULES, MODEL_NAMES, VDM_BOOLS  # here: flax is heavy, config checks are not
    from vdm.models.layers import EMBEDDING_FREQS

    m = c.model
    check_choice("model.name", m.name, MODEL_NAMES)
    check_choice("model.parameterization", m.parameterization, parameterization.KINDS)
    check_choice("model.schedule", m.schedule, tuple(schedules.SCHEDULES) + tuple(LEARNED_SCHEDULES))
    check_choice("model.input_scaling", m.input_scaling, parameterization.INPUT_SCALINGS)
    check_float("model.schedule_shift", m.schedule_shift, 0.0, lo_open=True)
    check(
        m.schedule_shift == 1.0 or m.schedule in schedules.SCHEDULES,
        f"config.model.schedule_shift={m.schedule_shift} shifts a fixed schedule: config.model.schedule must be one of "
        f"{tuple(schedules.SCHEDULES)} (got {m.schedule!r}), or schedule_shift 1.0.",
    )
    gamma_range(m)
    check_float("model.dropout", m.dropout, 0.0, 1.0, hi_open=True)
    check_float("model.label_dropout", m.label_dropout, 0.0, 1.0, hi_open=True)
    check_int("model.num_classes", m.num_classes, 0)
    check(
        m.label_dropout == 0.0 or m.num_classes > 0,
        "config.model.label_dropout > 0 needs a class-conditional model (config.model.num_classes > 0).",
    )
    check(
        not m.learn_endpoints or m.schedule == "learned",
        "config.model.learn_endpoints=True needs config.model.schedule='learned'.",
    )
    is_image = c.data.dataset in IMAGE_DATASETS + (SHAPES,)
    check(
        is_image != (m.name == "mlp"),
        f"config.model.name={m.name!r} does not fit config.data.dataset={c.data.dataset!r}: "
        "use 'mlp' for the flat toy data sets "
        + repr(TOY_DATASETS)
        + " and 'vdm_unet', 'adm_unet', 'dit' or 'uvit' for the image data sets "
        + repr(IMAGE_DATASETS)
        + ".",
    )
    if m.name == "vdm_unet":
        missing = [k for k in ("embedding_freqs", "norm_groups") + VDM_BOOLS if k not in m]
        check(
            not missing,
            f"config.model.name='vdm_unet' needs the keys {missing} in config.model "
            "(see configs/base.py for their meaning and the values that keep the default network).",
        )
        check_choice("model.embedding_freqs", m.embedding_freqs, EMBEDDING_FREQS)
        check_int("model.norm_groups", m.norm_groups, 0)
        for key in VDM_BOOLS:
            check(isinstance(m[key], bool), f"config.model.{key}={m[key]!r} must be True or False.")
    if m.name in ("dit", "uvit"):
        _validate_dit(m)
    check_choice("loss.weighting", c.loss.weighting, tuple(weightings.WEIGHTINGS))
    _validate_weighting(c.loss)
    _validate_objective(c)
    check_choice("model.decoder", m.decoder, gaussian.DECODERS)


def _validate_dit(m: ml_collections.ConfigDict, image_size: tuple[int, int] | None = None) -> None:
    """dit's / uvit's keys (vdm.models.DIT_KEYS) by validate_dit / validate_uvit (and the patches against an image)."""
    from vdm.models import DIT_KEYS  # here: flax is heavy, config checks are not
    from vdm.models.dit import validate_dit
    from vdm.models.uvit import validate_uvit

    missing = [k for k in DIT_KEYS if k not in m]
    check(not missing, f"config.model.name={m.name!r} needs the keys {missing} in config.model (see configs/base.py).")
    for key in ("scan_blocks", "remat"):
        check(isinstance(m[key], bool), f"config.model.{key}={m[key]!r} must be True or False.")
    try:
        validate = validate_uvit if m.name == "uvit" else validate_dit
        validate(m.width, m.num_layers, m.num_heads, m.patch_size, m.mlp_ratio, m.time_input, image_size)
    except ValueError as e:
        raise ConfigError(f"config.model ({m.name}): {e}.") from None


def _validate_weighting(loss: ml_collections.ConfigDict) -> None:
    """The weightings' hyperparameters (diffusion_model.WEIGHTING_KEYS): numbers, scales > 0."""
    check_float("loss.sigmoid_bias", loss.sigmoid_bias)
    check_float("loss.min_snr_gamma", loss.min_snr_gamma, 0.0, lo_open=True)
    check_float("loss.edm_p_mean", loss.edm_p_mean)
    check_float("loss.edm_p_std", loss.edm_p_std, 0.0, lo_open=True)
    check_float("loss.edm_sigma_data", loss.edm_sigma_data, 0.0, lo_open=True)
    check_float("loss.logit_normal_mean", loss.logit_normal_mean)
    check_float("loss.logit_normal_std", loss.logit_normal_std, 0.0, lo_open=True)


LOSS_OBJECTIVES = ("weighted", "hybrid")  # config.loss.objective
T_SAMPLINGS = ("uniform", "antithetic", "adaptive", "logit_normal")  # config.loss.t_sampling
EVAL_T_SAMPLINGS = ("uniform", "importance")  # config.eval.t_sampling


def _validate_objective(c: ml_collections.ConfigDict) -> None:
    """loss.objective, num_steps, t_sampling and the variance head: what trains what."""
    from vdm.models import LEARNED_SCHEDULES

    loss, m = c.loss, c.model
    check_choice("model.variance_head", m.variance_head, parameterization.VARIANCE_HEADS)
    check_choice("loss.objective", loss.objective, LOSS_OBJECTIVES)
    check_int("loss.num_steps", loss.num_steps, 0)
    check_float("loss.hybrid_lambda", loss.hybrid_lambda, 0.0)
    check_choice("loss.hybrid_units", loss.hybrid_units, discrete_time.HYBRID_UNITS)
    check_choice("loss.t_sampling", loss.t_sampling, T_SAMPLINGS)
    hybrid, discrete = loss.objective == "hybrid", loss.num_steps > 0
    check(
        not hybrid or (discrete and m.variance_head != "none"),
        "config.loss.objective='hybrid' trains a learned reverse variance in discrete time: it needs "
        "config.model.variance_head 'interp' or 'sigmoid' and config.loss.num_steps = T > 0 (e.g. 1000).",
    )
    check(
        hybrid or not discrete or loss.weighting == "elbo",
        f"config.loss.num_steps={loss.num_steps} trains the T-step discrete ELBO: it needs config.loss.weighting="
        f"'elbo' (got {loss.weighting!r}), or config.loss.objective='hybrid' for a weighted mean part.",
    )
    check(
        m.variance_head == "none" or discrete,
        f"config.model.variance_head={m.variance_head!r} is trained only by a discrete-time objective (the "
        "continuous-time ELBO does not depend on the reverse variance): set config.loss.num_steps = T > 0 and "
        "config.loss.objective='hybrid' (or weighting 'elbo'), or variance_head='none'.",
    )
    check(
        not discrete or LEARNED_SCHEDULES.get(m.schedule) != "variance",
        "config.model.schedule='learned' (VDM's variance-minimising gradient) is for continuous time: "
        "use config.loss.num_steps=0 or another schedule.",
    )
    check(
        loss.t_sampling != "logit_normal" or not discrete,
        "config.loss.t_sampling='logit_normal' (SD3) draws continuous t: it needs config.loss.num_steps=0.",
    )
    if loss.t_sampling == "adaptive":
        check_int("loss.adaptive_bins", loss.adaptive_bins, 2)
        check_float("loss.adaptive_decay", loss.adaptive_decay, 0.0, 1.0, hi_open=True)
        check_float("loss.adaptive_uniform", loss.adaptive_uniform, 0.0, 1.0, lo_open=True)
        check(
            m.schedule in schedules.SCHEDULES and not discrete,
            "config.loss.t_sampling='adaptive' draws lambda = log SNR from its histogram under a fixed schedule "
            f"in continuous time: config.model.schedule must be one of {tuple(schedules.SCHEDULES)} (got "
            f"{m.schedule!r}; a learned schedule plays the same variance-reducing role) and loss.num_steps 0.",
        )


def validate_optimizer(o: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for an invalid config.optimizer (shared by every model this codebase trains)."""
    from vdm.infra.optim import LR_DECAYS
    from vdm.models.convert import DECAY_MASKS  # here: flax is heavy, config checks are not

    check_float("optimizer.learning_rate", o.learning_rate, 0.0, lo_open=True)
    check_float("optimizer.b1", o.b1, 0.0, 1.0, hi_open=True)
    check_float("optimizer.b2", o.b2, 0.0, 1.0, hi_open=True)
    check_float("optimizer.eps", o.eps, 0.0, lo_open=True)
    check_float("optimizer.weight_decay", o.weight_decay, 0.0)
    check_choice("optimizer.decay_mask", o.decay_mask, DECAY_MASKS)
    check_int("optimizer.warmup_steps", o.warmup_steps, 0)
    check_choice("optimizer.decay", o.decay, tuple(LR_DECAYS))
    check_float("optimizer.grad_clip", o.grad_clip, 0.0)
    check_float("optimizer.ema_decay", o.ema_decay, 0.0, 1.0, hi_open=True)


def validate_training(t: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raise ConfigError for an invalid config.training (the loop's keys, shared by every model)."""
    check_int("training.num_steps", t.num_steps, 1)
    check_int("training.batch_size", t.batch_size, 1)
    for key in ("eval_every", "checkpoint_every", "log_every", "steps_per_call", "keep_checkpoints"):
        check_int(f"training.{key}", t[key], 1)
    for key in ("eval_every", "checkpoint_every", "log_every", "num_steps"):
        check(
            t[key] % t.steps_per_call == 0,
            f"config.training.{key}={t[key]} must be a multiple of "
            f"config.training.steps_per_call={t.steps_per_call} (steps run in groups of it).",
        )
    check_choice("training.nan_policy", t.nan_policy, NAN_POLICIES)
    divisible_by_devices("training.batch_size", t.batch_size, device_count)


def _validate_eval(c: ml_collections.ConfigDict, device_count: int | None) -> None:
    e = c.eval
    check_int("eval.batch_size", e.batch_size, 1)
    check_int("eval.num_steps", e.num_steps, 0)
    if e.get("variance") is not None:
        from vdm.core.gaussian import VARIANCES

        check_choice("eval.variance", e.variance, VARIANCES)
        check(
            e.variance != "learned" or c.model.variance_head != "none",
            "config.eval.variance='learned' needs a model with a variance head (config.model.variance_head).",
        )
    check_choice("eval.t_sampling", e.t_sampling, EVAL_T_SAMPLINGS)
    check_int("eval.pilot_examples", e.pilot_examples, 2)
    check(
        e.t_sampling == "uniform" or e.num_steps == 0,
        "config.eval.t_sampling='importance' is for the continuous-time ELBO (config.eval.num_steps=0).",
    )
    check_choice("eval.method", e.method, EVAL_METHODS)
    check_int("eval.ode_steps", e.ode_steps, 1)
    check_int("eval.ode_probes", e.ode_probes, 1)
    check_int("eval.max_examples", e.max_examples, 0)
    f = c.fid
    check_int("fid.samples", f.samples, 0)
    check(f.samples != 1, "config.fid.samples must be 0 (no FID) or >= 2 (a covariance needs two).")
    check_choice("fid.reference", f.reference, ("train", "test"))
    check_int("fid.reference_examples", f.reference_examples, 0)
    check(
        f.samples == 0 or c.data.dataset in IMAGE_DATASETS,
        f"config.fid.samples > 0 needs image data (Inception FID); {c.data.dataset!r} is not one of "
        + repr(IMAGE_DATASETS)
        + ".",
    )
    divisible_by_devices("eval.batch_size", eval_batch_size(e, device_count or 1), device_count)
    g = c.guidance
    check(isinstance(g.classifier_workdir, str), "config.guidance.classifier_workdir must be a path ('' for none).")
    check_float("guidance.classifier_scale", g.classifier_scale, 0.0)
    check_int("guidance.classifier_label", g.classifier_label, -1)


def _validate_sampling(c: ml_collections.ConfigDict) -> None:
    from vdm.sampling import samplers

    s, m = c.sampling, c.model
    check_choice("sampling.method", s.method, samplers.METHODS)
    check_int("sampling.num_steps", s.num_steps, 1)
    check_int("sampling.num_samples", s.num_samples, 1)
    check_int("sampling.batch_size", s.batch_size, 0)
    if s.get("grid") not in (None, ""):  # None (older configs: ''): the method's default grid
        check_choice("sampling.grid", s.grid, samplers.GRIDS)
    head = m.get("variance_head", "none")
    check(
        s.get("variance") != "learned" or head != "none",
        "config.sampling.variance='learned' needs a model with a variance head (config.model.variance_head "
        "'interp' or 'sigmoid', trained with config.loss.objective='hybrid'); this one has none: choose one of "
        + ", ".join(repr(v) for v in gaussian.VARIANCES if v != "learned")
        + ", or leave it unset (None).",
    )
    check(
        s.get("variance") != "learned" or (s.guidance_weight == 0.0 and not c.guidance.classifier_workdir),
        "config.sampling.variance='learned' does not combine with guidance (sampling.guidance_weight, "
        "guidance.classifier_workdir) yet: use variance 'small' or 'large' to guide.",
    )
    resolve(c)
    check_float("sampling.guidance_weight", s.guidance_weight, 0.0)
    check_int("sampling.class_label", s.class_label, -1)
    check(
        s.class_label < max(m.num_classes, 0) or s.class_label == -1,
        f"config.sampling.class_label={s.class_label} must be -1 (unconditional / one of each "
        f"class) or a class in [0, {m.num_classes}).",
    )
    check(
        s.guidance_weight == 0.0 or m.num_classes > 0 or text_encoder(c) != "none",
        "config.sampling.guidance_weight > 0 needs a conditional model (config.model.num_classes > 0 or "
        "config.text.encoder 'scratch' or 't5').",
    )


def validate_data(d: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for an invalid config.data (the rules of vdm.data.pipeline.parse_config)."""
    from vdm.data import pipeline

    try:
        pipeline.parse_config(d)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _missing_key(error: Exception) -> ConfigError:
    """The ConfigError for a key the config lacks (e.g. a config.json written by an older version)."""
    key = str(error).strip("\"'")
    return ConfigError(
        f"the config has no key {key!r} (a config written by an older version of this code?); "
        "every key is listed, with its meaning, in the config files under configs/: add it, e.g. "
        f"--config.<section>.{key}=..., or start from a current config file."
    )


def names_missing_keys(validator: Callable[..., None]) -> Callable[..., None]:
    """Wrap a validator so that a key the config lacks raises ConfigError naming it (_missing_key)."""

    @functools.wraps(validator)
    def wrapped(config: ml_collections.ConfigDict, **kwargs) -> None:
        try:
            validator(config, **kwargs)
        except (AttributeError, KeyError) as e:
            raise _missing_key(e) from None

    return wrapped


def gamma_range(m: ml_collections.ConfigDict) -> None:
    """Raise ConfigError unless config.model.gamma_max > gamma_min."""
    check(
        m.gamma_max > m.gamma_min,
        f"config.model.gamma_max={m.gamma_max} must exceed config.model.gamma_min={m.gamma_min}.",
    )


def divisible_by_devices(name: str, batch_size: int, device_count: int | None) -> None:
    """Raise ConfigError unless config.NAME = batch_size splits evenly over device_count devices (None: unchecked)."""
    if device_count is not None:
        check(
            batch_size % device_count == 0,
            f"config.{name}={batch_size} must be divisible by the number of devices ({device_count}).",
        )


def validate_seed_and_data(c: ml_collections.ConfigDict) -> None:
    check_int("seed", c.seed, 0)
    check_choice("data.dataset", c.data.dataset, IMAGE_DATASETS + TOY_DATASETS + (SHAPES,))
    validate_data(c.data)


@names_missing_keys
def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None, mode: str = "train") -> None:
    """Raise ConfigError naming the first invalid or missing field of a diffusion config (choices, types, ranges, cross-field rules).

    mode ('train', 'eval', 'sample') decides which batch sizes must split over `device_count`
    devices: training and eval batches when training, the eval batch in eval mode, none to sample.
    """
    c = config
    check_choice("mode", mode, ("train", "eval", "sample"))
    validate_seed_and_data(c)
    _validate_model(c)
    validate_optimizer(c.optimizer)
    validate_training(c.training, device_count if mode == "train" else None)
    from vdm.models import COMPUTE_DTYPES

    check_choice("training.dtype", c.training.dtype, tuple(COMPUTE_DTYPES))
    _validate_eval(c, device_count if mode in ("train", "eval") else None)
    _validate_sampling(c)


def validate_for_data(config: ml_collections.ConfigDict, info: Any) -> None:
    """Checks that need the data set: model kind vs data rank, number of classes."""
    m = config.model
    want = 1 if m.name == "mlp" else 3
    check(
        len(info.shape) == want,
        f"config.model.name={m.name!r} needs data of rank {want}, but {info.name!r} has shape {tuple(info.shape)}.",
    )
    if m.name == "adm_unet" and config.get("task", "diffusion") == "diffusion":  # its levels must fit the image
        from vdm.models.unet_adm import validate_adm  # here: flax is heavy, config checks are not

        try:
            cross = (
                (m.get("cross_attention_resolutions") or m.attention_resolutions)
                if text_encoder(config) != "none"
                else ()
            )
            validate_adm(m.channel_mult, m.num_res_blocks, m.attention_resolutions, *info.shape[:2], cross)
        except ValueError as e:
            raise ConfigError(f"config.model (adm_unet) does not fit {info.name!r}: {e}") from None
    if m.name in ("dit", "uvit") and config.get("task", "diffusion") == "diffusion":  # whole patches tile the image
        _validate_dit(m, tuple(info.shape[:2]))
    discrete = m.decoder != "gaussian"
    check(
        discrete == bool(info.discrete),
        f"config.model.decoder={m.decoder!r} does not fit {info.name!r}: "
        + (
            "8-bit data needs a discrete decoder, 'categorical' or 'discretized_gaussian', so that its likelihood "
            "is a probability of the 8-bit values (real bits/dim)."
            if info.discrete
            else "continuous data needs decoder='gaussian' (the other two model 8-bit values)."
        ),
    )
    check(
        m.num_classes in (0, info.num_classes),
        f"config.model.num_classes={m.num_classes} must be 0 (unconditional) or the data set's "
        f"number of classes, {info.num_classes}.",
    )


def text_encoder(config: ml_collections.ConfigDict) -> str:
    """config.text.encoder: 'none' (no text conditioning; also a config without a text section), 'scratch' or 't5'."""
    return config.text.encoder if "text" in config else "none"


def eval_variance(config: ml_collections.ConfigDict) -> str:
    """The T-step ELBO's reverse variance: config.eval.variance, unset: 'learned' with a variance head, else 'small'."""
    return config.eval.get("variance") or (
        "learned" if config.model.get("variance_head", "none") != "none" else "small"
    )


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose config.sampling options of its method are resolved: each unset (None) one set to the
    method's default (samplers.resolve_options of samplers.options_from_config); a config without sampling as it is.
    An unset config.eval.variance becomes 'learned' for a model with a variance head, else 'small'."""
    from vdm.sampling import samplers

    out = config.copy_and_resolve_references()
    e = out.get("eval")
    if e is not None and "variance" in e and "model" in out:
        e.variance = eval_variance(out)
    s = out.get("sampling")
    if s is None or "method" not in s:
        return out
    try:
        opts = samplers.resolve_options(s.method, samplers.options_from_config(s))
    except ValueError as e:
        raise ConfigError(f"config.sampling: {e}") from None
    for name in samplers.option_names(s.method):
        if name in s:
            s[name] = opts[name]
    return out


def save_config(config: ml_collections.ConfigDict, workdir: str, name: str = "config") -> None:
    """Write the resolved config (`resolve`: sampler options as the run uses them) to workdir/NAME.json and
    workdir/NAME.yaml (ml_collections YAML repr)."""
    config = resolve(config)
    os.makedirs(workdir, exist_ok=True)
    atomic_write_text(
        os.path.join(workdir, f"{name}.json"), json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True) + "\n"
    )
    atomic_write_text(os.path.join(workdir, f"{name}.yaml"), str(config))
