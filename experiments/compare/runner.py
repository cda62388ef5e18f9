"""How a cell of the grid runs: its stages as `python -m vdm.main` processes, resume markers, the FD stage, its row.

Every cell runs the commands a user runs (experiments/compare/stages.py names them):
  train   python -m vdm.main --config=C --workdir=CELL [--config.K=V overrides] <the cell's keys> \
              --config.training.num_steps=N --config.training.eval_every=E --config.eval.num_steps=0
  eval T  the same with --mode=eval --config.eval.num_steps=T, for each T in --eval_steps (a cell with
          reverse variances: once per variance, --config.eval.variance=V);
  sample  the same with --mode=sample --config.sampling.num_samples=--fd_samples (a cell with reverse
          variances: --config.sampling.method=ancestral --config.sampling.num_steps=S
          --config.sampling.variance=V for each S in --ancestral_steps and each variance instead);
  fd      per sample set; images: python experiments/feature_net.py --mode=fd; flat toy data: the Fréchet
          distance of the raw coordinates, computed here;
  inception  images: python -m vdm.tools.fid SAMPLES NAME:test --num_b=R --json=CELL/inception.json,
          Inception FID and KID against the first R test images (R = --inception_reference).
A finished stage is recorded in CELL/stages.json (with its argv) and not rerun; a finished cell
has CELL/DONE.json, so a rerun of the same command skips it. Cells run on device slots, one
process per GPU (CUDA_VISIBLE_DEVICES), or several sharing one GPU's memory. The row a finished
cell gives is read from its folder by experiments/compare/cell_rows.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import json
import os
import queue
import shlex
import subprocess
import time
from collections.abc import Callable
from typing import IO

import numpy as np

from experiments.compare.cell_rows import CellError, cell_row, failed_row, read_json
from experiments.compare.grid import Cell
from experiments.compare.stages import (  # noqa: F401
    EXPERIMENTS,
    Options,
    fd_command,
    final_eval,
    inception_command,
    parse_eval_stage,
    quality_suffix,
    sample_stages,
    stage_commands,
    train_variance,
)
from vdm.evaluation import feature_metrics
from vdm.infra.fileio import atomic_write
from vdm.infra.metrics import read_metrics

REPO = os.path.dirname(EXPERIMENTS)
DEFAULT_RESULTS_ROOT = os.path.join(REPO, "experiments", "results")
DEFAULT_FEATURE_NET_DIR = os.path.join(REPO, "experiments", "results", "feature_net")
Log = Callable[[str], None]


def json_writer(obj) -> Callable[[IO], None]:
    """write(f) for vdm.infra.fileio.atomic_write: `obj` as indented, key-sorted JSON (a killed run never leaves half a marker)."""
    return lambda f: json.dump(obj, f, indent=1, sort_keys=True, default=float)


def run_stage(argv: list[str], log_path: str, device: str | None, share: int = 1) -> float:
    """Run argv with its output to log_path; seconds taken.

    device: the GPU id for CUDA_VISIBLE_DEVICES (None: leave the environment alone); share > 1
    processes on one GPU each get XLA_PYTHON_CLIENT_MEM_FRACTION = 0.9 / share instead of
    JAX's default 75% preallocation, which would make the second one fail.
    """
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
        if share > 1:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / share:.3f}"
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        log.flush()
        rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-15:])
        raise CellError(f"exit {rc}: {shlex.join(argv)}\n--- end of {log_path} ---\n{tail}")
    return seconds


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where a cell's processes run: GPU id (None: as the environment says), processes sharing it, its name."""

    device: str | None = None
    share: int = 1
    hardware: str = ""


def _flat_fd(samples_path: str, opts: Options) -> dict:
    """Fréchet distance between Gaussians fitted to flat samples and to the test split (raw coordinates)."""
    from vdm.data import pipeline as vdm_data

    with np.load(samples_path) as f:
        samples = np.asarray(f["samples"], np.float64)
    bad = float(np.mean(~np.isfinite(samples)))
    out = {"num_samples": int(len(samples)), "nonfinite_frac": bad, "feature_dim": int(samples.shape[1])}
    if bad > 0:
        return {**out, "fd": None}
    x_test, _ = vdm_data.load_arrays(opts.data_config, "test")
    return {**out, "fd": feature_metrics.frechet_distance_of_samples(samples, np.asarray(x_test, np.float64))}


