"""Overhead of the multi-process path: train steps/s of one job as 1 process x 4 devices vs 2 processes x 2.

    python experiments/bench_multihost.py [--config configs/fashion_mnist.py] [--rounds 2] [--windows 5]

Both layouts run the same config and global batch on CPU devices of this machine
(--local_device_count), the 2-process job joined through jax.distributed (gloo collectives on
a local port). Each run is `python -m vdm.main` as a user runs it, with log_every = window
steps and no checkpoints or eval inside the timed part; steps/s per window is the loop's own
train/steps_per_sec (wall time between metric flushes, which wait for the device). The first
window (compilation) is dropped; the runs are stopped after the last timed window. Layouts
alternate for `rounds` rounds so that load on a shared machine hits both; the table gives
the median and the range over all timed windows. Prints it and writes
experiments/results/bench_multihost.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {"1 process x 4 devices": (1, 4), "2 processes x 2 devices": (2, 2)}


def free_port() -> int:
    """An unused local TCP port for the coordinator."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_windows(
    config: str, num_processes: int, local_devices: int, windows: int, window_steps: int, workdir: str, timeout: float
) -> list[float]:
    """Steps/s of `windows` timed windows (after one warm-up window) of one run of `config`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    big = 10**8  # no checkpoint, eval or end of training inside the timed part
    args = [
        sys.executable,
        "-m",
        "vdm.main",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--local_device_count={local_devices}",
        f"--config.training.log_every={window_steps}",
        f"--config.training.num_steps={big}",
        f"--config.training.checkpoint_every={big}",
        f"--config.training.eval_every={big}",
    ]
    if num_processes > 1:
        args += [f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={num_processes}"]
    logs = [open(os.path.join(workdir + f".err{i}"), "w") for i in range(num_processes)]
    procs = [
        subprocess.Popen(
            args + ([f"--process_id={i}"] if num_processes > 1 else []),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=logs[i],
        )
        for i in range(num_processes)
    ]
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a process ended early; see {workdir}.err*")
            if os.path.exists(path):
                with open(path) as f:
                    rates = [r["train/steps_per_sec"] for r in map(json.loads, f) if "train/steps_per_sec" in r]
                if len(rates) > windows:
                    return rates[1 : windows + 1]
            time.sleep(0.2)
        raise TimeoutError(f"{windows + 1} windows not done in {timeout} s")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for f in logs:
            f.close()


def define_flags() -> None:
    """The command-line flags (absl), defined only when run as a script."""
    flags.DEFINE_string("config", "configs/fashion_mnist.py", "config file of the timed runs")
    flags.DEFINE_integer("rounds", 2, "rounds of the layouts in alternation")
    flags.DEFINE_integer("windows", 5, "timed windows per run (plus one warm-up)")
    flags.DEFINE_integer("window_steps", 25, "train steps per window")
    flags.DEFINE_float("timeout", 900, "seconds per run")
    flags.DEFINE_string("out", os.path.join(ROOT, "experiments", "results", "bench_multihost.md"), "output table")


def main(argv: list[str]) -> None:
    """Run the layouts in alternation, print the table, write experiments/results/bench_multihost.md."""
    del argv
    a = flags.FLAGS
    tmp = tempfile.mkdtemp(prefix="bench_multihost_")
    rates: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    lines = []
    try:
        for r in range(a.rounds):
            for name, (n, d) in LAYOUTS.items():
                wd = os.path.join(tmp, f"r{r}_{n}x{d}")
                got = timed_windows(a.config, n, d, a.windows, a.window_steps, wd, a.timeout)
                lines.append(f"round {r}, {name}: " + " ".join(f"{x:.2f}" for x in got))
                print(lines[-1], flush=True)
                rates[name] += got
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(rates["1 process x 4 devices"])
    rows = ["| layout | steps/s (median) | min - max | windows | vs 1 process |", "|---|---|---|---|---|"]
    for name, v in rates.items():
        m = statistics.median(v)
        rows.append(f"| {name} | {m:.2f} | {min(v):.2f} - {max(v):.2f} | {len(v)} | {m / base:.2f}x |")
    header = (
        f"# Multi-process overhead on CPU\n\n`python experiments/bench_multihost.py --config {a.config} "
        f"--rounds {a.rounds} --windows {a.windows} --window_steps {a.window_steps}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPU cores (shared), load average {os.getloadavg()[0]:.2f} at the end.\n\n"
        f"Same config and global batch; train steps/s over windows of {a.window_steps} steps "
        "(first window of each run dropped), the layouts run in alternation.\n\n"
    )
    table = "\n".join(rows) + "\n"
    print(table)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(header + table + "\nSteps/s of every timed window, run by run:\n\n```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
