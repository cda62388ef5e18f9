"""Evaluation and sampling of a trained diffusion model: the loop's periodic eval, and --mode=eval / --mode=sample.

`evaluate_elbo` reports the true ELBO in bits/dim (total and its three terms, VDM eq. 11)
with a standard error, averaged over every example of the split exactly once (the padded
last batch is masked), whatever objective or parameterisation the model was trained with.
Every setting comes from the config: config.eval (method, steps), config.sampling (method and
all its options) and config.guidance (classifier guidance).
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm import config_utils, data, parallel
from vdm.checkpoint import Checkpointer
from vdm.guidance import cfg_denoise_fn, classifier_guided_denoise_fn
from vdm.metrics import MetricWriter, plot_bpd, save_samples_png
from vdm.objectives import bits_per_dim
from vdm.sampling import options_from_config, sample as run_sampler
from vdm.trainer import Trainer, TrainState, create_train_state, derived_key, eval_step, restore_or_init, setup

Array = jax.Array
PyTree = Any
TERMS = ("total", "reconstruction", "prior", "diffusion")
SUFFIX = {"total": "", "reconstruction": "_recon", "prior": "_prior", "diffusion": "_diffusion"}


def mean_and_se(nats: np.ndarray, num_dims: int) -> tuple[float, float]:
    """(mean, standard error std/sqrt(N)) of per-example nats, in bits/dim."""
    n = len(nats)
    se = float(bits_per_dim(np.std(nats, ddof=1), num_dims) / math.sqrt(n)) if n > 1 else float("nan")
    return float(bits_per_dim(np.mean(nats), num_dims)), se


def over_split(eval_fn: Callable, params: PyTree, data_config: Any, batch_size: int, mesh: Any, key: Array,
               split: str = "test") -> PyTree:
    """Per-example outputs of eval_fn(params, batch, fold_in(key, i)) over every example of the split exactly once [N, ...].

    eval_fn = parallel.data_parallel_eval(per-example step); each process reads only its rows of
    every batch, and the padded end of the last batch is masked out.
    """
    outs = []
    batches = data.eval_iterator(data_config, batch_size, split=split,
                                 **parallel.process_shard())        # this process's rows only
    for i, batch in enumerate(batches):
        mask = parallel.gather_host(batch["mask"])      # the global batch's mask, in process order
        inputs = parallel.shard_batch({"x": batch["x"], "label": batch["label"]}, mesh)
        out = parallel.gather(eval_fn(params, inputs, jax.random.fold_in(key, i)))
        outs.append(jax.tree.map(lambda v: np.asarray(v)[mask], out))
    return jax.tree.map(lambda *v: np.concatenate(v), *outs)


def evaluate_elbo(eval_fn: Callable, params: PyTree, config: ml_collections.ConfigDict, info: data.DatasetInfo,
                  mesh: Any, key: Array, split: str = "test") -> dict[str, float]:
    """-ELBO in bits/dim over the whole split: eval/bpd{,_recon,_prior,_diffusion}, eval/bpd_se, eval/num_examples.

    eval_fn = parallel.data_parallel_eval(per-example eval step); bpd_se is the standard error
    std(total_bpd) / sqrt(N) of the per-example Monte-Carlo estimates.
    """
    out = over_split(eval_fn, params, config.data, config.eval.batch_size, mesh, key, split)
    nats = {k: np.asarray(out[k], np.float64) for k in TERMS}
    result = {f"eval/bpd{SUFFIX[k]}": float(bits_per_dim(np.mean(v), info.num_dims)) for k, v in nats.items()}
    result["eval/bpd_se"] = mean_and_se(nats["total"], info.num_dims)[1]
    result["eval/num_examples"] = len(nats["total"])
    return result


def evaluate_ode(denoise_fn: Callable, schedule: Any, config: ml_collections.ConfigDict, info: data.DatasetInfo,
                 key: Array, split: str = "test") -> dict[str, float]:
    """-log p(x) in bits/dim through the probability-flow ODE (vdm.likelihood.ode_nll) over the split, config.eval.ode_*.

    8-bit data is dequantised and carries the D log 127.5 offset, so the figure bounds the
    discrete NLL and sits on the ELBO's scale. Runs on the default device, batch by batch;
    config.eval.max_examples > 0 stops after that many (the ODE costs 4 x ode_steps evaluations).
    """
    from vdm.likelihood import ode_nll

    e = config.eval
    nll = jax.jit(lambda x, k: ode_nll(denoise_fn, x, k, schedule=schedule,
                                       parameterization=config.model.parameterization,
                                       num_steps=e.ode_steps, num_probes=e.ode_probes, dequantize=info.discrete,
                                       encoding=info.encoding))
    values = []
    for i, batch in enumerate(data.eval_iterator(config.data, e.batch_size, split=split)):
        values.append(np.asarray(nll(jnp.asarray(batch["x"]), jax.random.fold_in(key, i)),
                                 np.float64)[batch["mask"]])
        if e.max_examples and sum(map(len, values)) >= e.max_examples:
            break
    nats = np.concatenate(values)[:e.max_examples or None]
    bpd, se = mean_and_se(nats, info.num_dims)
    return {"eval/ode_bpd": bpd, "eval/ode_bpd_se": se, "eval/ode_num_examples": len(nats),
            "eval/ode_num_steps": e.ode_steps}


def sample_labels(config: ml_collections.ConfigDict, num: int) -> Array | None:
    """Labels for conditional sampling: config.sampling.class_label, or one of each class in turn (-1); None if unconditional."""
    num_classes = config.model.num_classes
    if num_classes == 0:
        return None
    if config.sampling.class_label >= 0:
        return jnp.full((num,), config.sampling.class_label, jnp.int32)
    return jnp.arange(num, dtype=jnp.int32) % num_classes


def make_sampler(trainer: Trainer, num: int, classifier: tuple | None = None) -> Callable[[PyTree, Array], Array]:
    """jit fn(params, key) -> num samples [num, *shape] with config.sampling (method, steps, options, guidance, class).

    classifier: optional (log_prob_fn(z, t, y), labels [num], scale) for classifier guidance.
    """
    c = trainer.config
    labels = sample_labels(c, num)
    shape = (num,) + tuple(trainer.info.shape)
    options = options_from_config(c.sampling)

    def fn(params: PyTree, key: Array) -> Array:
        if labels is not None and c.sampling.guidance_weight > 0:
            cond = lambda z, t, y: trainer.denoise_fn(params, y)(z, t)
            denoise = cfg_denoise_fn(cond, c.model.num_classes, c.sampling.guidance_weight, y=labels)
        else:
            denoise = trainer.denoise_fn(params, labels)
        if classifier is not None:
            log_prob_fn, y, scale = classifier
            denoise = classifier_guided_denoise_fn(denoise, log_prob_fn, y, scale, trainer.schedule(params),
                                                   c.model.parameterization)
        return run_sampler(denoise, shape, key, schedule=trainer.schedule(params),
                           parameterization=c.model.parameterization, method=c.sampling.method,
                           num_steps=c.sampling.num_steps, **options)

    return jax.jit(fn)


def evaluate_and_sample(trainer: Trainer, mesh: Any, state: TrainState, step: int, workdir: str,
                        writer: MetricWriter, cache: dict) -> dict:
    """The loop's periodic eval: ELBO over the test split (EMA params), a sample grid to workdir/samples/step_<step>.png.

    `cache` keeps the compiled eval step and sampler between calls.
    """
    config = trainer.config
    if not cache:
        cache["eval"] = parallel.data_parallel_eval(functools.partial(eval_step, trainer), mesh)
        cache["sample"] = make_sampler(trainer, config.sampling.num_samples)
    t0 = time.perf_counter()
    result = evaluate_elbo(cache["eval"], state.ema_params, config, trainer.info, mesh, derived_key(config, 1, step))
    result["eval/seconds"] = time.perf_counter() - t0
    samples = parallel.to_host(cache["sample"](state.ema_params, derived_key(config, 2, step)))
    result["eval/sample_nonfinite_frac"] = float(np.mean(~np.isfinite(samples)))
    writer.write(step, result)
    if jax.process_index() == 0:
        save_samples_png(os.path.join(workdir, "samples", f"step_{step:07d}.png"), samples, trainer.info.encoding)
        plot_bpd(workdir, num_dims=trainer.info.num_dims)
    return result


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str) -> tuple[Trainer, Any, TrainState, int]:
    """(trainer, mesh, state, step) from the newest intact checkpoint of `workdir`; error if there is none."""
    trainer, mesh = setup(config)
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None) as ckpt:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}; "
                                    "train first (--mode=train) with this --workdir.")
        init = lambda: create_train_state(trainer, jax.random.PRNGKey(config.seed))
        state, step = restore_or_init(init, mesh, ckpt)
    return trainer, mesh, state, step


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=eval with the newest checkpoint's EMA params: config.eval.method 'elbo' (-ELBO bits/dim, continuous
    or config.eval.num_steps discrete) or 'ode' (probability-flow ODE bits/dim); the config goes to config_eval.json."""
    trainer, mesh, state, step = restore_for_inference(config, workdir)
    key = derived_key(config, 1, step)
    if config.eval.method == "ode":
        result = evaluate_ode(trainer.denoise_fn(state.ema_params), trainer.schedule(state.ema_params),
                              config, trainer.info, key)
    else:
        eval_fn = parallel.data_parallel_eval(functools.partial(eval_step, trainer), mesh)
        result = evaluate_elbo(eval_fn, state.ema_params, config, trainer.info, mesh, key)
        result["eval/num_steps"] = config.eval.num_steps
    if jax.process_index() == 0:
        config_utils.save_config(config, workdir, name="config_eval")
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=False)
    writer.write(step, result)
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


