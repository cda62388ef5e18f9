"""Checkpoints of the whole train state with orbax: save, keep the last few, resume, survive corruption.

Layout: DIR/<step>/state (the state's leaves as host arrays, one flat dict keyed by their
pytree paths) and DIR/<step>/meta (JSON: step, per-leaf sha256, free-form info). Saving
plain host arrays makes a checkpoint independent of the device count that wrote it.

Atomicity comes from orbax: a step is written into `<step>.orbax-checkpoint-tmp-*` and
renamed to `<step>` only when complete, and orbax lists only complete steps, so a kill
mid-save leaves the previous newest checkpoint as the newest. Corruption after the fact
(truncated or garbled files) is caught by the read failing or the checksums disagreeing;
`restore_latest` then falls back to the previous step with a warning and deletes nothing; a
training run (quarantine=True) moves the unreadable step aside to DIR/corrupt/<step>, so that
the step it retrains is saved again. A checkpoint whose entries or shapes differ from the
expected state is not corrupt but another run's: `CheckpointMismatchError`, no fallback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
log = logging.getLogger(__name__)


def _flatten(tree: PyTree) -> dict[str, np.ndarray]:
    """{keystr(path): numpy leaf} for every leaf of `tree` (deterministic order)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("state has two leaves with the same path string; cannot checkpoint it.")
    return flat


def _unflatten(flat: dict[str, np.ndarray], like: PyTree) -> PyTree:
    """Rebuild a pytree shaped like `like` from a {keystr(path): array} dict."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in leaves])


def _digest(a: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class CheckpointCorruptError(RuntimeError):
    """A checkpoint exists but cannot be read back intact."""


class CheckpointMismatchError(ValueError):
    """A checkpoint is intact but holds another state than the run expects (a different config wrote it).

    `step`, and when the entries differ `saved_keys` / `expected_keys` (the flat entry names of the checkpoint and
    of the state asked for), so a Task can recognise a layout it knows how to migrate (vdm.models.convert).
    """

    def __init__(
        self, message: str, step: int, saved_keys: frozenset = frozenset(), expected_keys: frozenset = frozenset()
    ):
        super().__init__(message)
        self.step, self.saved_keys, self.expected_keys = step, saved_keys, expected_keys


def _entries_mismatch(directory: str, step: int, saved: set, target: set) -> CheckpointMismatchError:
    """The CheckpointMismatchError of a checkpoint whose entries `saved` differ from the `target` ones."""
    extra, missing = sorted(saved - target), sorted(target - saved)
    return CheckpointMismatchError(
        f"checkpoint step {step} in {directory} was written by a different config: it holds "
        f"{len(extra)} entries this config lacks (e.g. {extra[:1]}) and lacks {len(missing)} it "
        f"needs (e.g. {missing[:1]}); use the run's recorded config or a new --workdir.",
        step,
        frozenset(saved),
        frozenset(target),
    )


# tensorstore's reads still in flight when a restore fails post to orbax's closed event loop, and
# each prints a 'RuntimeError: Event loop is closed' traceback through sys.stderr, for up to
# seconds after the failure (hundreds of lines). Python prints a traceback in pieces: a piece is
# dropped when it holds nothing but those tracebacks' text.
_SPAM = re.compile(
    r"Traceback \(most recent call last\):|File \"[^\"]*asyncio/base_events\.py\", line \d+, in \w+"
    r"|self\._check_closed\(\)|raise RuntimeError\('Event loop is closed'\)"
    r"|Event loop is closed|RuntimeError|\^+"
)


def _is_spam(text: str) -> bool:
    """Whether `text` holds nothing but (pieces of) the 'Event loop is closed' tracebacks."""
    return not _SPAM.sub("", text).strip(" \t:\n")


class _WithoutEventLoopSpam:
    """sys.stderr, less the orphaned reads' tracebacks (installed once, by the first restore; idempotent)."""

    def __init__(self, stream: Any):
        self._stream, self._dropping = stream, False

    def write(self, text: str) -> int:
        if _is_spam(text) and (text.strip(" \t:\n") or self._dropping):
            self._dropping = True  # a bare newline after a dropped piece is the piece's
            return len(text)
        self._dropping = False
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _filter_event_loop_spam() -> None:
    """Wrap sys.stderr in _WithoutEventLoopSpam unless it is already."""
    if not isinstance(sys.stderr, _WithoutEventLoopSpam):
        sys.stderr = _WithoutEventLoopSpam(sys.stderr)


