"""Evaluation over a data split, shared by every Task: each example exactly once, data parallel, and one bits/dim report.

`over_split` runs a per-example eval step over a split (each process reads only its rows); `mean_and_se`
and `bpd_report` turn per-example nats into bits/dim with the standard error of the mean (nats / (D ln 2),
vdm.core.encoding.bits_per_dim). Nothing here knows a model.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from vdm.core.encoding import bits_per_dim
from vdm.data import pipeline
from vdm.infra import parallel

PyTree = Any


def eval_batch_size(e: ml_collections.ConfigDict, device_count: int) -> int:
    """The eval batch actually used: config.eval.batch_size, shrunk to the smallest multiple of the device count
    that holds config.eval.max_examples (> 0), so a capped eval reads and holds no more than it needs."""
    if e.max_examples <= 0:
        return e.batch_size
    return min(e.batch_size, -(-e.max_examples // device_count) * device_count)


def over_split(
    eval_fn: Callable,
    params: PyTree,
    data_config: Any,
    batch_size: int,
    mesh: Any,
    key: jax.Array,
    split: str = "test",
    max_examples: int = 0,
    desc: str = "eval",
) -> PyTree:
    """Per-example outputs of eval_fn(params, batch, fold_in(key, i)) over every example of the split exactly once [N, ...].

    eval_fn = data_parallel_eval(per-example step); batch i holds {'x', 'label', 'index'}; each
    process reads only its rows of every batch, and the padded end of the last batch is masked
    out. max_examples > 0: only the split's first max_examples examples are read.
    """
    outs = []
    batches = pipeline.eval_iterator(
        data_config, batch_size, split=split, max_examples=max_examples, **parallel.process_shard()
    )  # this process's rows only
    num = pipeline.get_dataset_info(data_config).num_test if split == "test" else None
    num = min(num, max_examples) if num and max_examples else num
    bar = tqdm.tqdm(
        batches,
        total=-(-num // batch_size) if num else None,
        desc=desc,
        unit="batch",
        leave=False,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    for i, batch in enumerate(bar):
        mask = parallel.gather_host(batch["mask"])  # the global batch's mask, in process order
        inputs = parallel.shard_batch({k: v for k, v in batch.items() if k != "mask"}, mesh)
        out = parallel.gather(eval_fn(params, inputs, jax.random.fold_in(key, i)))
        outs.append(jax.tree.map(lambda v: np.asarray(v)[mask], out))
    return jax.tree.map(lambda *v: np.concatenate(v), *outs)


def over_eval_split(
    eval_fn: Callable,
    params: PyTree,
    config: ml_collections.ConfigDict,
    mesh: Any,
    key: jax.Array,
    split: str = "test",
    desc: str = "eval",
) -> PyTree:
    """over_split with config.eval's batch (eval_batch_size) and its max_examples cap."""
    e = config.eval
    return over_split(
        eval_fn, params, config.data, eval_batch_size(e, jax.device_count()), mesh, key, split, e.max_examples, desc
    )


def mean_and_se(nats: np.ndarray, num_dims: int) -> tuple[float, float]:
    """(mean, standard error std/sqrt(N)) of per-example nats, in bits/dim."""
    n = len(nats)
    se = float(bits_per_dim(np.std(nats, ddof=1), num_dims) / math.sqrt(n)) if n > 1 else float("nan")
    return float(bits_per_dim(np.mean(nats), num_dims)), se


def bpd_report(
    out: dict, terms: dict[str, str], num_dims: int, *, name: str = "bpd", count: str = "eval/num_examples"
) -> dict[str, float]:
    """{eval/<name><suffix>: mean bits/dim of out[term] for term, suffix in terms, eval/<name>_se: the SE of out['total'],
    `count`: N}: the one report of per-example nats (float64) as bits/dim, every Task's and mode's."""
    nats = {k: np.asarray(out[k], np.float64) for k in terms}
    result = {f"eval/{name}{s}": float(bits_per_dim(np.mean(nats[k]), num_dims)) for k, s in terms.items()}
    result[f"eval/{name}_se"] = mean_and_se(nats["total"], num_dims)[1]
    result[count] = len(nats["total"])
    return result
