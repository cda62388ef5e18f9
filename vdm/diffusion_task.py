"""The diffusion model as a Task of the loop (vdm/train.py): its batches, train step, periodic evaluation, restore.

`DiffusionTask` gives `train.run` what is specific to the diffusion model: batches {'x', 'label',
'index'} (index: each row's place in the global batch, which the per-example noise is drawn by),
`diffusion_model.train_step`, the periodic evaluation (the true ELBO over the test split in
bits/dim with its standard error, and a sample grid, with the EMA params) and the restore of a
checkpoint written in the other VDMUNet block layout. `train_and_evaluate` is what
`python -m vdm.main` runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm import config_utils, data, parallel, train
from vdm.checkpoint import BlockLayoutError, Checkpointer
from vdm.diffusion_model import (T_HISTOGRAM, DiffusionModel, derived_key, eval_step, importance_eval_step,
                                 importance_proposal, pilot_eval_step, setup, train_step)
from vdm.guidance import cfg_denoise_fn, classifier_guided_denoise_fn
from vdm.metrics import MetricWriter, plot_bpd, save_samples_png
from vdm.models import convert
from vdm.objectives import bits_per_dim
from vdm.optim import TrainState
from vdm.sampling import options_from_config, sample as run_sampler

Array = jax.Array
PyTree = Any
TERMS = ("total", "reconstruction", "prior", "diffusion")
SUFFIX = {"total": "", "reconstruction": "_recon", "prior": "_prior", "diffusion": "_diffusion"}
log = logging.getLogger(__name__)


def mean_and_se(nats: np.ndarray, num_dims: int) -> tuple[float, float]:
    """(mean, standard error std/sqrt(N)) of per-example nats, in bits/dim."""
    n = len(nats)
    se = float(bits_per_dim(np.std(nats, ddof=1), num_dims) / math.sqrt(n)) if n > 1 else float("nan")
    return float(bits_per_dim(np.mean(nats), num_dims)), se


def over_eval_split(eval_fn: Callable, params: PyTree, config: ml_collections.ConfigDict, mesh: Any, key: Array,
                    split: str, desc: str) -> PyTree:
    """parallel.over_split with config.eval's batch (config_utils.eval_batch_size) and its max_examples cap."""
    e = config.eval
    return parallel.over_split(eval_fn, params, config.data, config_utils.eval_batch_size(e, jax.device_count()),
                               mesh, key, split, e.max_examples, desc)


def evaluate_elbo(eval_fn: Callable, params: PyTree, config: ml_collections.ConfigDict, info: data.DatasetInfo,
                  mesh: Any, key: Array, split: str = "test") -> dict[str, float]:
    """-ELBO in bits/dim over the whole split: eval/bpd{,_recon,_prior,_diffusion}, eval/bpd_se, eval/num_examples.

    eval_fn = parallel.data_parallel_eval(per-example eval step); bpd_se is the standard error
    std(total_bpd) / sqrt(N) of the per-example Monte-Carlo estimates.
    """
    out = over_eval_split(eval_fn, params, config, mesh, key, split, "eval")
    nats = {k: np.asarray(out[k], np.float64) for k in TERMS}
    result = {f"eval/bpd{SUFFIX[k]}": float(bits_per_dim(np.mean(v), info.num_dims)) for k, v in nats.items()}
    result["eval/bpd_se"] = mean_and_se(nats["total"], info.num_dims)[1]
    result["eval/num_examples"] = len(nats["total"])
    return result


def elbo_over_split(model: DiffusionModel, mesh: Any, params: PyTree, key: Array, cache: dict,
                    split: str = "test") -> dict[str, float]:
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
    pilot = parallel.over_split(cache["pilot"], params, c.data, config_utils.eval_batch_size(c.eval, jax.device_count()),
                                mesh, k_pilot, "train", c.eval.pilot_examples, "pilot")
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


