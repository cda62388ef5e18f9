"""The diffusion model as a Task of the loop (vdm/tasks/loop.py): its batches, train step, periodic evaluation, restore.

`DiffusionTask` gives `loop.run` what is specific to the diffusion model: batches {'x', 'label',
'index'} (index: each row's place in the global batch, which the per-example noise is drawn by),
`diffusion_model.train_step`, the periodic evaluation (the true ELBO over the test split in
bits/dim with its standard error, and a sample grid, with the EMA params) and the restore of a
checkpoint written in the other VDMUNet or DiT block layout. `train_and_evaluate` is what
`python -m vdm.main` runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm.data import pipeline
from vdm.evaluation.split_eval import bpd_report, eval_batch_size, over_eval_split, over_split
from vdm.infra import parallel
from vdm.infra.checkpoint import Checkpointer, CheckpointMismatchError
from vdm.infra.metrics import MetricWriter, plot_bpd, save_samples_png
from vdm.infra.optim import TrainState
from vdm.models import convert
from vdm.models.text_net import null_text
from vdm.sampling.guidance import cfg_denoise_fn, classifier_guided_denoise_fn
from vdm.sampling.samplers import options_from_config
from vdm.sampling.samplers import sample as run_sampler
from vdm.tasks import loop
from vdm.tasks.diffusion_model import (
    T_HISTOGRAM,
    DiffusionModel,
    derived_key,
    eval_step,
    importance_eval_step,
    importance_proposal,
    ode_eval_step,
    pilot_eval_step,
    setup,
    train_step,
)
from vdm.tasks.text_condition import read_prompts

Array = jax.Array
PyTree = Any
TERMS = {"total": "", "reconstruction": "_recon", "prior": "_prior", "diffusion": "_diffusion"}  # term: eval/bpd suffix
log = logging.getLogger(__name__)


def evaluate_elbo(
    eval_fn: Callable,
    params: PyTree,
    config: ml_collections.ConfigDict,
    info: pipeline.DatasetInfo,
    mesh: Any,
    key: Array,
    split: str = "test",
) -> dict[str, float]:
    """-ELBO in bits/dim over the whole split: eval/bpd{,_recon,_prior,_diffusion}, eval/bpd_se, eval/num_examples.

    eval_fn = parallel.data_parallel_eval(per-example eval step); bpd_se is the standard error
    std(total_bpd) / sqrt(N) of the per-example Monte-Carlo estimates.
    """
    return bpd_report(over_eval_split(eval_fn, params, config, mesh, key, split, "eval"), TERMS, info.num_dims)


def elbo_over_split(
    model: DiffusionModel, mesh: Any, params: PyTree, key: Array, cache: dict, split: str = "test"
) -> dict[str, float]:
    """evaluate_elbo of the model: the plain estimator (t ~ U(0, 1)), or config.eval.t_sampling='importance'.

    'importance': a pilot pass over the first config.eval.pilot_examples train examples (uniform t)
    gives the proposal (diffusion_model.importance_proposal), then the split is evaluated with t
    drawn from it (importance_eval_step): the same bits/dim in expectation, a smaller SE. The result
    adds eval/pilot_examples (network evaluations spent on the pilot). `cache` keeps the compiled steps.
    """
    c = model.config
    if c.eval.t_sampling != "importance":
        if "eval" not in cache:
            cache["eval"] = parallel.data_parallel_eval(functools.partial(eval_step, model), mesh)
        return evaluate_elbo(cache["eval"], params, c, model.info, mesh, key, split)
    if "importance" not in cache:
        cache["pilot"] = parallel.data_parallel_eval(functools.partial(pilot_eval_step, model), mesh)
        cache["importance"] = parallel.data_parallel_eval(functools.partial(importance_eval_step, model), mesh)
    k_pilot, k_eval = jax.random.split(key)
    pilot = over_split(
        cache["pilot"],
        params,
        c.data,
        eval_batch_size(c.eval, jax.device_count()),
        mesh,
        k_pilot,
        "train",
        c.eval.pilot_examples,
        "pilot",
    )
    probs = importance_proposal(model, params, pilot)
    result = evaluate_elbo(cache["importance"], {"params": params, "probs": probs}, c, model.info, mesh, k_eval, split)
    return {**result, "eval/pilot_examples": len(pilot["lam"])}


def sample_labels(config: ml_collections.ConfigDict, num: int) -> Array | None:
    """Labels for conditional sampling: config.sampling.class_label, or one of each class in turn (-1); None if unconditional."""
    num_classes = config.model.num_classes
    if num_classes == 0:
        return None
    if config.sampling.class_label >= 0:
        return jnp.full((num,), config.sampling.class_label, jnp.int32)
    return jnp.arange(num, dtype=jnp.int32) % num_classes


def sample_prompts(model: DiffusionModel, num: int) -> tuple[list[str], np.ndarray] | None:
    """A text model's sampling prompts (config.sampling.prompt / prompts_file, else test captions) and each sample's
    prompt index [num] (arange(num) % P: prompt p fills row p of the grid); None without text."""
    if model.text is None:
        return None
    prompts = read_prompts(model.config.sampling, model.text.test_captions, num)
    return prompts, np.arange(num, dtype=np.int32) % len(prompts)


def grid_labels(model: DiffusionModel, num: int) -> Array | None:
    """The rows of a sample grid: each sample's class (sample_labels) or, for a text model, its prompt index."""
    prompted = sample_prompts(model, num)
    return sample_labels(model.config, num) if prompted is None else prompted[1]


