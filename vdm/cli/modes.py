"""--mode=eval and --mode=sample of a trained run, from the newest checkpoint of its workdir; each asks the run's Task.

--mode=eval reports the Task's figure (`task.evaluate_split`): for a diffusion model the true ELBO
in bits/dim (total and its three terms, VDM eq. 11, with a standard error, every example of the
split exactly once) or the probability-flow ODE's bits/dim, whatever objective or
parameterisation it was trained with; for a latent model the three-term bound. --mode=sample writes a PNG grid, an .npz and optionally Inception FID/KID. Every setting
comes from the config: config.eval (method, steps), config.sampling (method and its options) and
config.guidance (classifier guidance).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm.config import validation
from vdm.data import pipeline
from vdm.infra import parallel
from vdm.infra.checkpoint import Checkpointer
from vdm.infra.metrics import MetricWriter, read_metrics, save_samples_png
from vdm.infra.optim import TrainState
from vdm.tasks import registry
from vdm.tasks.classifier_task import load_log_prob_fn
from vdm.tasks.diffusion_model import derived_key
from vdm.tasks.loop import restore_or_init

Array = jax.Array
PyTree = Any
log = logging.getLogger(__name__)


def restore_for_inference(
    config: ml_collections.ConfigDict, workdir: str, mode: str = "eval"
) -> tuple[Any, Any, TrainState, int]:
    """(the run's Task, mesh, state, step) from the newest intact checkpoint of `workdir` (nothing is written).

    `config` should be the run's own (record.inference_config): the state's shapes come from it; the Task is the one
    config.task names (registry.for_inference), which holds everything its checkpoint needs.
    """
    ckpt_dir = os.path.join(workdir, "checkpoints")
    task = registry.for_inference(config, mode)
    mesh = parallel.make_mesh()
    with Checkpointer(ckpt_dir, max_to_keep=None, create=False) as ckpt:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir}; train first (--mode=train) with this --workdir.")
        state, step = restore_or_init(task, mesh, ckpt)
    return task, mesh, state, step


def eval_settings(config: ml_collections.ConfigDict) -> dict:
    """What decides an eval's number besides the checkpoint: config.eval (and for the ODE, whose noise is drawn per
    device, the device count; the ELBO's noise is drawn per example, whatever the layout)."""
    settings = json.loads(validation.resolve(config).eval.to_json())  # an unset eval.variance as resolved
    return {**settings, "device_count": jax.device_count()} if config.eval.method == "ode" else settings


def recorded_eval(workdir: str, step: int, settings: dict) -> dict | None:
    """The --mode=eval result already in metrics.jsonl for this checkpoint step and these settings, or None."""
    for r in reversed(read_metrics(workdir)):
        if r.get("step") == step and r.get("mode") == "eval" and r.get("eval_settings") == settings:
            return {k: v for k, v in r.items() if k.startswith("eval/")}
    return None


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=eval with the newest checkpoint's EMA params: config.eval.method 'elbo' (-ELBO bits/dim, continuous
    or config.eval.num_steps discrete) or 'ode' (probability-flow ODE bits/dim); the config goes to config_eval.json.

    The same checkpoint and settings evaluated before (metrics.jsonl) give the recorded result
    (the estimate is deterministic given them); otherwise one row is appended.
    """
    task, mesh, state, step = restore_for_inference(config, workdir, mode="eval")
    settings = eval_settings(config)
    done = recorded_eval(workdir, step, settings)
    if done is not None:
        log.info(
            "checkpoint step %d was evaluated with these settings before: the recorded result (metrics.jsonl).", step
        )
        return done
    result = task.evaluate_split(mesh, state.ema_params, derived_key(config, 1, step))
    if jax.process_index() == 0:
        validation.save_config(config, workdir, name="config_eval")
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=False)
    writer.write(step, result, tags={"mode": "eval", "eval_settings": settings})
    writer.close()
    return result


def sample_chunk_size(num_samples: int, batch_size: int, num_classes: int = 0) -> int:
    """Samples per sampler call: batch_size (0: all), rounded down to a multiple of num_classes so that
    the class cycle arange(n) % num_classes of every chunk continues the whole run's."""
    if batch_size <= 0 or batch_size >= num_samples:
        return num_samples
    if num_classes > 0:
        batch_size = max(num_classes, batch_size - batch_size % num_classes)
    return min(batch_size, num_samples)


class ClassifierGuidance(NamedTuple):
    """A noisy classifier for guided sampling: log p(y | z_t), the target labels [num_samples], the scale, K."""

    log_prob_fn: Callable
    labels: Array
    scale: float
    num_classes: int


