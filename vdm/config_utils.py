"""Validate an experiment config before anything runs; every message names the valid choices.

Unknown keys are caught by ml_collections itself (configs are locked), wrong types by its
type-safe fields; `validate` adds choice sets, ranges and cross-field rules, and
`validate_for_data` the rules that need the data set's shape and classes.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import ml_collections

from vdm import objectives, parameterization, schedules
from vdm.data_tfds import IMAGE_DATASETS
from vdm.data_toy import TOY_DATASETS

# The choice sets come from the modules that implement them, so they cannot drift.
SCHEDULE_NAMES = tuple(schedules.SCHEDULES) + ("learned",)
DTYPES = ("float32", "bfloat16")
NAN_POLICIES = ("stop", "skip")
LR_DECAYS = ("cosine", "constant")
SAMPLING_METHODS_FALLBACK = ("ancestral", "ddim", "ode", "sde", "pc")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what is valid."""


def _choices(name: str, value: Any, valid: Iterable[str]) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise ConfigError(f"config.{name}={value!r} is not valid; choose one of "
                          + ", ".join(repr(v) for v in valid) + ".")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _int(name: str, value: Any, lo: int | None = None) -> int:
    _check(isinstance(value, int) and not isinstance(value, bool),
           f"config.{name}={value!r} must be an integer.")
    if lo is not None:
        _check(value >= lo, f"config.{name}={value} must be >= {lo}.")
    return value


def _float(name: str, value: Any, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> float:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool),
           f"config.{name}={value!r} must be a number.")
    if lo is not None:
        _check(value > lo if lo_open else value >= lo,
               f"config.{name}={value} must be {'>' if lo_open else '>='} {lo}.")
    if hi is not None:
        _check(value < hi if hi_open else value <= hi,
               f"config.{name}={value} must be {'<' if hi_open else '<='} {hi}.")
    return value


def _model_names() -> tuple[str, ...]:
    from vdm.models import MODEL_NAMES         # imported here: flax is heavy and config checks are not
    return tuple(MODEL_NAMES)


def _sampling_methods() -> tuple[str, ...]:
    try:
        from vdm import sampling
    except ImportError:                         # the sampler module is optional for training-only use
        return SAMPLING_METHODS_FALLBACK
    return tuple(getattr(sampling, "METHODS", SAMPLING_METHODS_FALLBACK))


def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first invalid field of `config` (choices, types, ranges, cross-field rules)."""
    c = config
    _int("seed", c.seed, 0)
    _choices("data.dataset", c.data.dataset, IMAGE_DATASETS + TOY_DATASETS)
    m = c.model
    _choices("model.name", m.name, _model_names())
    _choices("model.parameterization", m.parameterization, parameterization.KINDS)
    _choices("model.schedule", m.schedule, SCHEDULE_NAMES)
    _check(m.gamma_max > m.gamma_min, f"config.model.gamma_max={m.gamma_max} must exceed "
           f"config.model.gamma_min={m.gamma_min}.")
    _float("model.dropout", m.dropout, 0.0, 1.0, hi_open=True)
    _float("model.label_dropout", m.label_dropout, 0.0, 1.0, hi_open=True)
    _int("model.num_classes", m.num_classes, 0)
    _check(m.label_dropout == 0.0 or m.num_classes > 0,
           "config.model.label_dropout > 0 needs a class-conditional model (config.model.num_classes > 0).")
    _check(not m.learn_endpoints or m.schedule == "learned",
           "config.model.learn_endpoints=True needs config.model.schedule='learned'.")
    is_image = c.data.dataset in IMAGE_DATASETS
    _check(is_image != (m.name == "mlp"),
           f"config.model.name={m.name!r} does not fit config.data.dataset={c.data.dataset!r}: "
           "use 'mlp' for the flat toy data sets " + repr(TOY_DATASETS)
           + " and 'vdm_unet' or 'adm_unet' for the image data sets " + repr(IMAGE_DATASETS) + ".")

    _choices("loss.weighting", c.loss.weighting, tuple(objectives.WEIGHTINGS))

    o = c.optimizer
    _float("optimizer.learning_rate", o.learning_rate, 0.0, lo_open=True)
    _float("optimizer.b1", o.b1, 0.0, 1.0, hi_open=True)
    _float("optimizer.b2", o.b2, 0.0, 1.0, hi_open=True)
    _float("optimizer.eps", o.eps, 0.0, lo_open=True)
    _float("optimizer.weight_decay", o.weight_decay, 0.0)
    _int("optimizer.warmup_steps", o.warmup_steps, 0)
    _choices("optimizer.decay", o.decay, LR_DECAYS)
    _float("optimizer.grad_clip", o.grad_clip, 0.0)
    _float("optimizer.ema_decay", o.ema_decay, 0.0, 1.0, hi_open=True)

    t = c.training
    _int("training.num_steps", t.num_steps, 1)
    _int("training.batch_size", t.batch_size, 1)
    for key in ("eval_every", "checkpoint_every", "log_every", "steps_per_call", "keep_checkpoints"):
        _int(f"training.{key}", t[key], 1)
    for key in ("eval_every", "checkpoint_every", "log_every", "num_steps"):
        _check(t[key] % t.steps_per_call == 0,
               f"config.training.{key}={t[key]} must be a multiple of "
               f"config.training.steps_per_call={t.steps_per_call} (steps run in groups of it).")
    _choices("training.dtype", t.dtype, DTYPES)
    _choices("training.nan_policy", t.nan_policy, NAN_POLICIES)
    if device_count is not None:
        for name, bs in (("training.batch_size", t.batch_size), ("eval.batch_size", c.eval.batch_size)):
            _check(bs % device_count == 0, f"config.{name}={bs} must be divisible by the number "
                   f"of devices ({device_count}).")

    _int("eval.batch_size", c.eval.batch_size, 1)
    _int("eval.num_steps", c.eval.num_steps, 0)

    s = c.sampling
    _choices("sampling.method", s.method, _sampling_methods())
    _int("sampling.num_steps", s.num_steps, 1)
    _int("sampling.num_samples", s.num_samples, 1)
    if "batch_size" in s:
        _int("sampling.batch_size", s.batch_size, 0)
    _float("sampling.guidance_weight", s.guidance_weight, 0.0)
    _int("sampling.class_label", s.class_label, -1)
    _check(s.class_label < max(m.num_classes, 0) or s.class_label == -1,
           f"config.sampling.class_label={s.class_label} must be -1 (unconditional / one of each "
           f"class) or a class in [0, {m.num_classes}).")
    _check(s.guidance_weight == 0.0 or m.num_classes > 0,
           "config.sampling.guidance_weight > 0 needs a class-conditional model (config.model.num_classes > 0).")


def validate_for_data(config: ml_collections.ConfigDict, info: Any) -> None:
    """Checks that need the data set: model kind vs data rank, number of classes."""
    m = config.model
    want = 1 if m.name == "mlp" else 3
    _check(len(info.shape) == want, f"config.model.name={m.name!r} needs data of rank {want}, "
           f"but {info.name!r} has shape {tuple(info.shape)}.")
    _check(m.num_classes in (0, info.num_classes),
           f"config.model.num_classes={m.num_classes} must be 0 (unconditional) or the data set's "
           f"number of classes, {info.num_classes}.")


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Write the resolved config to workdir/config.json and workdir/config.yaml (ml_collections YAML repr)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(json.loads(config.to_json()), f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(workdir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(str(config))