class Checkpointer:
    """orbax CheckpointManager over DIR keeping the last `max_to_keep` steps of a host-array state."""

    def __init__(self, directory: str, *, max_to_keep: int | None = 3, async_save: bool = True, create: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 (or None for all), got {max_to_keep}.")
        self.directory = os.path.abspath(directory)
        if not create and not os.path.isdir(self.directory):
            raise FileNotFoundError(
                f"no checkpoint directory {self.directory}: nothing was trained and saved there yet."
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        """The checkpoint steps, ascending: the committed ones found on disk at start plus this run's saves."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None (it may still turn out to be corrupt)."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: PyTree, *, info: dict | None = None) -> bool:
        """Save `state` (a pytree of host-readable arrays) as `step`; False if that step already exists.

        An existing step is never overwritten (it may be one that `restore_latest` skipped as
        corrupt and is kept for inspection). Writes in the background; `wait()` blocks.
        """
        step = int(step)
        if step in self.all_steps():
            log.warning("checkpoint for step %d already exists in %s; not overwriting it.", step, self.directory)
            return False
        flat = _flatten(state)
        meta = {"step": step, "sha256": {k: _digest(v) for k, v in flat.items()}, "info": info or {}}
        return self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)), force=True
        )

    def restore(self, step: int, like: PyTree) -> PyTree:
        """The state saved at `step`, as numpy arrays shaped like `like`; CheckpointCorruptError if unreadable.

        CheckpointMismatchError (with both entry sets) if it holds other entries than `like`, before any array is read.
        """
        target = {k: np.zeros(v.shape, v.dtype) for k, v in _flatten(like).items()}
        try:
            saved = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception:  # unreadable meta: the full restore below reports it
            saved = None
        if saved is not None and set(saved.get("sha256", {})) != set(target):
            raise _entries_mismatch(self.directory, step, set(saved["sha256"]), set(target))
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
            flat = {k: np.asarray(v) for k, v in restored["state"].items()}
            meta = restored["meta"]
        except Exception as e:  # orbax/tensorstore raise many kinds on bad files
            raise CheckpointCorruptError(
                f"cannot read checkpoint step {step} in {self.directory}: {type(e).__name__}: {e}"
            ) from e
        if set(flat) != set(target) or set(meta.get("sha256", {})) != set(target):
            raise _entries_mismatch(self.directory, step, set(flat), set(target))
        for k, v in flat.items():
            if v.shape != target[k].shape or v.dtype != target[k].dtype:
                raise CheckpointMismatchError(
                    f"checkpoint step {step} in {self.directory} was written by a different config: {k} is "
                    f"{v.dtype}{v.shape} there, this config makes it {target[k].dtype}{target[k].shape}; use "
                    "the run's recorded config or a new --workdir.",
                    step,
                )
            if _digest(v) != meta["sha256"][k]:
                raise CheckpointCorruptError(f"checkpoint step {step}: checksum mismatch in {k}.")
        return _unflatten(flat, like)

    def restore_latest(self, like: PyTree, *, quarantine: bool = False) -> tuple[PyTree | None, int | None]:
        """(state, step) of the newest intact checkpoint, falling back past corrupt ones; (None, None) if none.

        A corrupt checkpoint is logged as a warning; it is left in place, or with quarantine=True
        (a run that will save again) moved to DIR/corrupt/<step> once an older one restored, so
        the retrained step can be saved. If every checkpoint is corrupt the error of the newest is
        raised (starting over silently would lose the run).
        """
        errors, corrupt = [], []
        _filter_event_loop_spam()
        for step in reversed(self.all_steps()):
            try:
                state = self.restore(step, like)
            except CheckpointCorruptError as e:
                log.warning("%s; falling back to the previous checkpoint.", str(e).splitlines()[0][:400])
                errors.append(e)
                corrupt.append(step)
                continue
            if errors:
                moved = self._quarantine(corrupt) if quarantine else ""
                log.warning(
                    "restored checkpoint step %d after skipping %d corrupt newer one(s)%s.", step, len(errors), moved
                )
            return state, step
        if errors:
            raise CheckpointCorruptError(
                f"no intact checkpoint in {self.directory}; newest error: {errors[0]}"
            ) from errors[0]
        return None, None

    def _quarantine(self, steps: list[int]) -> str:
        """Move the step directories `steps` to DIR/corrupt/ (process 0; every process then rereads the steps)."""
        target = os.path.join(self.directory, "corrupt")
        if jax.process_index() == 0:
            os.makedirs(target, exist_ok=True)
            for step in steps:
                dest = os.path.join(target, str(step))
                while os.path.exists(dest):
                    dest += "_"
                shutil.move(os.path.join(self.directory, str(step)), dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("vdm_checkpoint_quarantine")
        self._manager.reload()
        return f"; moved them to {target}/ (kept for inspection)"

    def wait(self) -> None:
        """Block until background saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
