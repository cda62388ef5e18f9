"""Memory: the peak resident set size of short runs of `python -m vdm.main`, each in a fresh process.

    python experiments/memory_benchmark.py [--checkout DIR] [--out experiments/results/memory_benchmark.txt]

Rows: `:small` training (configs/fashion_mnist.py:small, its real batches: train 16, eval 1000), the
default config's training (`make train`'s configs/fashion_mnist.py: train 32, eval 200) and `--mode=eval`
of each run, and `--mode=sample` of 500 samples from the default run (sampler calls of
config.sampling.batch_size). Runs are short (few steps, eval capped by eval.max_examples at a multiple
of the real eval batch, 2 sampler steps) but every batch is the real size, so the peaks are the real
runs' peaks; the whole benchmark takes a few minutes on 2 CPU cores. The peak is ru_maxrss of the
child from os.wait4 (Linux: KiB), so each row is its own process's peak. --checkout runs another
checkout's code (e.g. an older commit, for a before/after table). Prints a table and writes it to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = "--config=configs/fashion_mnist.py:small"
DEFAULT = "--config=configs/fashion_mnist.py"
SHORT_TRAIN = [
    "--config.training.num_steps=4",
    "--config.training.eval_every=4",
    "--config.training.checkpoint_every=4",
    "--config.training.log_every=2",
    "--config.optimizer.warmup_steps=2",
]
# (name, target GB, arguments after --workdir=DIR/<run>; <run> is the row's workdir, shared by a run's modes)
ROWS = [
    ("small: train 4 steps + eval 2000 (batch 1000)", 2.0, "small", [SMALL, *SHORT_TRAIN, "--max_examples=2000"]),
    ("small: --mode=eval 2000 (batch 1000)", 2.0, "small", ["--mode=eval", "--max_examples=2000"]),
    ("default: train 4 steps + eval 1000 (batch 200)", 4.0, "default", [DEFAULT, *SHORT_TRAIN, "--max_examples=1000"]),
    ("default: --mode=eval 1000 (batch 200)", 4.0, "default", ["--mode=eval", "--max_examples=1000"]),
    (
        "default: --mode=sample 500 (2 steps)",
        4.0,
        "default",
        [DEFAULT, "--mode=sample", "--config.sampling.num_samples=500", "--config.sampling.num_steps=2"],
    ),
]


def peak_rss(args: list[str], cwd: str) -> tuple[float, float, int]:
    """(peak RSS in GiB, wall seconds, exit status) of `python -m vdm.main ARGS` run from `cwd`."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": cwd}
    p = subprocess.Popen(
        [sys.executable, "-m", "vdm.main", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        print(err.decode(errors="replace")[-2000:], file=sys.stderr)
    return usage.ru_maxrss / 2**20, time.perf_counter() - t0, p.returncode


def table(rows: list[tuple[str, float, float, float, int]], checkout: str) -> str:
    """The results as a markdown table with a header naming the machine and the checkout."""
    lines = [
        f"Peak RSS of `python -m vdm.main` runs ({platform.node()}, {os.cpu_count()} CPUs, {platform.machine()}; "
        f"code: {checkout})",
        "",
        "| run | peak RSS (GiB) | target (GiB) | within | wall (s) |",
        "|---|---:|---:|:---:|---:|",
    ]
    for name, gib, target, wall, code in rows:
        ok = "yes" if gib <= target and code == 0 else ("FAILED" if code else "no")
        lines.append(f"| {name} | {gib:.2f} | {target:.0f} | {ok} | {wall:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every row in a fresh process, print the table and write it to --out."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkout", default=REPO, help="the checkout whose code runs (default: this one)")
    ap.add_argument("--out", default=os.path.join(REPO, "experiments", "results", "memory_benchmark.txt"))
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, target, run, args in ROWS:
            gib, wall, code = peak_rss([f"--workdir={os.path.join(tmp, run)}", *args], a.checkout)
            print(f"{name}: {gib:.2f} GiB, {wall:.0f} s", flush=True)
            results.append((name, gib, target, wall, code))
    text = table(results, a.checkout)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
