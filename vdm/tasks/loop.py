"""The training loop, one for every model this codebase trains: steps, checkpoints, metrics, periodic eval.

A `Task` supplies the model-specific parts (a fresh state, the batches, the per-device train step,
the periodic evaluation, the restore of a checkpoint, what the progress bar prints); `run` drives
it: data-parallel steps over the mesh (vdm/infra/parallel.py), orbax checkpoints with resume
(vdm/infra/checkpoint.py), the run's record (vdm/config/record.py), metrics to metrics.jsonl and TensorBoard
(vdm/infra/metrics.py), the NaN policy, a progress bar, SIGINT/SIGTERM. It knows no model: the diffusion
model's Task is vdm/tasks/diffusion_task.py, the noisy classifier's vdm/tasks/classifier_task.py, the feature
net's experiments/feature_net.py.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
import tqdm

from vdm.config import record, validation
from vdm.data import pipeline
from vdm.infra import parallel
from vdm.infra.checkpoint import CheckpointCorruptError, Checkpointer, CheckpointMismatchError
from vdm.infra.fileio import atomic_write_text
from vdm.infra.metrics import MetricWriter
from vdm.infra.optim import TrainState

log = logging.getLogger(__name__)
FINAL_EVAL = "final_eval.json"  # the last eval of a finished run, returned by a rerun
# Train calls dispatched and not yet finished, at most: call k is dispatched once call k - 2 has finished, so the
# device always has the next call queued (throughput) and a signal is acted on within a few steps of the one running.
MAX_IN_FLIGHT = 2
# What an entry point reports as one line and exit status 1: a bad config, no data or checkpoint,
# a checkpoint of another config or none intact, a non-finite loss under nan_policy='stop'.
USER_ERRORS = (
    validation.ConfigError,
    pipeline.DatasetNotFoundError,
    FileNotFoundError,
    FloatingPointError,
    CheckpointMismatchError,
    CheckpointCorruptError,
)


class Task(Protocol):
    """What the loop needs of a model: its config, a fresh state, batches, a per-device step, a periodic evaluation."""

    config: ml_collections.ConfigDict
    display: tuple[str, ...]  # the eval scalars the progress bar prints

    def init_state(self) -> TrainState:
        """The step-0 state (host arrays), from config.seed."""

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One optimizer step on this device's shard (inside shard_map); metrics pmean-ed, with 'loss' and 'nonfinite'."""

    def evaluate(self, state: TrainState, step: int, mesh: Any, workdir: str, writer: MetricWriter) -> dict:
        """Evaluate `state` at `step`, write what it measures to `writer` (and files to workdir); return the scalars."""

    # Optional, each with a default here when the Task has none:
    # - train_batches(start_step) -> Iterator[dict]: this process's rows of the global train batches (a dict of
    #   arrays [B_host, ...]) from `start_step` on; default `train_batches`: config.data's train iterator.
    # - restore(ckpt, like, *, quarantine) -> (state or None, step or None): the newest intact checkpoint shaped
    #   like `like`; default `restore`: Checkpointer.restore_latest (a Task adds a layout migration here).
    # - log_state(state, step, writer), called whenever the train metrics are written, for what a model keeps in
    #   state.stats (the diffusion model: the adaptive noise schedule's histogram).


def train_batches(task: Task, start_step: int) -> Iterator[dict]:
    """task.train_batches(start_step) if the Task has it, else pipeline.train_iterator of task.config.data: this
    process's rows {'x', 'label', 'index'} of each global batch of config.training.batch_size (batch k a pure function
    of the seed and k; process p holds block p of B / process_count rows)."""
    if getattr(task, "train_batches", None) is not None:
        return task.train_batches(start_step)
    c = task.config
    return pipeline.train_iterator(
        c.data, c.training.batch_size, seed=c.seed, start_step=start_step, **parallel.process_shard()
    )


