"""The run's record: a workdir's config.json is the run; resume and eval/sample are checked against it.

Training writes the resolved config (validation.resolve) to workdir/config.json. A resumed run may change only the
loop's bookkeeping (RESUMABLE_KEYS) and the eval/sampling/guidance sections; each such change is
appended to workdir/config_changes.jsonl. --mode=eval/sample run the recorded model, schedule,
data and loss, with the eval/sampling/guidance keys of the given config (`inference_config`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import ml_collections

from vdm.config.validation import ConfigError, resolve, task_of
from vdm.data.tfds_sets import IMAGE_DATASETS

# What may differ from a workdir's recorded config. At --mode=eval/sample: the evaluation,
# sampling and guidance sections (and where the data lives). On resume, also the loop's
# bookkeeping: how long to run, how often to evaluate/log/save (num_steps also sets the cosine
# learning-rate horizon from then on). Every other key defines the model or the objective.
INFERENCE_SECTIONS = ("eval", "sampling", "fid", "guidance")
MACHINE_KEYS = ("data.data_dir", "text.t5_folder")
RESUMABLE_KEYS = (
    MACHINE_KEYS
    + tuple(
        f"training.{k}"
        for k in (
            "num_steps",
            "eval_every",
            "checkpoint_every",
            "log_every",
            "keep_checkpoints",
            "steps_per_call",
            "nan_policy",
        )
    )
    + ("latent.joint",)
)  # a latent model's end-to-end fine-tuning starts on a resume
_ABSENT = "<absent>"


def flatten(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{'section.key': value} of a config, values as JSON gives them back (tuples as lists)."""
    out = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(json.loads(config.to_json()), "")
    return out


def may_change(key: str, *, resume: bool) -> bool:
    """Whether `key` may differ from the recorded config: at eval/sample time (resume=False) or on resume."""
    if key.split(".")[0] in INFERENCE_SECTIONS or key in MACHINE_KEYS:
        return True
    return resume and key in RESUMABLE_KEYS


def load_recorded(workdir: str) -> ml_collections.ConfigDict | None:
    """The config a run recorded in workdir/config.json, or None if there is none; ConfigError if unreadable."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return ml_collections.ConfigDict(upgrade(json.load(f)))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the run's recorded config {path}: {e}") from None


# Keys added after runs were recorded without them, with the value that reproduces what such a run
# did (a function of the recorded config; NOT_ITS_KEY: the key is not one of that run's): a recorded run stays
# resumable and evaluable as it was.
NOT_ITS_KEY = object()


def _image_model(value: Any) -> Any:
    """A key of the image models' config section only (configs/base.py `_model('image')`): `value` for image data."""
    return lambda c: value if c["data"]["dataset"] in IMAGE_DATASETS else NOT_ITS_KEY