def make_sampler(model: DiffusionModel, num: int, classifier: tuple | None = None) -> Callable[[PyTree, Array], Array]:
    """jit fn(params, key) -> num samples [num, *shape] with config.sampling (method, steps, options, guidance, class).

    classifier: optional (log_prob_fn(z, t, y), labels [num], scale) for classifier guidance.
    """
    c = model.config
    labels = sample_labels(c, num)
    shape = (num,) + tuple(model.info.shape)
    options = options_from_config(c.sampling)

    def fn(params: PyTree, key: Array) -> Array:
        if labels is not None and c.sampling.guidance_weight > 0:
            cond = lambda z, t, y: model.denoise_fn(params, y)(z, t)
            denoise = cfg_denoise_fn(cond, c.model.num_classes, c.sampling.guidance_weight, y=labels)
        else:
            denoise = model.denoise_fn(params, labels, with_variance=options.get("variance") == "learned")
        if classifier is not None:
            log_prob_fn, y, scale = classifier
            denoise = classifier_guided_denoise_fn(denoise, log_prob_fn, y, scale, model.schedule(params),
                                                   c.model.parameterization)
        return run_sampler(denoise, shape, key, schedule=model.schedule(params),
                           parameterization=c.model.parameterization, method=c.sampling.method,
                           num_steps=c.sampling.num_steps, **options)

    return jax.jit(fn)


@dataclasses.dataclass(eq=False)
class DiffusionTask:
    """The diffusion model as a train.Task: its steps, the ELBO and sample grid as periodic eval, layout-converting restore."""
    model: DiffusionModel
    cache: dict = dataclasses.field(default_factory=dict)
    display: tuple[str, ...] = ("eval/bpd", "eval/bpd_se")       # what the loop prints of an eval

    @property
    def config(self) -> ml_collections.ConfigDict:
        """The run's config."""
        return self.model.config

    def init_state(self) -> TrainState:
        """DiffusionModel.init_state from PRNGKey(config.seed)."""
        return self.model.init_state(jax.random.PRNGKey(self.config.seed))

    def train_batches(self, start_step: int) -> Iterator[dict]:
        """data.train_iterator of config.data: this process's rows {'x', 'label', 'index'} of each global batch."""
        t = self.config.training
        return data.train_iterator(self.config.data, t.batch_size, seed=self.config.seed, start_step=start_step,
                                   **parallel.process_shard())

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """vdm.diffusion_model.train_step."""
        return train_step(self.model, state, batch)

    def restore(self, ckpt: Checkpointer, like: TrainState, *, quarantine: bool = False
                ) -> tuple[TrainState | None, int | None]:
        """ckpt.restore_latest(like); a checkpoint of the other VDMUNet block layout (config.model.scan_blocks) is
        restored in its own layout and converted (vdm.models.maybe_convert_params), with a warning."""
        try:
            return ckpt.restore_latest(like, quarantine=quarantine)
        except BlockLayoutError as e:
            scanned = bool(convert.is_scanned(like))
            restored, step = ckpt.restore_latest(convert.maybe_convert_params(like, scanned=not scanned),
                                                 quarantine=quarantine)
            log.warning("%s Converted it to the %s layout.", e.args[0].split(". Either")[0],
                        "scanned" if scanned else "unrolled")
            return convert.maybe_convert_params(restored, scanned=scanned), step

    def log_state(self, state: TrainState, step: int, writer: MetricWriter) -> None:
        """The adaptive noise schedule's p(lambda) over its lambda bins (config.loss.t_sampling='adaptive'), as 't_histogram'."""
        if not self.model.adaptive:
            return
        edges, probs = self.model.t_distribution(parallel.to_host(state.stats[T_HISTOGRAM]))
        writer.histogram(step, "train/t_histogram", np.asarray(edges), np.asarray(probs))

    def evaluate(self, state: TrainState, step: int, mesh: Any, workdir: str, writer: MetricWriter) -> dict:
        """Test -ELBO bits/dim with the EMA params and a sample grid (evaluate_and_sample)."""
        return evaluate_and_sample(self.model, mesh, state, step, workdir, writer, self.cache)


def evaluate_and_sample(model: DiffusionModel, mesh: Any, state: TrainState, step: int, workdir: str,
                        writer: MetricWriter, cache: dict) -> dict:
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
        save_samples_png(os.path.join(workdir, "samples", f"step_{step:07d}.png"), samples, model.info.encoding)
        plot_bpd(workdir, num_dims=model.info.num_dims)
    return result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train the diffusion model of `config` in `workdir` (resuming); return the last eval metrics (eval/bpd, ...)."""
    model, mesh = setup(config)
    return train.run(DiffusionTask(model), mesh, workdir)
