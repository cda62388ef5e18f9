"""Evaluation over a whole split and sample generation, for the loop and the eval/sample modes.

`evaluate_elbo` reports the true ELBO in bits/dim (total and its three terms, VDM eq. 11)
with a standard error, averaged over every example of the split exactly once (the padded
last batch is masked), whatever objective or parameterisation the model was trained with.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from vdm import data, parallel
from vdm.guidance import cfg_denoise_fn, classifier_guided_denoise_fn
from vdm.sampling import sample as run_sampler

Array = jax.Array
PyTree = Any
TERMS = ("total", "reconstruction", "prior", "diffusion")
SUFFIX = {"total": "", "reconstruction": "_recon", "prior": "_prior", "diffusion": "_diffusion"}


def _gather(tree: PyTree) -> PyTree:
    """Numpy values of global arrays sharded over 'data' (all hosts' shards, in order)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def evaluate_elbo(eval_fn: Callable, params: PyTree, config: Any, info: data.DatasetInfo, mesh: Any,
                  key: Array, split: str = "test") -> dict[str, float]:
    """-ELBO in bits/dim over the whole split: eval/bpd{,_recon,_prior,_diffusion}, eval/bpd_se, eval/num_examples.

    eval_fn = parallel.data_parallel_eval(per-example eval step); bpd_se is the standard error
    std(total_bpd) / sqrt(N) of the per-example Monte-Carlo estimates.
    """
    batch_size = config.eval.batch_size
    per_example = {k: [] for k in TERMS}
    batches = data.eval_iterator(config.data, batch_size, split=split,
                                 **parallel.process_shard())        # this process's rows only
    for i, batch in enumerate(batches):
        mask = parallel.gather_host(batch["mask"])      # the global batch's mask, in process order
        inputs = parallel.shard_batch({"x": batch["x"], "label": batch["label"]}, mesh)
        out = _gather(eval_fn(params, inputs, jax.random.fold_in(key, i)))
        for k in TERMS:
            per_example[k].append(np.asarray(out[k], np.float64)[mask])
    nats = {k: np.concatenate(v) for k, v in per_example.items()}
    n = len(nats["total"])
    to_bpd = 1.0 / (info.num_dims * math.log(2.0))
    result = {f"eval/bpd{SUFFIX[k]}": float(np.mean(v) * to_bpd) for k, v in nats.items()}
    result["eval/bpd_se"] = float(np.std(nats["total"], ddof=1) * to_bpd / math.sqrt(n)) if n > 1 else float("nan")
    result["eval/num_examples"] = n
    return result


def sample_labels(config: Any, num: int) -> Array | None:
    """Labels for conditional sampling: config.sampling.class_label, or one of each class in turn (-1); None if unconditional."""
    num_classes = config.model.num_classes
    if num_classes == 0:
        return None
    if config.sampling.class_label >= 0:
        return jnp.full((num,), config.sampling.class_label, jnp.int32)
    return jnp.arange(num, dtype=jnp.int32) % num_classes


def make_sampler(trainer: Any, num: int, classifier: tuple | None = None) -> Callable[[PyTree, Array], Array]:
    """jit fn(params, key) -> num samples [num, *shape] with config.sampling (method, steps, guidance, class).

    classifier: optional (log_prob_fn(z, t, y), labels [num], scale) for classifier guidance.
    """
    c = trainer.config
    labels = sample_labels(c, num)
    shape = (num,) + tuple(trainer.info.shape)

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
                           num_steps=c.sampling.num_steps)

    return jax.jit(fn)


def evaluate_ode(denoise_fn: Callable, schedule: Any, config: Any, info: data.DatasetInfo, key: Array, *,
                 num_steps: int = 64, num_probes: int = 1, max_examples: int = 0,
                 split: str = "test") -> dict[str, float]:
    """-log p(x) in bits/dim through the probability-flow ODE (vdm.likelihood.ode_nll), over the split.

    8-bit data is dequantised and carries the D log 127.5 offset, so the figure bounds the
    discrete NLL and sits on the ELBO's scale. Runs on the default device, batch by batch;
    max_examples > 0 stops after that many examples (the ODE costs 4 x num_steps evaluations).
    """
    from vdm.likelihood import ode_nll

    nll = jax.jit(lambda x, k: ode_nll(denoise_fn, x, k, schedule=schedule,
                                       parameterization=config.model.parameterization,
                                       num_steps=num_steps, num_probes=num_probes,
                                       dequantize=info.discrete))
    values = []
    for i, batch in enumerate(data.eval_iterator(config.data, config.eval.batch_size, split=split)):
        values.append(np.asarray(nll(jnp.asarray(batch["x"]), jax.random.fold_in(key, i)),
                                 np.float64)[batch["mask"]])
        if max_examples and sum(map(len, values)) >= max_examples:
            break
    nats = np.concatenate(values)[:max_examples or None]
    to_bpd = 1.0 / (info.num_dims * math.log(2.0))
    n = len(nats)
    return {"eval/ode_bpd": float(np.mean(nats) * to_bpd),
            "eval/ode_bpd_se": float(np.std(nats, ddof=1) * to_bpd / math.sqrt(n)) if n > 1 else float("nan"),
            "eval/ode_num_examples": n, "eval/ode_num_steps": num_steps}
