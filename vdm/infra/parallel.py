"""Data parallelism: one mesh axis 'data' over every device of every host.

The train and eval steps are written per device (they see their shard of the
batch and call `lax.pmean(..., AXIS)`); this module builds the mesh, places
batches and state on it, and wraps a per-device step in `jax.shard_map`:
batch sharded along 'data', state replicated, the state buffers donated.
Everything that knows about devices lives here.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
PyTree = Any
log = logging.getLogger(__name__)


# Failure bounds of a multi-process job (seconds): how long process 0 waits for the others to
# connect, and how long a silent (dead) process goes unnoticed before every other one exits.
INIT_TIMEOUT = 300
HEARTBEAT_TIMEOUT = 100
EXIT_NOT_FORMED = 3  # exit status of a process whose job did not form within INIT_TIMEOUT


def _multiprocess_env() -> dict[str, Any] | None:
    """The jax.distributed.initialize kwargs the environment asks for, or None for a single process."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs: dict[str, Any] = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        if "JAX_NUM_PROCESSES" in env:
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in env:
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
        return kwargs
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return {}  # jax auto-detects Slurm
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return {}  # ... and Open MPI
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return {}  # ... and multi-host Cloud TPU slices
    return None


def set_local_device_count(count: int) -> None:
    """Split this host's CPU into `count` devices (testing only; before jax first touches a device)."""
    if count > 0:
        jax.config.update("jax_num_cpu_devices", count)


def _init_watchdog(seconds: float, where: str) -> threading.Timer:
    """A started timer that ends the process with a clear message if the job has not formed in `seconds`.

    jax's own timeout aborts with a C++ stack trace a few seconds later; this says what happened.
    """

    def fire():
        sys.stderr.write(
            f"error: {where}: the multi-process job did not form within {seconds:g} s "
            "(a process never started, or cannot reach the coordinator); exiting.\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_NOT_FORMED)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    init_timeout: int = INIT_TIMEOUT,
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
    local_device_ids: list[int] | None = None,
) -> bool:
    """Join a multi-process job if the arguments (else JAX_COORDINATOR_ADDRESS / Slurm / Open MPI / a TPU pod) say so; True if joined.

    init_timeout: seconds to wait for every process to connect, then exit (status 3) with a
    message. heartbeat_timeout: seconds after which a process that stopped responding makes
    every other process abort (jax's coordination service). CPU processes talk through gloo.
    local_device_ids: the accelerators this process drives (None: jax's choice, which under Slurm
    is one GPU per task, [SLURM_LOCALID]; pass all of a host's GPUs for one process per host).
    """
    kwargs = _multiprocess_env() if coordinator_address is None else {"coordinator_address": coordinator_address}
    if coordinator_address is not None:
        kwargs.update(
            {k: v for k, v in (("num_processes", num_processes), ("process_id", process_id)) if v is not None}
        )
    if kwargs is None or jax.distributed.is_initialized():
        return False
    # Cross-process collectives of the CPU backend (the default has none); GPUs/TPUs use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = f"process {kwargs.get('process_id', '?')} of {kwargs.get('num_processes', '?')}"
    log.info(
        "%s: joining the job at %s (waits up to %d s for every process).",
        where,
        kwargs.get("coordinator_address", "<auto-detected>"),
        init_timeout,
    )
    timer = _init_watchdog(init_timeout, where)  # jax itself aborts ~5 s later, with a stack trace
    try:
        jax.distributed.initialize(
            **kwargs,
            initialization_timeout=init_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout,
            local_device_ids=local_device_ids,
        )
        jax.devices()  # the global topology exchange also happens here
    finally:
        timer.cancel()
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis Mesh named 'data' over all devices (of all hosts), in jax.devices() order."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array copied whole onto every device of `mesh`."""
    return NamedSharding(mesh, P())


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place a pytree of host arrays (equal on every host) on every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: PyTree, mesh: Mesh, *, leading_axes: int = 0) -> PyTree:
    """Global arrays from this host's part of a batch, split along axis `leading_axes` over 'data'.

    batch: pytree of host arrays [*lead, B_local, ...]; the global batch is the hosts' parts
    concatenated in process order (B = B_local * process_count).
    """
    spec = P(*([None] * leading_axes), AXIS)
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def to_host(tree: PyTree) -> PyTree:
    """Numpy copies of a pytree of replicated (or host) arrays; works on every host of a multi-host job."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))  # replicated: every shard is the whole array
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def gather_host(tree: PyTree) -> PyTree:
    """Every process's host (numpy) arrays concatenated along axis 0 in process order; a no-op for one process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(jax.tree.map(np.asarray, tree), tiled=True)


def to_varying(tree: PyTree) -> PyTree:
    """Mark replicated values as per-device inside shard_map, so that grads w.r.t. them stay per-device.

    Without this, jax transposes the implicit replicated->varying cast into a psum, so
    gradients of replicated params would arrive already summed (not averaged) over devices.
    """
    return jax.tree.map(lambda x: jax.lax.pcast(x, AXIS, to="varying"), tree)


def host_slice(batch: PyTree, global_batch_size: int) -> PyTree:
    """This host's rows of a global batch (hosts take consecutive blocks of B / process_count, in process order)."""
    n = global_batch_size // jax.process_count()
    i = jax.process_index()
    return jax.tree.map(lambda v: v[i * n : (i + 1) * n], batch)


def gather(tree: PyTree) -> PyTree:
    """Numpy values of global arrays sharded over 'data' (all hosts' shards, in order)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def process_shard() -> dict[str, int]:
    """This process's place in the job, as vdm.data.pipeline's iterators take it: process_index, process_count."""
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def data_parallel(
    per_device_step: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]],
    mesh: Mesh,
    *,
    steps_per_call: int = 1,
    donate: bool = True,
) -> Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]:
    """jit(shard_map(...)) of `per_device_step(state, batch) -> (state, metrics)`, run `steps_per_call` times.

    The returned fn takes (state replicated, batches [steps_per_call, B, ...] sharded over 'data')
    and returns (state, metrics stacked [steps_per_call, ...]); per_device_step must return
    replicated (pmean-ed) outputs. The state argument is donated.
    """
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}.")

    def run(state, batches):
        if steps_per_call == 1:  # no scan: lets XLA fuse the one step freely
            state, metrics = per_device_step(state, jax.tree.map(lambda b: b[0], batches))
            return state, jax.tree.map(lambda m: jnp.asarray(m)[None], metrics)
        return jax.lax.scan(per_device_step, state, batches)

    sharded = jax.shard_map(run, mesh=mesh, in_specs=(P(), P(None, AXIS)), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=(0,) if donate else ())


def data_parallel_eval(
    per_device_eval: Callable[..., PyTree], mesh: Mesh, *, check_vma: bool = True
) -> Callable[..., PyTree]:
    """jit(shard_map(...)) of `per_device_eval(params, batch, key) -> per-example outputs [B_local, ...]`.

    params and key replicated, batch sharded over 'data'; the outputs come back as global
    arrays sharded over 'data' (the per-example values of the whole batch). check_vma=False for
    code with no collectives whose scans start from replicated constants (the ODE likelihood).
    """
    sharded = jax.shard_map(
        per_device_eval, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=P(AXIS), check_vma=check_vma
    )
    return jax.jit(sharded)