def restore(
    task: Task, ckpt: Checkpointer, like: TrainState, *, quarantine: bool = False
) -> tuple[TrainState | None, int | None]:
    """task.restore(...) if the Task has it, else ckpt.restore_latest(like): the newest intact checkpoint."""
    if getattr(task, "restore", None) is not None:
        return task.restore(ckpt, like, quarantine=quarantine)
    return ckpt.restore_latest(like, quarantine=quarantine)


def restore_or_init(task: Task, mesh: Any, ckpt: Checkpointer, *, quarantine: bool = False) -> tuple[TrainState, int]:
    """(state on the mesh, step): the newest intact checkpoint in `ckpt` (task.restore), else task.init_state().

    quarantine=True (a training run): corrupt newer checkpoints are moved aside (Checkpointer.restore_latest).
    """
    fresh = parallel.to_host(task.init_state())
    restored, step = restore(task, ckpt, fresh, quarantine=quarantine)
    if restored is None:
        return parallel.replicate(fresh, mesh), 0
    log.info("resuming from checkpoint step %d in %s", step, ckpt.directory)
    return parallel.replicate(restored, mesh), int(step)


class _Window:
    """Train metrics of the steps since the last flush, kept on device until needed."""

    def __init__(self, config: ml_collections.ConfigDict, writer: MetricWriter):
        self.config, self.writer, self.items, self.skipped_total = config, writer, [], 0
        self.t0 = time.perf_counter()

    def add(self, first_step: int, metrics: dict) -> None:
        self.items.append((first_step, metrics))

    def flush(self, step: int, ckpt: Checkpointer) -> dict:
        """Fetch, apply the NaN policy, write means to the writer; returns the scalars written."""
        if not self.items:
            return {}
        host = [(s, parallel.to_host(m)) for s, m in self.items]
        nonfinite = np.concatenate([m["nonfinite"] for _, m in host])
        steps = np.concatenate([s + 1 + np.arange(len(m["nonfinite"])) for s, m in host])
        if nonfinite.any() and self.config.training.nan_policy == "stop":
            saved = ckpt.latest_step()
            raise FloatingPointError(
                f"non-finite loss or gradient at step {int(steps[np.argmax(nonfinite)])} "
                f"(config.training.nan_policy='stop'); the update was discarded and "
                + (f"nothing after step {saved} was saved." if saved is not None else "no checkpoint was saved yet.")
                + " Lower the learning rate, use bfloat16 less, or set nan_policy='skip'."
            )
        ok = nonfinite == 0
        cat = {k: np.concatenate([m[k] for _, m in host]) for k in host[0][1]}
        scalars = {
            f"train/{k}": float(np.mean(v[ok])) if ok.any() else float("nan")
            for k, v in cat.items()
            if k != "nonfinite"
        }
        self.skipped_total += int(nonfinite.sum())
        scalars["train/skipped"] = int(nonfinite.sum())
        scalars["train/skipped_total"] = self.skipped_total
        now = time.perf_counter()
        scalars["train/steps_per_sec"] = len(steps) / max(now - self.t0, 1e-9)
        self.t0, self.items = now, []
        self.writer.write(step, scalars)
        return scalars


class Interrupted(Exception):
    """The run stopped on SIGINT/SIGTERM after saving a checkpoint; `signum` says which signal."""

    def __init__(self, signum: int, step: int, workdir: str):
        self.signum, self.step = signum, step
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}: checkpoint {step} saved in "
            f"{workdir}/checkpoints; rerun the same command to resume."
        )


class _StopNow(Exception):
    """Raised by the signal handler inside an interruptible evaluation."""