ADDED_KEYS = {
    "model.decoder": lambda c: (
        "categorical" if c["data"]["dataset"] in IMAGE_DATASETS + ("grid8bit2d",) else "gaussian"
    ),  # what the decoder was: by whether the data is 8-bit
    "loss.sigmoid_bias": lambda c: -2.0,
    "loss.min_snr_gamma": lambda c: 5.0,
    "loss.edm_p_mean": lambda c: -1.2,
    "loss.edm_p_std": lambda c: 1.2,
    "loss.edm_sigma_data": lambda c: 0.5,
    "fid.samples": lambda c: 0,
    "fid.reference": lambda c: "train",
    "fid.reference_examples": lambda c: 0,
    "model.variance_head": lambda c: "none",
    "loss.objective": lambda c: "weighted",
    "loss.num_steps": lambda c: 0,
    "loss.hybrid_lambda": lambda c: 0.001,
    "loss.hybrid_units": lambda c: (  # a hybrid run before issue 25 applied lambda to L_vlb in nats; others: unused
        "nats" if c["loss"].get("objective") == "hybrid" else "bits"
    ),
    "loss.logit_normal_mean": lambda c: 0.0,
    "loss.logit_normal_std": lambda c: 1.0,
    "model.input_scaling": lambda c: "none",
    "model.schedule_shift": lambda c: 1.0,
    "loss.adaptive_bins": lambda c: 100,
    "loss.adaptive_decay": lambda c: 0.99,
    "loss.adaptive_uniform": lambda c: 0.1,
    "eval.variance": lambda c: None,
    "eval.t_sampling": lambda c: "uniform",
    "eval.pilot_examples": lambda c: 500,
    "sampling.decode": lambda c: "mean",
    "sampling.space": lambda c: "edm" if c["sampling"].get("method") == "ode" else None,  # Heun's ODE before 'ot
    "latent.autoencoder_workdir": lambda c: "",
    "latent.latents": lambda c: "sample",
    "latent.scale": lambda c: 0.0,
    "latent.scale_examples": lambda c: 2000,
    "latent.joint": lambda c: False,
    # adm_unet's keys, unused by the vdm_unet every run recorded before them trained
    "model.channel_mult": _image_model([1, 2, 4]),
    "model.num_res_blocks": _image_model(1),
    "model.attention_resolutions": _image_model([7]),
    # dit's keys, unused by the UNets every run recorded before them trained
    "model.patch_size": _image_model(2),
    "model.mlp_ratio": _image_model(4.0),
    "model.time_input": _image_model("gamma"),
    # text conditioning (docs/text.md): off in every run recorded before it
    "text.encoder": lambda c: "none",
    "text.t5_folder": lambda c: "",
    "text.max_length": lambda c: 32,
    "text.width": lambda c: 64,
    "text.depth": lambda c: 2,
    "text.num_heads": lambda c: 4,
    "text.caption_dropout": lambda c: 0.1,  # unused without text
    "sampling.prompt": lambda c: None,
    "sampling.prompts_file": lambda c: None,
    "model.cross_attention_resolutions": _image_model(None),
    "latent.autoencoder": lambda c: {
        "latent_channels": 4,
        "downsample": 4,
        "width": 32,
        "num_blocks": 1,
        "decoder": "discretized_gaussian",
    },
}
# Keys replaced by another: (old key, new key, the new value of the old one).
_same = lambda v: v  # noqa: E731
RENAMED_KEYS = (
    ("loss.antithetic", "loss.t_sampling", lambda v: "antithetic" if v else "uniform"),
    ("eval.fid_samples", "fid.samples", _same),  # sampling-time FID moved to its own section
    ("eval.fid_reference", "fid.reference", _same),
    ("eval.fid_reference_examples", "fid.reference_examples", _same),
)


def upgrade(recorded: dict) -> dict:
    """A recorded config (a dict from config.json) with its `task` (validation.task_of); a diffusion model's also with
    RENAMED_KEYS renamed and every ADDED_KEYS key it lacks filled in."""
    recorded.setdefault("task", task_of(recorded))
    if not {"model", "loss", "eval", "sampling"} <= set(recorded):  # not a diffusion model's (classifier, autoencoder)
        return recorded
    if recorded["task"] != "latent_diffusion":
        recorded.pop(
            "latent", None
        )  # a pixel model's unused latent section, recorded before only latent configs had it
    for old, new, value in RENAMED_KEYS:
        (old_section, old_name), (section, name) = old.split("."), new.split(".")
        if old_name in recorded.get(old_section, {}):
            recorded.setdefault(section, {}).setdefault(name, value(recorded[old_section].pop(old_name)))
    for key, value in ADDED_KEYS.items():
        section, name = key.split(".")
        if section != "latent" or recorded["task"] == "latent_diffusion":
            if name not in recorded.get(section, {}) and (filled := value(recorded)) is not NOT_ITS_KEY:
                recorded.setdefault(section, {})[name] = filled
    return recorded


def config_diff(recorded: ml_collections.ConfigDict, given: ml_collections.ConfigDict) -> dict[str, tuple]:
    """{key: (recorded value, given value)} for every key whose values differ ('<absent>' where one lacks it)."""
    a, b = flatten(recorded), flatten(given)
    return {
        k: (a.get(k, _ABSENT), b.get(k, _ABSENT))
        for k in sorted(set(a) | set(b))
        if a.get(k, _ABSENT) != b.get(k, _ABSENT)
    }