def sample_condition(model: DiffusionModel, num: int) -> tuple[Any, Any]:
    """(what `num` samples are conditioned on, the null condition of guidance): (class labels or None, the null
    class), or for a text model ({'label': None, 'text': the prompts' text}, the same with no tokens)."""
    prompted = sample_prompts(model, num)
    if prompted is None:
        return sample_labels(model.config, num), model.config.model.num_classes
    prompts, rows = prompted
    text = {k: jnp.asarray(v[rows]) for k, v in model.text.encode_prompts(prompts).items()}
    return {"label": None, "text": text}, {"label": None, "text": null_text(text)}


def make_sampler(model: DiffusionModel, num: int, classifier: tuple | None = None) -> Callable[[PyTree, Array], Array]:
    """jit fn(params, key) -> num samples [num, *shape] with config.sampling (method, steps, options, guidance, class
    or prompts).

    classifier: optional (log_prob_fn(z, t, y), labels [num], scale) for classifier guidance.
    """
    c = model.config
    condition, null = sample_condition(model, num)
    shape = (num,) + tuple(model.info.shape)
    options = options_from_config(c.sampling)

    def fn(params: PyTree, key: Array) -> Array:
        if condition is not None and c.sampling.guidance_weight > 0:
            cond = lambda z, t, y: model.denoise_fn(params, y)(z, t)
            denoise = cfg_denoise_fn(cond, null, c.sampling.guidance_weight, y=condition)
        else:
            denoise = model.denoise_fn(params, condition, with_variance=options.get("variance") == "learned")
        if classifier is not None:
            log_prob_fn, y, scale = classifier
            denoise = classifier_guided_denoise_fn(
                denoise, log_prob_fn, y, scale, model.schedule(params), c.model.parameterization
            )
        return run_sampler(
            denoise,
            shape,
            key,
            schedule=model.schedule(params),
            parameterization=c.model.parameterization,
            method=c.sampling.method,
            num_steps=c.sampling.num_steps,
            **options,
        )

    return jax.jit(fn)


@dataclasses.dataclass(eq=False)
class DiffusionTask:
    """The diffusion model as a loop.Task: its steps, the ELBO and sample grid as periodic eval, layout-converting restore."""

    model: DiffusionModel
    cache: dict = dataclasses.field(default_factory=dict)
    display: tuple[str, ...] = ("eval/bpd", "eval/bpd_se")  # what the loop prints of an eval

    @property
    def config(self) -> ml_collections.ConfigDict:
        """The run's config."""
        return self.model.config

    def init_state(self) -> TrainState:
        """DiffusionModel.init_state from PRNGKey(config.seed)."""
        return self.model.init_state(jax.random.PRNGKey(self.config.seed))

    @property
    def data_info(self) -> pipeline.DatasetInfo:
        """The data the model generates (its shape and 8-bit encoding)."""
        return self.model.info

    def evaluate_split(self, mesh: Any, params: PyTree, key: Array) -> dict[str, float]:
        """--mode=eval's figure over the test split: config.eval.method 'elbo' (elbo_over_split, continuous or
        config.eval.num_steps discrete) or 'ode' (evaluate_ode, the probability-flow ODE's bits/dim)."""
        if self.config.eval.method == "ode":
            if "ode" not in self.cache:
                self.cache["ode"] = parallel.data_parallel_eval(
                    functools.partial(ode_eval_step, self.model), mesh, check_vma=False
                )
            return evaluate_ode(self.cache["ode"], params, self.config, self.model.info, mesh, key)
        result = elbo_over_split(self.model, mesh, params, key, self.cache)
        return {**result, "eval/num_steps": self.config.eval.num_steps}

    def sample_labels(self, num: int) -> Array | None:
        """The class labels of `num` samples (config.sampling.class_label), or their prompt indices; None if neither."""
        return grid_labels(self.model, num)

    def sample_prompt_texts(self, num: int) -> list[str] | None:
        """The prompt of each of `num` samples (what vdm.tools.prompt_accuracy scores them against); None without text."""
        prompted = sample_prompts(self.model, num)
        return None if prompted is None else [prompted[0][i] for i in prompted[1]]

    @property
    def sample_cycle(self) -> int:
        """The period of the samples' conditions (chunks keep it): the class count, or the number of prompts."""
        prompted = sample_prompts(self.model, 1)
        return self.config.model.num_classes if prompted is None else len(prompted[0])

    def sampler(self, num: int, classifier: tuple | None = None) -> Callable[[PyTree, Array], Array]:
        """jit fn(params, key) -> num samples (make_sampler; classifier: (log_prob_fn, labels [num], scale))."""
        return make_sampler(self.model, num, classifier=classifier)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """vdm.tasks.diffusion_model.train_step."""
        return train_step(self.model, state, batch)

    def restore(
        self, ckpt: Checkpointer, like: TrainState, *, quarantine: bool = False
    ) -> tuple[TrainState | None, int | None]:
        """ckpt.restore_latest(like); a checkpoint of the other VDMUNet or DiT block layout (config.model.scan_blocks) is
        restored in its own layout and converted (vdm.models.convert.maybe_convert_params), with a warning."""
        try:
            return ckpt.restore_latest(like, quarantine=quarantine)
        except CheckpointMismatchError as e:
            saved, want = convert.block_layout(e.saved_keys), convert.block_layout(e.expected_keys)
            if not (saved and want and saved != want):
                raise
            restored, step = ckpt.restore_latest(
                convert.maybe_convert_params(like, scanned=saved == "scanned"), quarantine=quarantine
            )
            log.warning(
                "checkpoint step %d holds %s VDMUNet blocks but this config expects %s ones "
                "(config.model.scan_blocks=%s). Converted it to the %s layout.",
                e.step,
                saved,
                want,
                want == "scanned",
                want,
            )
            return convert.maybe_convert_params(restored, scanned=want == "scanned"), step

    def log_state(self, state: TrainState, step: int, writer: MetricWriter) -> None:
        """The adaptive noise schedule's p(lambda) over its lambda bins (config.loss.t_sampling='adaptive'), as 't_histogram'."""
        if not self.model.adaptive:
            return
        edges, probs = self.model.t_distribution(parallel.to_host(state.stats[T_HISTOGRAM]))
        writer.histogram(step, "train/t_histogram", np.asarray(edges), np.asarray(probs))

    def evaluate(self, state: TrainState, step: int, mesh: Any, workdir: str, writer: MetricWriter) -> dict:
        """Test -ELBO bits/dim with the EMA params and a sample grid (evaluate_and_sample)."""
        return evaluate_and_sample(self.model, mesh, state, step, workdir, writer, self.cache)