class _StopOnSignal:
    """SIGINT/SIGTERM ask the loop to save at the next step boundary and stop; a second SIGINT exits at once.

    In a multi-process job the processes agree on the stop (an all-gather of the flags) at every
    log_every boundary, so they save the same step together.
    """

    def __init__(self, log_every: int):
        self.signum, self.log_every, self._old, self._in_eval = None, log_every, {}, False

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            print("interrupted again: exiting now, without saving this step.", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"{signal.Signals(signum).name}: saving a checkpoint at the next step boundary (during an eval: now), "
            "then stopping (Ctrl-C again exits at once).",
            file=sys.stderr,
            flush=True,
        )
        if self._in_eval:
            raise _StopNow()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block (an evaluation) that a signal ends at once, raising _StopNow; one process only (a
        multi-process job would leave its peers waiting in a collective)."""
        self._in_eval = jax.process_count() == 1
        try:
            yield
        finally:
            self._in_eval = False

    def should_stop(self, step: int) -> bool:
        """Whether every process should save and stop after `step`."""
        if jax.process_count() == 1:
            return self.signum is not None
        if step % self.log_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        self.signum = self.signum or int(np.max(flags)) or None
        return self.signum is not None


def recorded_final_eval(workdir: str, step: int) -> dict:
    """The result the loop recorded for its final eval at `step` (workdir/final_eval.json), or {} if none."""
    path = os.path.join(workdir, FINAL_EVAL)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        done = json.load(f)
    return done["result"] if done.get("step") == step else {}


def _record_final_eval(workdir: str, step: int, result: dict) -> None:
    """Write {'step', 'result'} to workdir/final_eval.json (process 0), so a rerun of a finished run need not evaluate."""
    if jax.process_index() == 0:
        atomic_write_text(
            os.path.join(workdir, FINAL_EVAL),
            json.dumps(
                {"step": int(step), "result": {k: v if isinstance(v, int) else float(v) for k, v in result.items()}},
                indent=1,
                sort_keys=True,
            )
            + "\n",
        )


def has_checkpoints(directory: str) -> bool:
    """Whether `directory` holds a committed checkpoint step (an all-digit folder name)."""
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def _progress(config: ml_collections.ConfigDict, step: int, enabled: bool) -> tqdm.tqdm:
    """A tqdm bar of finished steps over config.training.num_steps starting at `step` (few lines when stderr is a log
    file)."""
    return tqdm.tqdm(
        total=config.training.num_steps,
        initial=step,
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
        desc="train",
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )


def _retire(pending: collections.deque, pbar: tqdm.tqdm, steps_per_call: int, keep: int = 0) -> None:
    """Wait for the oldest dispatched calls (their metrics) until `keep` are left in flight; the bar counts each one
    that finished."""
    while len(pending) > keep:
        jax.block_until_ready(pending.popleft())
        pbar.update(steps_per_call)


def _host_batches(task: Task, step: int) -> Callable[[], dict]:
    """next() of this host's stacked batches [steps_per_call, B_host, ...] from `step` on."""
    t = task.config.training
    batches = train_batches(task, step)

    def take() -> dict:
        group = [next(batches) for _ in range(t.steps_per_call)]
        return {k: np.stack([b[k] for b in group]) for k in group[0]}

    return take


def _open_run(task: Task, mesh: Any, workdir: str) -> tuple[TrainState, int, Checkpointer]:
    """Check the config against the workdir's record (before writing anything), record it, restore or init the state."""
    config, t = task.config, task.config.training
    ckpt_dir = os.path.join(workdir, "checkpoints")
    changes = record.check_resume(config, workdir) if has_checkpoints(ckpt_dir) else {}
    ckpt = Checkpointer(ckpt_dir, max_to_keep=t.keep_checkpoints)
    try:
        state, step = restore_or_init(task, mesh, ckpt, quarantine=True)
    except BaseException:
        ckpt.close()
        raise
    if jax.process_index() == 0:
        record.record_changes(workdir, step, changes)
        validation.save_config(config, workdir)
    if changes:
        log.info("resuming with changed keys (recorded in config_changes.jsonl): %s", ", ".join(changes))
    return state, step, ckpt


def _save(ckpt: Checkpointer, step: int, state: TrainState, config: ml_collections.ConfigDict) -> None:
    """Checkpoint `state` (fetched to the host) as `step`, with the config in its info."""
    ckpt.save(step, parallel.to_host(state), info={"config": validation.resolve(config).to_json()})


