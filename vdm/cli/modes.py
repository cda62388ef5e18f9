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
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm.config import cli_errors, record, validation
from vdm.config.text_checks import conditioning_note
from vdm.data import pipeline
from vdm.infra import parallel
from vdm.infra.checkpoint import Checkpointer
from vdm.infra.metrics import MetricWriter, read_metrics, save_samples_png
from vdm.infra.optim import TrainState
from vdm.tasks import registry
from vdm.tasks.classifier_task import load_log_prob_fn
from vdm.tasks.diffusion_model import derived_key
from vdm.tasks.loop import has_checkpoints, restore_or_init

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
    if not has_checkpoints(ckpt_dir):
        raise FileNotFoundError(cli_errors.untrained_hint(workdir, validation.task_of(config)))
    mesh = parallel.make_mesh()
    with Checkpointer(ckpt_dir, max_to_keep=None, create=False) as ckpt:
        state, step = restore_or_init(task, mesh, ckpt)
    return task, mesh, state, step


def eval_settings(config: ml_collections.ConfigDict) -> dict:
    """What decides an eval's number besides the checkpoint: config.eval (and for the ODE, whose noise is drawn per
    device, the device count; the ELBO's noise is drawn per example, whatever the layout)."""
    settings = json.loads(validation.resolve(config).eval.to_json())  # an unset eval.variance as resolved
    return {**settings, "device_count": jax.device_count()} if config.eval.method == "ode" else settings


def _eval_changed_since(workdir: str, step: int) -> bool:
    """Whether workdir/config_changes.jsonl records an eval.* key changed by a (re)start at `step` or later."""
    changes = record.read_changes(workdir)
    return any(c["step"] >= step and any(k.startswith("eval.") for k in c["changes"]) for c in changes)


def training_eval_settings(workdir: str, step: int) -> dict | None:
    """The eval_settings of the training loop's own eval rows at `step` (always the ELBO, with the recorded config's
    eval section), or None where that is not known: no record, or an eval key changed by a restart at `step` or
    later (config_changes.jsonl), so a row at `step` may have been written before or after it."""
    recorded = record.load_recorded(workdir)
    if recorded is None or _eval_changed_since(workdir, step):
        return None
    recorded.eval.method = "elbo"  # the loop's eval is the ELBO whatever --mode=eval's method
    return eval_settings(recorded)


def recorded_eval(workdir: str, step: int, settings: dict) -> dict | None:
    """The result already in metrics.jsonl for this checkpoint step and these eval settings, or None: a --mode=eval
    row tagged with them, or the training loop's eval row at `step` where its settings (training_eval_settings) match."""
    train_settings = None if settings.get("method") != "elbo" else training_eval_settings(workdir, step)
    for r in reversed(read_metrics(workdir)):
        if r.get("step") != step:
            continue
        tagged = r.get("mode") == "eval" and r.get("eval_settings") == settings
        trained = "mode" not in r and "eval/bpd" in r and train_settings == settings
        if tagged or trained:
            out = {k: v for k, v in r.items() if k.startswith("eval/") and k not in TRAINING_ONLY}
            if trained:
                out["eval/num_steps"] = settings["num_steps"]  # what evaluate_split adds
            return {k: int(v) if k.endswith(("num_examples", "num_steps")) else v for k, v in out.items()}
    return None