def _stage_finished(stage: str, argv: list[str], stages: dict, cell_dir: str, opts: Options) -> bool:
    """stages.json records `stage` with this argv (and, for train / eval_T, metrics.jsonl holds its finite ELBO)."""
    record = stages.get(stage)
    ok = record is not None and record["argv"] == argv[1:]
    if stage == "train":
        ok = ok and final_eval(read_metrics(cell_dir), opts.steps) is not None
    elif parse_eval_stage(stage):  # a non-finite ELBO is retried on the next invocation
        ok = ok and final_eval(read_metrics(cell_dir), opts.steps, *parse_eval_stage(stage)) is not None
    return ok


def _new_sample_file(cell_dir: str, before: set[str], steps: int) -> str:
    """The .npz the sample stage just wrote under CELL/samples (else the newest sample_step<steps>_*.npz)."""
    pattern = os.path.join(cell_dir, "samples", "*.npz")
    new = sorted(set(glob.glob(pattern)) - before, key=os.path.getmtime) or sorted(
        glob.glob(os.path.join(cell_dir, "samples", f"sample_step{steps}_*.npz")), key=os.path.getmtime
    )
    if not new:
        raise CellError(f"{cell_dir}: the sample stage wrote no .npz under samples/.")
    return new[-1]


def _run_stages(cell: Cell, opts: Options, cell_dir: str, stages: dict, slot: Slot, log: Log) -> None:
    """Run the cell's unfinished train / eval_T / sample stages in order, recording each in CELL/stages.json."""
    stages_path = os.path.join(cell_dir, "stages.json")
    for stage, argv in stage_commands(cell, opts, cell_dir).items():
        if _stage_finished(stage, argv, stages, cell_dir, opts):
            continue
        before = set(glob.glob(os.path.join(cell_dir, "samples", "*.npz")))
        log(f"[{cell.name}] {stage} ..." + (f" (device {slot.device})" if slot.device is not None else ""))
        seconds = run_stage(argv, os.path.join(cell_dir, "logs", f"{stage}.log"), slot.device, slot.share)
        record = {
            "argv": argv[1:],
            "seconds": seconds,
            "hardware": slot.hardware,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if stage in sample_stages([stage]):  # the sample file is the newest one after this stage
            record["npz"] = _new_sample_file(cell_dir, before, opts.steps)
        stages[stage] = record
        atomic_write(stages_path, json_writer(stages))
        log(f"[{cell.name}] {stage} finished in {seconds:.0f} s")


def _fd_stage(opts: Options, cell_dir: str, stages: dict, slot: Slot) -> None:
    """CELL/fd<X>.json for each sampled .npz (flat data here, images by the feature net's CLI), and for images
    CELL/inception<X>.json (vdm.fid), each unless already done (X: see stages.quality_suffix)."""
    for sample in sample_stages(stages):
        _quality_stages(opts, cell_dir, stages, slot, quality_suffix(sample))


def _quality_stages(opts: Options, cell_dir: str, stages: dict, slot: Slot, x: str) -> None:
    """The fd<X> and inception<X> stages of the sample stage sample<X>."""
    npz = stages["sample" + x]["npz"]
    fd_key = {"npz": npz, "flat": opts.flat_data, "feature_net_dir": opts.feature_net_dir}
    if stages.get("fd" + x, {}).get("key") != fd_key:
        t0 = time.perf_counter()
        out = os.path.join(cell_dir, f"fd{x}.json")
        if opts.flat_data:
            atomic_write(out, json_writer(_flat_fd(npz, opts)))
        else:
            run_stage(fd_command(opts, npz, out), os.path.join(cell_dir, "logs", f"fd{x}.log"), slot.device, slot.share)
        stages["fd" + x] = {"key": fd_key, "seconds": time.perf_counter() - t0}
        atomic_write(os.path.join(cell_dir, "stages.json"), json_writer(stages))
    if opts.flat_data or opts.inception_reference <= 0:
        return
    key = {"npz": npz, "reference": opts.inception_reference}
    if stages.get("inception" + x, {}).get("key") != key:
        t0 = time.perf_counter()
        run_stage(
            inception_command(opts, npz, os.path.join(cell_dir, f"inception{x}.json")),
            os.path.join(cell_dir, "logs", f"inception{x}.log"),
            slot.device,
            slot.share,
        )
        stages["inception" + x] = {"key": key, "seconds": time.perf_counter() - t0}
        atomic_write(os.path.join(cell_dir, "stages.json"), json_writer(stages))


def run_cell(cell: Cell, opts: Options, cell_dir: str, *, slot: Slot = Slot(), log: Log = print) -> dict:
    """Run the cell's missing stages, then write CELL/DONE.json; returns its row (see report.columns).

    A stage is skipped when CELL/stages.json records it with the same argv (and, for train,
    metrics.jsonl holds the final eval). A cell whose DONE.json matches is skipped whole.
    """
    cmds = stage_commands(cell, opts, cell_dir)
    spec = {
        "commands": {k: v[1:] for k, v in cmds.items()},
        "fd_samples": opts.fd_samples,
        "flat_data": opts.flat_data,
        "feature_net_dir": opts.feature_net_dir,
        "inception_reference": opts.inception_reference,
    }
    done_path = os.path.join(cell_dir, "DONE.json")
    done = read_json(done_path)
    if done is not None and done.get("spec") == spec:
        log(f"[{cell.name}] done already: skipped")
        return done["row"]
    os.makedirs(cell_dir, exist_ok=True)
    stages = read_json(os.path.join(cell_dir, "stages.json"), {})
    trained = stages.get("train")
    if trained is not None and trained["argv"] != cmds["train"][1:]:
        raise CellError(
            f"{cell_dir} was trained with other settings:\n  {shlex.join(trained['argv'])}\n"
            "use another --name, or delete that cell folder to retrain it."
        )
    t_cell = time.perf_counter()
    _run_stages(cell, opts, cell_dir, stages, slot, log)
    if opts.fd_samples > 0:
        _fd_stage(opts, cell_dir, stages, slot)
    row = cell_row(cell, opts, cell_dir, stages)
    if row["notes"]:
        log(f"[{cell.name}] {row['notes']} (not marked done: the next invocation retries those stages)")
    else:
        atomic_write(
            done_path, json_writer({"spec": spec, "row": row, "seconds_this_run": time.perf_counter() - t_cell})
        )
    return row


def detect_gpus() -> list[str]:
    """GPU ids for CUDA_VISIBLE_DEVICES: those already visible, else `nvidia-smi -L`'s; [] without GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def describe_hardware(gpus: list[str]) -> str:
    """'N x <GPU name>' from nvidia-smi, else '<CPU model>, N cores' from /proc/cpuinfo."""
    if gpus:
        try:
            names = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
            ).stdout.split("\n")
            names = [n.strip() for n in names if n.strip()]
            return f"{len(gpus)} x {names[0] if names else 'GPU'}"
        except (OSError, subprocess.SubprocessError):
            return f"{len(gpus)} x GPU"
    model = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "CPU")
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores (CPU only)"


def run_grid(
    cells: list[Cell],
    opts: Options,
    result_dir: str,
    *,
    parallel: int,
    devices: list[str],
    hardware: str,
    log: Log = print,
    on_progress: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Run the cells, `parallel` at a time, each on a device slot; rows in cell order (failed cells: status 'failed').

    on_progress(rows so far, in cell order) is called after each cell, one call at a time.
    """
    slots: queue.Queue = queue.Queue()
    assigned = [devices[i % len(devices)] if devices else None for i in range(parallel)]
    for device in assigned:
        slots.put(Slot(device, assigned.count(device), hardware))  # memory split between a GPU's processes

    def work(cell: Cell) -> dict:
        """Run one cell on a free slot; a failed stage gives a 'failed' row."""
        slot = slots.get()
        try:
            return run_cell(cell, opts, os.path.join(result_dir, "cells", cell.name), slot=slot, log=log)
        except CellError as e:
            log(f"[{cell.name}] FAILED: {e}")
            return failed_row(cell, opts)
        finally:
            slots.put(slot)

    done: dict[Cell, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(work, cell): cell for cell in cells}
        for future in concurrent.futures.as_completed(futures):  # callbacks run in this thread only
            done[futures[future]] = future.result()
            if on_progress is not None:
                on_progress([done[c] for c in cells if c in done])
    return [done[c] for c in cells]