def _evaluate(
    task: Task,
    stop: _StopOnSignal,
    state: TrainState,
    step: int,
    mesh: Any,
    workdir: str,
    writer: MetricWriter,
    pbar: tqdm.tqdm,
) -> dict:
    """task.evaluate at `step` (a signal ends it at once), its figures printed under the bar; the bar's rate excludes
    it (tqdm's unpause restarts its clock)."""
    with stop.interruptible():
        result = task.evaluate(state, step, mesh, workdir, writer)
    if not pbar.disable:
        pbar.unpause()
    tqdm.tqdm.write(f"step {step}: " + ", ".join(f"{k}={result[k]:.4f}" for k in task.display if k in result))
    return result


def run(task: Task, mesh: Any, workdir: str) -> dict:
    """Train task.config.training.num_steps steps in `workdir`, resuming from its checkpoints; return the last eval.

    Writes workdir/config.json, metrics.jsonl, tb/ and checkpoints/ (and what task.evaluate writes).
    A resumed run must keep every key that defines the model (record.check_resume). SIGINT
    or SIGTERM saves a checkpoint at the next step boundary (during an evaluation: at once, at the
    evaluated step) and raises `Interrupted`: at most MAX_IN_FLIGHT + 1 calls past the last finished
    one, since the host waits for call k - MAX_IN_FLIGHT before it dispatches call k. The bar counts finished steps.
    """
    config, t = task.config, task.config.training
    is_main = jax.process_index() == 0
    state, step, ckpt = _open_run(task, mesh, workdir)
    done = recorded_final_eval(workdir, step) if step >= t.num_steps else {}
    if done:
        ckpt.close()
        log.info("workdir already holds step %d >= num_steps, evaluated: its recorded result (%s).", step, FINAL_EVAL)
        return done
    writer = MetricWriter(workdir, enabled=is_main)
    train_fn = parallel.data_parallel(task.train_step, mesh, steps_per_call=t.steps_per_call)
    window, last_eval, pbar = _Window(config, writer), {}, _progress(config, step, is_main)
    pending = collections.deque()  # the metrics of the calls in flight, oldest first
    try:
        with _StopOnSignal(t.log_every) as stop:
            next_batch = _host_batches(task, step)
            while step < t.num_steps:
                state, metrics = train_fn(state, parallel.shard_batch(next_batch(), mesh, leading_axes=1))
                window.add(step, metrics)
                step += t.steps_per_call
                pending.append(metrics)
                _retire(pending, pbar, t.steps_per_call, keep=MAX_IN_FLIGHT - 1)
                interrupted = stop.should_stop(step)
                save = step % t.checkpoint_every == 0 or step == t.num_steps or interrupted
                evaluate = (step % t.eval_every == 0 or step == t.num_steps) and not interrupted
                if step % t.log_every == 0 or save or evaluate:
                    scalars = window.flush(step, ckpt)  # raises under nan_policy='stop'
                    _retire(pending, pbar, t.steps_per_call)  # (all finished: the flush fetched them)
                    pbar.set_postfix(loss=f"{scalars['train/loss']:.4g}", refresh=False)
                    if getattr(task, "log_state", None) is not None:
                        task.log_state(state, step, writer)
                if save:
                    _save(ckpt, step, state, config)
                if interrupted:
                    ckpt.wait()
                    raise Interrupted(stop.signum, step, workdir)
                if step >= t.num_steps:
                    pbar.close()  # the bar's last line, once, before the final eval prints under it
                if evaluate:
                    last_eval = _evaluate(task, stop, state, step, mesh, workdir, writer, pbar)
            pbar.close()
            if not last_eval:
                last_eval = _evaluate(task, stop, state, step, mesh, workdir, writer, pbar)
            _record_final_eval(workdir, step, last_eval)
    except _StopNow:  # a signal during an evaluation
        if step not in ckpt.all_steps():
            _save(ckpt, step, state, config)
        ckpt.wait()
        raise Interrupted(stop.signum, step, workdir) from None
    finally:
        pbar.close()
        ckpt.close()
        writer.close()
    return last_eval
