"""Evaluation over a data split, shared by every Task: each example exactly once, data parallel, and one bits/dim report.

`over_split` runs a per-example eval step over a split (each process reads only its rows); `mean_and_se`
and `bpd_report` turn per-example nats into bits/dim with the standard error of the mean (nats / (D ln 2),
vdm.core.encoding.bits_per_dim). Nothing here knows a model.

Memory: a batch of config.eval.batch_size (the noise's unit: batch i draws from fold_in(key, i), each example by
its place in the batch) runs as one call, or, where XLA's temporaries for it would exceed the device's budget
(`memory_budget`: a quarter of an accelerator's memory, EVAL_HOST_MEMORY on CPU), as several calls of fewer rows
(`chunk_rows`). Each example still gets the same key and index, so the per-example results do not depend on it.
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
EVAL_HOST_MEMORY = 512 * 2**20  # bytes of one eval call's temporaries on a host's CPU devices (they share its RAM)


def memory_budget(devices: list) -> int:
    """Bytes of temporaries one eval call may take per device: a quarter of an accelerator's memory where the device
    reports it (memory_stats' bytes_limit), else EVAL_HOST_MEMORY shared by the host's devices (CPU)."""
    stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) // 4
    return EVAL_HOST_MEMORY // len(devices)


def chunk_rows(rows: int, temp_bytes: int | None, budget: int) -> int:
    """Rows per device per call for a batch of `rows` per device whose one call needs `temp_bytes` of temporaries per
    device (None: unknown): all of them within `budget`, else about evenly split into the fewest calls that fit."""
    if not temp_bytes or temp_bytes <= budget:
        return rows
    calls = max(-(-rows // max(rows * budget // temp_bytes, 1)), 1)
    return -(-rows // calls)


def call_temp_bytes(eval_fn: Callable, *args) -> int | None:
    """Bytes of XLA temporaries per device of one eval_fn(*args) (compiled, not run; jit reuses it), None if unknown."""
    try:
        return int(eval_fn.lower(*args).compile().memory_analysis().temp_size_in_bytes)
    except (AttributeError, NotImplementedError, TypeError):
        return None


def eval_batch_size(e: ml_collections.ConfigDict, device_count: int) -> int:
    """The eval batch actually used (the noise's unit; over_split sizes its calls by memory): config.eval.batch_size,
    shrunk to the smallest multiple of the device count that holds config.eval.max_examples (> 0), so a capped eval
    reads and holds no more than it needs."""
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
    *,
    budget: int | None = None,
) -> PyTree:
    """Per-example outputs of eval_fn(params, batch, fold_in(key, i)) over every example of the split exactly once [N, ...].

    eval_fn = data_parallel_eval(per-example step); batch i holds {'x', 'label', 'index'}; each
    process reads only its rows of every batch, and the padded end of the last batch is masked
    out. max_examples > 0: only the split's first max_examples examples are read. A batch whose one
    call would take more than `budget` bytes of temporaries per device (None: memory_budget) runs as several
    calls (chunk_rows), each row with its own index.
    """
    outs, local_devices = [], mesh.local_devices
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
    rows = None  # rows per call on this process, chosen at the first batch
    for i, batch in enumerate(bar):
        if rows is None:
            inputs = parallel.shard_batch({k: v for k, v in batch.items() if k != "mask"}, mesh)
            per_device = len(batch["mask"]) // len(local_devices)
            temp = call_temp_bytes(eval_fn, params, inputs, jax.random.fold_in(key, i))
            budget = memory_budget(local_devices) if budget is None else budget
            rows = chunk_rows(per_device, temp, budget) * len(local_devices)
            rows = int(np.min(parallel.gather_host(np.asarray([rows]))))  # every process makes the same calls
        outs.append(_batch_outputs(eval_fn, params, batch, mesh, jax.random.fold_in(key, i), rows))
    return jax.tree.map(lambda *v: np.concatenate(v), *outs)


def _batch_outputs(eval_fn: Callable, params: PyTree, batch: dict, mesh: Any, key: jax.Array, rows: int) -> PyTree:
    """The unmasked per-example outputs of one batch (this process's rows `batch`, all processes' outputs in process
    order), in calls of `rows` of this process's rows (the last padded, masked out)."""
    n = len(batch["mask"])
    calls = -(-n // rows)
    pad = calls * rows - n
    padded = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) if pad else v for k, v in batch.items()}
    if pad:
        padded["mask"][n:] = False
    outs, masks = [], []
    for c in range(calls):
        part = {k: v[c * rows : (c + 1) * rows] for k, v in padded.items()}
        masks.append(parallel.gather_host(part.pop("mask")))  # [processes * rows], in process order
        outs.append(parallel.gather(eval_fn(params, parallel.shard_batch(part, mesh), key)))

    def in_process_order(*parts):  # [processes * rows] per call -> each process's rows of every call together
        blocks = [np.asarray(p).reshape(-1, rows, *np.shape(p)[1:]) for p in parts]
        joined = np.concatenate(blocks, axis=1)
        return joined.reshape(-1, *joined.shape[2:])

    mask = in_process_order(*masks)
    return jax.tree.map(lambda *v: in_process_order(*v)[mask], *outs)


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
