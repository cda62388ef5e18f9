"""Shared test helpers: load experiment configs from configs/*.py, the repo root, a CLI runner.

The `slow` marker is registered in pytest.ini; nothing global is set here.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
    """get_config(arg) of configs/<name>.py, unlocked so tests can shrink it (then re-locked by the caller if needed)."""
    path = os.path.join(REPO_ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def run_cli(args: list[str], *, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m vdm.main ARGS` from the repo root; returns the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vdm.main", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def repo_root() -> str:
    """Absolute path of the repository root."""
    return REPO_ROOT


def sigkill_past_checkpoint(
    cmd: list[str], workdir: str, logged_steps: Callable[[str], set | dict], *, timeout: float = 180
) -> None:
    """Start `python CMD` from the repo root and SIGKILL it once it has logged 3 steps past its newest checkpoint
    in workdir/checkpoints (logged_steps(workdir): the steps metrics.jsonl holds so far)."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    p = subprocess.Popen([sys.executable, *cmd], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        done = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if os.path.isdir(ckpt_dir) else []
        if done and max(logged_steps(workdir), default=-1) - max(done) >= 3:
            break  # a checkpoint, then a few uncheckpointed steps
        time.sleep(0.003)
    assert p.poll() is None, "the run ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