def _classifier_guidance(config: ml_collections.ConfigDict) -> ClassifierGuidance | None:
    """The ClassifierGuidance of config.guidance, or None without a classifier."""
    g, n = config.guidance, config.sampling.num_samples
    if not g.classifier_workdir:
        return None
    from vdm.train_classifier import load_log_prob_fn       # same layer: the classifier's own trainer
    log_prob_fn, num_classes = load_log_prob_fn(g.classifier_workdir)
    if not -1 <= g.classifier_label < num_classes:
        raise config_utils.ConfigError(f"config.guidance.classifier_label={g.classifier_label} must be -1 (each "
                                       f"class in turn) or a class of the classifier, in [0, {num_classes}).")
    labels = (jnp.full((n,), g.classifier_label, jnp.int32) if g.classifier_label >= 0
              else jnp.arange(n, dtype=jnp.int32) % num_classes)
    return ClassifierGuidance(log_prob_fn, labels, g.classifier_scale, num_classes)


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """--mode=sample: config.sampling.num_samples samples from the newest checkpoint to a PNG grid, an .npz and the config (.json).

    Drawn in chunks of config.sampling.batch_size, chunk i with fold_in(key, i); classifier guidance
    from config.guidance (a noisy classifier trained by vdm.train_classifier).
    """
    trainer, mesh, state, step = restore_for_inference(config, workdir)
    s = config.sampling
    guidance = _classifier_guidance(config)
    chunk = sample_chunk_size(s.num_samples, s.batch_size,
                              guidance.num_classes if guidance else config.model.num_classes)
    sampler = make_sampler(trainer, chunk, classifier=(guidance.log_prob_fn, guidance.labels[:chunk], guidance.scale)
                           if guidance else None)
    key = derived_key(config, 2, step)
    num_chunks = -(-s.num_samples // chunk)
    samples = np.concatenate([np.asarray(sampler(state.ema_params, key if num_chunks == 1
                                                 else jax.random.fold_in(key, i)))
                              for i in range(num_chunks)])[:s.num_samples]
    name = f"sample_step{step}_{s.method}{s.num_steps}_w{s.guidance_weight:g}_c{s.class_label}"
    if guidance:
        name += f"_cls{config.guidance.classifier_scale:g}_y{config.guidance.classifier_label}"
    path = os.path.join(workdir, "samples", name)
    if jax.process_index() == 0:
        save_samples_png(path + ".png", samples, trainer.info.encoding)
        labels = guidance.labels if guidance else sample_labels(config, s.num_samples)
        np.savez(path + ".npz", samples=samples,
                 labels=np.asarray(labels) if labels is not None else np.zeros((0,), np.int32))
        config_utils.save_config(config, os.path.dirname(path), name=name)
    return path + ".png"