def _resolved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """validation.resolve(config) (an unset sampler option reads as its method's default), or `config` if it fails."""
    try:
        return resolve(config)
    except ConfigError:
        return config


def _describe(diff: dict[str, tuple], limit: int = 6) -> str:
    items = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()]
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def check_resume(given: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple]:
    """Compare a resumed run's config with workdir/config.json before anything is written.

    Raises ConfigError (one line, listing the keys) if a key that defines the model or the
    objective changed; returns the allowed changes {key: (recorded, given)} (RESUMABLE_KEYS and
    the eval/sampling/guidance sections). Keys the record lacks (a newer code version) are not changes, and
    both sides are compared resolved: an unset sampler option is its method's default, as config.json records it.
    """
    recorded = load_recorded(workdir)
    if recorded is None:
        return {}
    given = _resolved(given)
    if "task" not in given:  # a config file from before the key: the Task its keys say
        given = given.copy_and_resolve_references()
        given.unlock()
        given.task = task_of(given)
    diff = {k: v for k, v in config_diff(_resolved(recorded), given).items() if v[0] != _ABSENT}
    fixed = {k: v for k, v in diff.items() if not may_change(k, resume=True)}
    if fixed:
        raise ConfigError(
            f"{workdir} holds checkpoints of a run with another config ({_describe(fixed)}); "
            "these keys define the model or the objective and cannot change mid-run: use a new "
            "--workdir for the new config, or drop the overrides (a rerun with no --config "
            "resumes with the recorded one)."
        )
    return diff


def record_changes(workdir: str, step: int, changes: dict[str, tuple]) -> None:
    """Append {'step', 'changes': {key: [recorded, new]}} to workdir/config_changes.jsonl (the config's history)."""
    if not changes:
        return
    line = json.dumps({"step": int(step), "changes": {k: list(v) for k, v in changes.items()}}, sort_keys=True)
    with open(os.path.join(workdir, "config_changes.jsonl"), "a", encoding="utf-8") as f:
        f.write(line + "\n")


def read_changes(workdir: str) -> list[dict]:
    """The records record_changes appended to workdir/config_changes.jsonl, oldest first ([] where there are none)."""
    path = os.path.join(workdir, "config_changes.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    *path, leaf = key.split(".")
    node = config
    for p in path:
        node = node[p]
    old = node.get(leaf)
    node[leaf] = tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value


def inference_config(
    workdir: str, given: ml_collections.ConfigDict | None, overridden: Iterable[str] = ()
) -> tuple[ml_collections.ConfigDict, dict[str, tuple]]:
    """The config of --mode=eval/sample on `workdir`: its recorded run, with the eval/sampling/guidance keys of `given`.

    Every key that defines the model, schedule, data or loss comes from workdir/config.json. A
    key in `overridden` (a --config.K=V flag) that would change one of them raises ConfigError
    naming the key, the recorded and the given value. Returns (config, ignored): the keys of
    `given`'s file that differ from the record and were replaced by the recorded values.
    """
    recorded = load_recorded(workdir)
    if recorded is None:
        raise ConfigError(
            f"{workdir} holds no trained run (no config.json): train one first, e.g. "
            f"python -m vdm.main --config=configs/fashion_mnist.py --workdir={workdir} (or another configs/ file)."
        )
    if given is None:
        recorded.lock()
        return recorded, {}
    diff = config_diff(recorded, given)
    for key in overridden:
        if key in diff and not may_change(key, resume=False) and diff[key][0] != _ABSENT:
            raise ConfigError(
                f"--config.{key}={diff[key][1]!r} conflicts with the run in {workdir}, trained with "
                f"{key}={diff[key][0]!r}: eval and sample use the recorded model, schedule, data and "
                "loss; only eval.*, sampling.* and guidance.* keys may be given."
            )
    config = given.copy_and_resolve_references()
    config.unlock()
    ignored = {}
    for key, (old, new) in diff.items():
        if not may_change(key, resume=False) and old != _ABSENT and new != _ABSENT:
            _set(config, key, old)
            ignored[key] = (old, new)
    config.lock()
    return config, ignored
