"""Shared test helpers: load experiment configs from configs/*.py, the repo root, a CLI runner.

The `slow` marker is registered in pytest.ini. One thing is shared by the whole session: a JAX compilation
cache in a fresh temporary folder (the env vars reach every xdist worker and every `python -m vdm.main` a test
starts), so the many tiny runs that compile the same programs compile each once. A cached executable is the
program XLA compiled, so no result changes; the folder is removed when the session ends. A tiny trained toy run is
shared too (the `toy_run` fixture: trained once per session, copied by the tests that write into it), and
VDM_TEST_CPU=path writes each test's CPU seconds to path (the way to compare the suite's cost on a shared machine).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """The session's compilation cache: created by the controlling process, inherited by workers and subprocesses."""
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get(_CACHE_ENV):
        return  # a worker (the controller set it up), or a cache the caller chose
    config._vdm_cache_dir = tempfile.mkdtemp(prefix="vdm-test-jax-cache-")
    os.environ[_CACHE_ENV] = config._vdm_cache_dir
    # Cache every program, however quick to compile: the tests' programs are small and compiled many times.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_unconfigure(config):
    """Remove the session's compilation cache (only the one this session made)."""
    path = getattr(config, "_vdm_cache_dir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished (waited-for) children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


_CPU_ENV = "VDM_TEST_CPU"  # opt-in: VDM_TEST_CPU=path writes each test's CPU seconds (setup + call + teardown) there


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With $VDM_TEST_CPU set: the CPU seconds (this process + its subprocesses) each test took, fixtures included
    (a shared fixture's cost lands on the first test that uses it). Wall time on a shared machine says little."""
    if not os.environ.get(_CPU_ENV):
        yield
        return
    start = _cpu_seconds()
    yield
    item.config._vdm_cpu = getattr(item.config, "_vdm_cpu", []) + [(_cpu_seconds() - start, item.nodeid)]


def pytest_sessionfinish(session):
    """Write the CPU table of $VDM_TEST_CPU (one per xdist worker: path.gwN), largest first, with the total."""
    rows, path = getattr(session.config, "_vdm_cpu", None), os.environ.get(_CPU_ENV)
    if not (rows and path):
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    with open(f"{path}.{worker}" if worker else path, "w") as f:
        f.write(f"{sum(s for s, _ in rows):9.1f}  TOTAL ({len(rows)} tests)\n")
        f.writelines(f"{s:9.1f}  {nodeid}\n" for s, nodeid in sorted(rows, reverse=True))


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


def run_python(code: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -c CODE ARGS` from the repo root with env (default: this process's); the completed process."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


TOY_SMALL = ["--config=configs/toy2d.py:small"]


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> str:
    """`python -m vdm.main --config=configs/toy2d.py:small` trained once for the whole session (4 steps, its final eval
    at step 4, the default eps / ELBO run): the folder of the first xdist worker to ask, made under a file lock in the
    workers' shared temporary root, so one training serves every test that only needs "a trained run". Shared: copy it
    (copy_run) before writing into it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # .../pytest-N/popen-gwK: pytest-N, this session's, the same for every worker
    wd, done = root / "toy_run", root / "toy_run.done"
    with open(root / "toy_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(wd, ignore_errors=True)  # a training that failed part-way
            proc = run_cli(TOY_SMALL + [f"--workdir={wd}"])
            assert proc.returncode == 0, proc.stderr[-3000:]
            done.touch()
    return str(wd)


def copy_run(run: str, tmp_path) -> str:
    """A copy of a shared trained run (toy_run) at tmp_path/run, the test's to write into."""
    wd = os.path.join(str(tmp_path), "run")
    shutil.copytree(run, wd)
    return wd


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
