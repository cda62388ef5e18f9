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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"
PyTree = Any


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
        return {}                                   # jax auto-detects Slurm
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return {}                                   # ... and Open MPI
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return {}                                   # ... and multi-host Cloud TPU slices
    return None


def initialize_distributed() -> bool:
    """Call jax.distributed.initialize() when JAX_COORDINATOR_ADDRESS / Slurm / Open MPI / a TPU pod says so; True if it did."""
    kwargs = _multiprocess_env()
    if kwargs is None or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices.",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
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
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        batch)


def to_host(tree: PyTree) -> PyTree:
    """Numpy copies of a pytree of replicated (or host) arrays; works on every host of a multi-host job."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))    # replicated: every shard is the whole array
        return np.asarray(jax.device_get(x))
    return jax.tree.map(get, tree)


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
    return jax.tree.map(lambda v: v[i * n:(i + 1) * n], batch)


def gather(tree: PyTree) -> PyTree:
    """Numpy values of global arrays sharded over 'data' (all hosts' shards, in order)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def data_parallel(per_device_step: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]], mesh: Mesh,
                  *, steps_per_call: int = 1, donate: bool = True
                  ) -> Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]:
    """jit(shard_map(...)) of `per_device_step(state, batch) -> (state, metrics)`, run `steps_per_call` times.

    The returned fn takes (state replicated, batches [steps_per_call, B, ...] sharded over 'data')
    and returns (state, metrics stacked [steps_per_call, ...]); per_device_step must return
    replicated (pmean-ed) outputs. The state argument is donated.
    """
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}.")

    def run(state, batches):
        if steps_per_call == 1:                     # no scan: lets XLA fuse the one step freely
            state, metrics = per_device_step(state, jax.tree.map(lambda b: b[0], batches))
            return state, jax.tree.map(lambda m: jnp.asarray(m)[None], metrics)
        return jax.lax.scan(per_device_step, state, batches)

    sharded = jax.shard_map(run, mesh=mesh, in_specs=(P(), P(None, AXIS)), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=(0,) if donate else ())


def data_parallel_eval(per_device_eval: Callable[..., PyTree], mesh: Mesh) -> Callable[..., PyTree]:
    """jit(shard_map(...)) of `per_device_eval(params, batch, key) -> per-example outputs [B_local, ...]`.

    params and key replicated, batch sharded over 'data'; the outputs come back as global
    arrays sharded over 'data' (the per-example values of the whole batch).
    """
    sharded = jax.shard_map(per_device_eval, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                            out_specs=P(AXIS))
    return jax.jit(sharded)