def _classifier_guidance(config: ml_collections.ConfigDict, n: int) -> ClassifierGuidance | None:
    """The ClassifierGuidance of config.guidance for n samples, or None without a classifier."""
    g = config.guidance
    if not g.classifier_workdir:
        return None
    log_prob_fn, num_classes = load_log_prob_fn(g.classifier_workdir)
    if not -1 <= g.classifier_label < num_classes:
        raise validation.ConfigError(
            f"config.guidance.classifier_label={g.classifier_label} must be -1 (each "
            f"class in turn) or a class of the classifier, in [0, {num_classes})."
        )
    labels = (
        jnp.full((n,), g.classifier_label, jnp.int32)
        if g.classifier_label >= 0
        else jnp.arange(n, dtype=jnp.int32) % num_classes
    )
    return ClassifierGuidance(log_prob_fn, labels, g.classifier_scale, num_classes)


def sample_name(config: ml_collections.ConfigDict, step: int) -> str:
    """sample_step<k>_<method><steps>_w<w>_c<class>[_cls<scale>_y<label>]_<8 hex of every sampling/guidance key>.

    The hash makes runs that differ in any option (eta, grid, clipping ...) write different files.
    """
    resolved = validation.resolve(config)  # an option left unset and set to its default: the same name
    s, g = resolved.sampling, resolved.guidance
    name = f"sample_step{step}_{s.method}{s.num_steps}_w{s.guidance_weight:g}_c{s.class_label}"
    if g.classifier_workdir:
        name += f"_cls{g.classifier_scale:g}_y{g.classifier_label}"
    options = json.dumps({"sampling": json.loads(s.to_json()), "guidance": json.loads(g.to_json())}, sort_keys=True)
    return f"{name}_{hashlib.sha256(options.encode()).hexdigest()[:8]}"


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """--mode=sample: config.sampling.num_samples samples from the newest checkpoint to a PNG grid, an .npz and the config (.json).

    Drawn in chunks of config.sampling.batch_size, chunk i with fold_in(key, i); classifier guidance
    from config.guidance (a noisy classifier trained by vdm.tasks.classifier_task).
    """
    task, mesh, state, step = restore_for_inference(config, workdir, mode="sample")
    s = config.sampling
    num = max(s.num_samples, config.fid.samples)
    guidance = _classifier_guidance(config, num)
    chunk = sample_chunk_size(num, s.batch_size, guidance.num_classes if guidance else config.model.num_classes)
    sampler = task.sampler(
        chunk, classifier=(guidance.log_prob_fn, guidance.labels[:chunk], guidance.scale) if guidance else None
    )
    key = derived_key(config, 2, step)
    num_chunks = -(-num // chunk)
    samples = np.concatenate(
        [
            np.asarray(sampler(state.ema_params, key if num_chunks == 1 else jax.random.fold_in(key, i)))
            for i in range(num_chunks)
        ]
    )[:num]
    name = sample_name(config, step)
    path = os.path.join(workdir, "samples", name)
    if jax.process_index() == 0:
        save_samples_png(path + ".png", samples, task.data_info.encoding)
        labels = guidance.labels if guidance else task.sample_labels(num)
        np.savez(
            path + ".npz",
            samples=samples,
            labels=np.asarray(labels) if labels is not None else np.zeros((0,), np.int32),
        )
        validation.save_config(config, os.path.dirname(path), name=name)
        if config.fid.samples > 0:
            score_samples(config, task.data_info, samples[: config.fid.samples], step, workdir, name)
    return path + ".png"


def score_samples(
    config: ml_collections.ConfigDict,
    info: pipeline.DatasetInfo,
    samples: np.ndarray,
    step: int,
    workdir: str,
    name: str,
) -> dict[str, float]:
    """Inception FID and KID (vdm.evaluation.fid.score_samples) of samples against config.fid.reference, to metrics.jsonl.

    The reference statistics of the split (its first fid.reference_examples, 0: all) are computed
    once and cached beside the data.
    """
    from vdm.evaluation import fid

    e = config.fid
    scores = fid.score_samples(
        samples,
        f"{config.data.dataset}:{e.reference}",
        num_reference=e.reference_examples or None,
        encoding_name=info.encoding,
        data_dir=config.data.data_dir or None,
        kid_subset_size=min(1000, len(samples)),
    )
    result = {f"sample/{k}": v for k, v in scores.items()}
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=False)
    writer.write(step, result, tags={"mode": "sample", "samples": name})
    writer.close()
    log.info(
        "%s: Inception FID %.3f, KID %.5f +- %.5f (%d samples vs %d of %s:%s)",
        name,
        scores["fid"],
        scores["kid"],
        scores["kid_se"],
        scores["num_samples"],
        scores["num_reference"],
        config.data.dataset,
        e.reference,
    )
    return result