def evaluate_and_sample(
    model: DiffusionModel, mesh: Any, state: TrainState, step: int, workdir: str, writer: MetricWriter, cache: dict
) -> dict:
    """The periodic eval: ELBO over the test split (EMA params), a sample grid to workdir/samples/step_<step>.png.

    `cache` keeps the compiled eval step and sampler between calls.
    """
    config = model.config
    if "sample" not in cache:
        cache["sample"] = make_sampler(model, config.sampling.num_samples)
    t0 = time.perf_counter()
    result = elbo_over_split(model, mesh, state.ema_params, derived_key(config, 1, step), cache)
    result["eval/seconds"] = time.perf_counter() - t0
    samples = parallel.to_host(cache["sample"](state.ema_params, derived_key(config, 2, step)))
    result["eval/sample_nonfinite_frac"] = float(np.mean(~np.isfinite(samples)))
    writer.write(step, result)
    if jax.process_index() == 0:
        labels = grid_labels(model, len(samples))  # a conditional model's grid: one class (or prompt) per row
        save_samples_png(
            os.path.join(workdir, "samples", f"step_{step:07d}.png"), samples, model.info.encoding, labels=labels
        )
        plot_bpd(workdir, num_dims=model.info.num_dims)
    return result


def evaluate_ode(
    eval_fn: Callable,
    params: PyTree,
    config: ml_collections.ConfigDict,
    info: pipeline.DatasetInfo,
    mesh: Any,
    key: Array,
    split: str = "test",
) -> dict[str, float]:
    """-log p(x) in bits/dim through the probability-flow ODE (diffusion_model.ode_eval_step) over the split, config.eval.ode_*.

    eval_fn = parallel.data_parallel_eval(ode_eval_step): data-parallel like the ELBO. 8-bit data
    is dequantised and carries the D log 127.5 offset, so the figure bounds the discrete NLL and
    sits on the ELBO's scale; config.eval.max_examples > 0 reads only that many (the ODE costs
    4 x ode_steps network evaluations per example).
    """
    out = over_eval_split(eval_fn, params, config, mesh, key, split, "ode eval")
    result = bpd_report(
        {"total": out["nll"]}, {"total": ""}, info.num_dims, name="ode_bpd", count="eval/ode_num_examples"
    )
    return {**result, "eval/ode_num_steps": config.eval.ode_steps}


def build(config: ml_collections.ConfigDict, mode: str = "train") -> DiffusionTask:
    """The diffusion Task of `config`, validated for `mode` (diffusion_model.setup)."""
    return DiffusionTask(setup(config, mode=mode)[0])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train the diffusion model of `config` in `workdir` (resuming); return the last eval metrics (eval/bpd, ...)."""
    model, mesh = setup(config)
    return loop.run(DiffusionTask(model), mesh, workdir)