TRAINING_ONLY = ("eval/seconds", "eval/sample_nonfinite_frac")  # of the loop's eval rows, not --mode=eval's figures


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=eval with the newest checkpoint's EMA params: config.eval.method 'elbo' (-ELBO bits/dim, continuous
    or config.eval.num_steps discrete) or 'ode' (probability-flow ODE bits/dim); the config goes to config_eval.json.

    The same checkpoint and settings evaluated before (metrics.jsonl: by --mode=eval, or by the training's own eval
    of that step) give the recorded result (the estimate is deterministic given them); otherwise one row is
    appended. The result holds 'step', the checkpoint's. A result that cannot be written raises NotSaved with it.
    """
    task, mesh, state, step = restore_for_inference(config, workdir, mode="eval")
    settings = eval_settings(config)
    done = recorded_eval(workdir, step, settings)
    if done is not None:
        log.info(
            "checkpoint step %d was evaluated with these settings before: its recorded result (metrics.jsonl).", step
        )
        return {**done, "step": step}
    result = task.evaluate_split(mesh, state.ema_params, derived_key(config, 1, step))
    written = []
    try:
        writer = MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=False)
        writer.write(step, result, tags={"mode": "eval", "eval_settings": settings})
        writer.close()
        written.append("metrics.jsonl")
        if jax.process_index() == 0:
            validation.save_config(config, workdir, name="config_eval")
    except OSError as e:
        lost = " and ".join(n for n in ("metrics.jsonl", "config_eval.json") if n not in written)
        raise cli_errors.NotSaved(
            {**result, "step": step},
            f"the eval above was computed but could not be written to {workdir}/{lost} ({e.strerror or e})"
            + ("" if written else "; it is not recorded, and a rerun computes it again")
            + ".",
        ) from None
    return {**result, "step": step}


def eval_summary(config: ml_collections.ConfigDict, result: dict) -> str:
    """--mode=eval's one line: the figure and its SE, the method, N examples evaluated (the whole split or the first
    config.eval.max_examples) and the checkpoint step."""
    e = config.eval
    if "eval/ode_bpd" in result:
        n, figure = result["eval/ode_num_examples"], "probability-flow ODE"
        method, bpd, se = (
            f"ode, {result['eval/ode_num_steps']} steps",
            result["eval/ode_bpd"],
            result["eval/ode_bpd_se"],
        )
    else:
        n, figure, bpd, se = result["eval/num_examples"], "-ELBO", result["eval/bpd"], result["eval/bpd_se"]
        method = f"elbo, T={e.num_steps} steps" if e.num_steps else "elbo, continuous time"
    capped = 0 < e.max_examples <= n
    over = (
        f"the first {n} test examples (config.eval.max_examples={e.max_examples}; 0: the whole split)"
        if capped
        else f"{n} test examples (the whole split)"
    )
    return (
        f"checkpoint step {result.get('step', '?')}: test {figure} {_num(bpd)} +- {_num(se)} bits/dim "
        f"({method}; EMA params) over {over}{conditioning_note(config)}"
    )


def _num(v) -> str:
    """A figure to 4 decimals, or 'nan' where metrics.jsonl holds null."""
    return "nan" if v is None else f"{v:.4f}"


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


def num_drawn(config: ml_collections.ConfigDict) -> int:
    """How many samples --mode=sample draws: config.sampling.num_samples, or config.fid.samples where more."""
    return max(config.sampling.num_samples, config.fid.samples)


def sample_name(config: ml_collections.ConfigDict, step: int) -> str:
    """sample_step<k>_<method><steps>_w<w>_c<class>[_cls<scale>_y<label>]_<8 hex of what decides the draws>.

    The hash covers every key that changes what is drawn: each sampling and guidance key (eta, grid, clipping,
    batch_size ...), with sampling.num_samples read as the number drawn (num_drawn: config.fid.samples counts where
    it is larger), so runs that draw other samples write other files, and a run that draws the same set as an earlier
    one (its name unchanged by this rule where fid.samples <= num_samples) finds it under the same name. The rest of
    what decides the draws, the model and config.seed, is the workdir's run, and the step is in the name.
    """
    resolved = validation.resolve(config)  # an option left unset and set to its default: the same name
    s, g = resolved.sampling, resolved.guidance
    name = f"sample_step{step}_{s.method}{s.num_steps}_w{s.guidance_weight:g}_c{s.class_label}"
    if g.classifier_workdir:
        name += f"_cls{g.classifier_scale:g}_y{g.classifier_label}"
    drawn = {**json.loads(s.to_json()), "num_samples": num_drawn(resolved)}
    for key in ("prompt", "prompts_file"):  # text models' keys: an unset one leaves the other runs' names as they were
        if drawn.get(key) is None:
            drawn.pop(key, None)
    options = json.dumps({"sampling": drawn, "guidance": json.loads(g.to_json())}, sort_keys=True)
    return f"{name}_{hashlib.sha256(options.encode()).hexdigest()[:8]}"


def _draw(config: ml_collections.ConfigDict, task: Any, state: TrainState, step: int) -> tuple[np.ndarray, Any]:
    """(num_drawn samples, their labels or None) from the EMA params: in chunks of config.sampling.batch_size, chunk
    i with fold_in(key, i); classifier guidance from config.guidance."""
    s = config.sampling
    num = num_drawn(config)
    guidance = _classifier_guidance(config, num)
    cycle = guidance.num_classes if guidance else getattr(task, "sample_cycle", config.model.num_classes)
    chunk = sample_chunk_size(num, s.batch_size, cycle)
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
    return samples, guidance.labels if guidance else task.sample_labels(num)


def _save_npz(path: str, samples: np.ndarray, labels: Any, prompts: list[str] | None = None) -> None:
    """samples and labels (none: an empty int32 array) to PATH.npz; a text model's also each sample's prompt."""
    labels = np.asarray(labels) if labels is not None else np.zeros((0,), np.int32)
    extra = {} if prompts is None else {"prompts": np.asarray(prompts, dtype=str)}
    np.savez(path + ".npz", samples=samples, labels=labels, **extra)


def _not_saved(path: str, samples: np.ndarray, labels: Any, error: OSError, prompts: Any = None) -> cli_errors.NotSaved:
    """NotSaved for samples drawn but not written to PATH.*: kept in the temp folder instead where it can be."""
    fallback = os.path.join(tempfile.gettempdir(), os.path.basename(path))
    try:
        _save_npz(fallback, samples, labels, prompts)
        kept = f"they are kept in {fallback}.npz instead"
    except OSError:
        fallback, kept = None, f"nor in {tempfile.gettempdir()}: they are lost"
    return cli_errors.NotSaved(
        fallback and fallback + ".npz",
        f"{len(samples)} samples were drawn, but {path}.png/.npz could not be written ({error.strerror or error}); "
        f"{kept} (no FID scored).",
    )


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """--mode=sample: num_drawn(config) samples from the newest checkpoint to a PNG grid, an .npz and the config (.json).

    Drawn in chunks of config.sampling.batch_size, chunk i with fold_in(key, i); classifier guidance
    from config.guidance (a noisy classifier trained by vdm.tasks.classifier_task). Samples that cannot be written
    raise NotSaved, after they are saved in the temp folder where that can be.
    """
    task, mesh, state, step = restore_for_inference(config, workdir, mode="sample")
    samples, labels = _draw(config, task, state, step)
    prompts = getattr(task, "sample_prompt_texts", lambda num: None)(len(samples))
    name = sample_name(config, step)
    path = os.path.join(workdir, "samples", name)
    if jax.process_index() == 0:
        try:
            save_samples_png(path + ".png", samples, task.data_info.encoding, labels=labels)
            _save_npz(path, samples, labels, prompts)
            validation.save_config(config, os.path.dirname(path), name=name)
        except OSError as e:
            raise _not_saved(path, samples, labels, e, prompts) from None
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
    log.info(
        "%s: Inception FID %.3f, KID %.5f +- %.5f (SE over %d disjoint subsets of %d; %d samples vs %d of %s:%s)",
        name,
        scores["fid"],
        scores["kid"],
        scores["kid_se"],
        scores["kid_subsets"],
        scores["kid_subset_size"],
        scores["num_samples"],
        scores["num_reference"],
        config.data.dataset,
        e.reference,
    )
    try:
        writer = MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=False)
        writer.write(step, result, tags={"mode": "sample", "samples": name})
        writer.close()
    except OSError as err:
        raise cli_errors.NotSaved(
            os.path.join(workdir, "samples", name + ".png"),
            f"the FID/KID logged above could not be written to {workdir}/metrics.jsonl ({err.strerror or err}).",
        ) from None
    return result
