"""Compare parameterisations, training weightings and schedules: one `python -m vdm.main` run per grid cell.

    python experiments/compare_objectives.py --config=configs/fashion_mnist.py --name=fm_grid \
        --steps=20000 [--seeds=0,1] [--grid=param_weighting,schedule] [--schedule_weighting=elbo] \
        [--cells='eps-*,v-elbo-*'] [--parallel=K] [--override=config.training.batch_size=64] [--dry_run] [--report_only]

Grids (equal steps and seeds in every cell):
  param_weighting  parameterization {eps, x0, score, v} x weighting {elbo, simple, snr, min_snr,
                   sigmoid, edm}, on the config's schedule;
  schedule         schedule {linear_logsnr, cosine, learned} for one weighting and parameterisation.
A cell is named <parameterization>-<weighting>-<schedule>-s<seed> and lives in
RESULTS/NAME/cells/<cell>; cells shared by the two grids run once.

Every cell runs the commands a user runs (each printed with --dry_run):
  train   python -m vdm.main --config=C --workdir=CELL [--config.K=V overrides] \
              --config.model.parameterization=P --config.loss.weighting=W --config.model.schedule=S \
              --config.seed=SEED --config.training.num_steps=N --config.training.eval_every=E \
              --config.eval.num_steps=0
  eval T  the same with --mode=eval --config.eval.num_steps=T, for each T in --eval_steps;
  sample  the same with --mode=sample --config.sampling.num_samples=--fd_samples;
  fd      images: python experiments/feature_net.py --mode=fd (Fréchet distance of classifier
          features, NOT Inception FID; see experiments/fid.py); flat toy data: Fréchet distance
          of the raw coordinates, computed here.
The reported ELBO is always the true continuous-time ELBO in bits/dim (whatever the training
weighting), with its standard error and its three terms; eval T adds the T-step discrete ELBO.

Cells run in parallel, one process per GPU (CUDA_VISIBLE_DEVICES), or one at a time on a CPU
host unless --parallel=K. A finished stage is recorded in CELL/stages.json and not rerun; a
finished cell has CELL/DONE.json, so rerunning the same command skips it and only rewrites the
report: RESULTS/NAME/{results.csv, results.md, curves.csv, figures/}.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import fnmatch
import glob
import json
import os
import queue
import shlex
import subprocess
import sys
import time
from typing import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import compare_report  # noqa: E402  (experiments/compare_report.py)
import fid  # noqa: E402  (experiments/fid.py)

GRIDS = ("param_weighting", "schedule")
GRID_SCHEDULES = ("linear_logsnr", "cosine", "learned")
DEFAULT_RESULTS_ROOT = os.path.join(REPO, "experiments", "results")
DEFAULT_FEATURE_NET_DIR = os.path.join(REPO, "experiments", "results", "feature_net")
# Keys each cell sets itself; a user override of one of them would silently break the grid.
# (config.sampling.num_samples may be overridden: it sizes the training-time grids; the sample stage's own
# --config.sampling.num_samples=--fd_samples comes last on its command line, and the last flag wins.)
CONTROLLED_KEYS = ("model.parameterization", "loss.weighting", "model.schedule", "seed",
                   "training.num_steps", "training.eval_every", "eval.num_steps")


def grid_axes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(parameterisations, weightings) of the grid: vdm's own choice sets, so they cannot drift."""
    from vdm import objectives, parameterization   # jax is imported, but no device is touched
    return tuple(parameterization.KINDS), tuple(objectives.WEIGHTINGS)


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One training run of the grid."""
    parameterization: str
    weighting: str
    schedule: str
    seed: int

    @property
    def name(self) -> str:
        """<parameterization>-<weighting>-<schedule>-s<seed>, the cell's folder name."""
        return f"{self.parameterization}-{self.weighting}-{self.schedule}-s{self.seed}"

    def overrides(self) -> list[str]:
        """The vdm.main flags that make this cell."""
        return [f"--config.model.parameterization={self.parameterization}",
                f"--config.loss.weighting={self.weighting}",
                f"--config.model.schedule={self.schedule}", f"--config.seed={self.seed}"]


def enumerate_cells(grids: list[str], *, seeds: list[int], base_schedule: str,
                    schedule_weighting: str = "elbo", schedule_parameterization: str = "eps",
                    patterns: list[str] | None = None) -> list[Cell]:
    """The cells of `grids`, deduplicated, in grid order, seeds innermost; `patterns` (fnmatch on the name) filters.

    param_weighting: every parameterisation x weighting on `base_schedule`; schedule: every
    GRID_SCHEDULES entry with `schedule_weighting` and `schedule_parameterization`.
    """
    params, weightings = grid_axes()
    unknown = [g for g in grids if g not in GRIDS]
    if unknown or not grids:
        raise ValueError(f"--grid={','.join(grids)}: choose one or more of {', '.join(GRIDS)}.")
    if schedule_weighting not in weightings:
        raise ValueError(f"--schedule_weighting={schedule_weighting!r}; choose one of {', '.join(weightings)}.")
    if schedule_parameterization not in params:
        raise ValueError(f"--schedule_parameterization={schedule_parameterization!r}; choose one of "
                         f"{', '.join(params)}.")
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds={seeds}: give distinct non-negative integers.")
    combos = []
    for grid in grids:
        if grid == "param_weighting":
            combos += [(p, w, base_schedule) for p in params for w in weightings]
        else:
            combos += [(schedule_parameterization, schedule_weighting, s) for s in GRID_SCHEDULES]
    cells = list(dict.fromkeys(Cell(p, w, s, seed) for p, w, s in combos for seed in seeds))
    if patterns:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.name, pat) for pat in patterns)]
        if not cells:
            raise ValueError(f"--cells={','.join(patterns)} matches no cell; names look like "
                             "'eps-elbo-linear_logsnr-s0' (fnmatch patterns such as 'eps-*' work).")
    return cells


@dataclasses.dataclass(frozen=True)
class Options:
    """What every cell shares: the config, user overrides, steps, and what to measure."""
    config_arg: str                 # configs/X.py[:arg], absolute path
    user_overrides: tuple[str, ...]  # --config.K=V flags passed through to every command
    steps: int
    eval_every: int
    eval_steps: tuple[int, ...]     # discrete T of the extra ELBO evaluations
    fd_samples: int                 # samples for the Fréchet distance (0: no sampling, no FD)
    flat_data: bool                 # toy data [N, D]: FD of raw coordinates, else feature-net FD
    feature_net_dir: str
    data_config: dict               # config.data, to load the test split of flat data
    python: str = sys.executable


def stage_commands(cell: Cell, opts: Options, cell_dir: str) -> dict[str, list[str]]:
    """{stage: argv} for the cell's train, eval_T<T> and sample stages (the fd stage needs the sample file)."""
    base = [opts.python, "-m", "vdm.main", f"--config={opts.config_arg}", f"--workdir={cell_dir}",
            *opts.user_overrides, *cell.overrides(), f"--config.training.num_steps={opts.steps}",
            f"--config.training.eval_every={opts.eval_every}"]
    cmds = {"train": base + ["--config.eval.num_steps=0"]}
    for t in opts.eval_steps:
        cmds[f"eval_T{t}"] = base + ["--mode=eval", f"--config.eval.num_steps={t}"]
    if opts.fd_samples > 0:
        cmds["sample"] = base + ["--config.eval.num_steps=0", "--mode=sample",
                                 f"--config.sampling.num_samples={opts.fd_samples}"]
    return cmds


def fd_command(opts: Options, samples: str, out: str) -> list[str]:
    """argv of the feature-net Fréchet distance of an .npz of image samples."""
    return [opts.python, os.path.join(HERE, "feature_net.py"), "--mode=fd",
            f"--workdir={opts.feature_net_dir}", f"--samples={samples}", f"--out={out}"]


def read_metrics(cell_dir: str) -> list[dict]:
    """The records of CELL/metrics.jsonl (empty if absent)."""
    path = os.path.join(cell_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_eval(records: list[dict], step: int, num_steps: int | None = None) -> dict | None:
    """The last eval record at `step`: the training loop's (no 'eval/num_steps') or the --mode=eval one for T."""
    hits = [r for r in records if r.get("step") == step and r.get("eval/bpd") is not None
            and r.get("eval/num_steps") == num_steps]
    return hits[-1] if hits else None


def _read_json(path: str, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=float)
    os.replace(tmp, path)                       # atomic: a killed run never leaves half a marker


class CellError(RuntimeError):
    """A stage of a cell failed; the message has its command and the end of its log."""


def _run_stage(argv: list[str], log_path: str, device: str | None, share: int = 1) -> float:
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


def _flat_fd(samples_path: str, opts: Options) -> dict:
    """Fréchet distance between Gaussians fitted to flat samples and to the test split (raw coordinates)."""
    from vdm import data as vdm_data
    with np.load(samples_path) as f:
        samples = np.asarray(f["samples"], np.float64)
    bad = float(np.mean(~np.isfinite(samples)))
    out = {"num_samples": int(len(samples)), "nonfinite_frac": bad, "feature_dim": int(samples.shape[1])}
    if bad > 0:
        return {**out, "fd": None}
    x_test, _ = vdm_data.load_arrays(opts.data_config, "test")
    return {**out, "fd": fid.frechet_distance_of_samples(samples, np.asarray(x_test, np.float64))}


def run_cell(cell: Cell, opts: Options, cell_dir: str, *, device: str | None = None, share: int = 1,
             hardware: str = "", log: Callable[[str], None] = print) -> dict:
    """Run the cell's missing stages, then write CELL/DONE.json; returns its row (see compare_report.COLUMNS).

    A stage is skipped when CELL/stages.json records it with the same argv (and, for train,
    metrics.jsonl holds the final eval). A cell whose DONE.json matches is skipped whole.
    """
    cmds = stage_commands(cell, opts, cell_dir)
    spec = {"commands": {k: v[1:] for k, v in cmds.items()}, "fd_samples": opts.fd_samples,
            "flat_data": opts.flat_data, "feature_net_dir": opts.feature_net_dir}
    done_path = os.path.join(cell_dir, "DONE.json")
    done = _read_json(done_path)
    if done is not None and done.get("spec") == spec:
        log(f"[{cell.name}] done already: skipped")
        return done["row"]
    os.makedirs(cell_dir, exist_ok=True)
    stages_path = os.path.join(cell_dir, "stages.json")
    stages = _read_json(stages_path, {})
    trained = stages.get("train")
    if trained is not None and trained["argv"] != cmds["train"][1:]:
        raise CellError(f"{cell_dir} was trained with other settings:\n  {shlex.join(trained['argv'])}\n"
                        "use another --name, or delete that cell folder to retrain it.")
    t_cell = time.perf_counter()
    for stage, argv in cmds.items():
        record = stages.get(stage)
        ok = record is not None and record["argv"] == argv[1:]
        if stage == "train":
            ok = ok and final_eval(read_metrics(cell_dir), opts.steps) is not None
        elif stage.startswith("eval_T"):        # a non-finite ELBO is retried on the next invocation
            ok = ok and final_eval(read_metrics(cell_dir), opts.steps, int(stage[6:])) is not None
        if ok:
            continue
        if stage == "sample":                   # the sample file is the newest one after this stage
            before = set(glob.glob(os.path.join(cell_dir, "samples", "*.npz")))
        log(f"[{cell.name}] {stage} ..." + (f" (device {device})" if device is not None else ""))
        seconds = _run_stage(argv, os.path.join(cell_dir, "logs", f"{stage}.log"), device, share)
        record = {"argv": argv[1:], "seconds": seconds, "hardware": hardware,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        if stage == "sample":
            new = sorted(set(glob.glob(os.path.join(cell_dir, "samples", "*.npz"))) - before,
                         key=os.path.getmtime) or sorted(glob.glob(os.path.join(
                             cell_dir, "samples", f"sample_step{opts.steps}_*.npz")), key=os.path.getmtime)
            if not new:
                raise CellError(f"{cell_dir}: the sample stage wrote no .npz under samples/.")
            record["npz"] = new[-1]
        stages[stage] = record
        _write_json(stages_path, stages)
        log(f"[{cell.name}] {stage} finished in {seconds:.0f} s")
    if opts.fd_samples > 0:
        npz = stages["sample"]["npz"]
        fd_key = {"npz": npz, "flat": opts.flat_data, "feature_net_dir": opts.feature_net_dir}
        if stages.get("fd", {}).get("key") != fd_key:
            t0 = time.perf_counter()
            out = os.path.join(cell_dir, "fd.json")
            if opts.flat_data:
                _write_json(out, _flat_fd(npz, opts))
            else:
                _run_stage(fd_command(opts, npz, out), os.path.join(cell_dir, "logs", "fd.log"), device, share)
            stages["fd"] = {"key": fd_key, "seconds": time.perf_counter() - t0}
            _write_json(stages_path, stages)
    row = cell_row(cell, opts, cell_dir, stages)
    if row["notes"]:
        log(f"[{cell.name}] {row['notes']} (not marked done: the next invocation retries those stages)")
    else:
        _write_json(done_path, {"spec": spec, "row": row, "seconds_this_run": time.perf_counter() - t_cell})
    return row


def cell_row(cell: Cell, opts: Options, cell_dir: str, stages: dict) -> dict:
    """The cell's results: ELBO terms and SE from metrics.jsonl, discrete-T ELBOs, FD, timings.

    A value the run reported as non-finite (null in metrics.jsonl / fd.json) is None here and
    named in row['notes'].
    """
    records = read_metrics(cell_dir)
    final = final_eval(records, opts.steps)
    if final is None:
        nonfinite = any(r.get("step") == opts.steps and "eval/bpd" in r and "eval/num_steps" not in r
                        for r in records)
        raise CellError(f"{cell_dir}/metrics.jsonl: the final eval at step {opts.steps} is "
                        + ("non-finite (did training diverge?)." if nonfinite else "missing."))
    row = {"cell": cell.name, "parameterization": cell.parameterization, "weighting": cell.weighting,
           "schedule": cell.schedule, "seed": cell.seed, "steps": opts.steps, "status": "ok"}
    for key in ("bpd", "bpd_se", "bpd_recon", "bpd_prior", "bpd_diffusion", "sample_nonfinite_frac"):
        row[key] = final.get(f"eval/{key}")
    for t in opts.eval_steps:
        rec = final_eval(records, opts.steps, t) or {}
        row[f"bpd_T{t}"], row[f"bpd_T{t}_se"] = rec.get("eval/bpd"), rec.get("eval/bpd_se")
    fd_out = _read_json(os.path.join(cell_dir, "fd.json"), {}) if opts.fd_samples > 0 else {}
    row["fd"] = fd_out.get("fd")
    row["fd_features"] = ("data" if opts.flat_data else "feature_net") if fd_out else ""
    row["fd_num_samples"] = fd_out.get("num_samples")
    row["train_seconds"] = stages["train"]["seconds"]
    row["measure_seconds"] = sum(v.get("seconds", 0.0) for k, v in stages.items() if k != "train")
    row["hardware"] = stages["train"].get("hardware", "")
    samples = sorted(glob.glob(os.path.join(cell_dir, "samples", "step_*.png")))
    row["samples_png"] = os.path.relpath(samples[-1], cell_dir) if samples else ""
    wanted = [(f"bpd_T{t}", f"eval_T{t}") for t in opts.eval_steps]
    if opts.fd_samples > 0:
        wanted.append(("fd", "fd"))
    not_run = [col for col, stage in wanted if row[col] is None and stage not in stages]
    nonfinite = [col for col, stage in wanted if row[col] is None and stage in stages]
    notes = ([f"non-finite: {', '.join(nonfinite)}"] if nonfinite else []) + \
            ([f"not run: {', '.join(not_run)}"] if not_run else [])
    row["notes"] = "; ".join(notes)
    return row


def report_rows(cells: list[Cell], opts: Options, result_dir: str) -> list[dict]:
    """--report_only: the rows of the cells whose training finished, from their folders; nothing is run.

    For a grid stopped part-way, or cell folders copied back from another machine (checkpoints
    left behind): a stage that never ran is named in the row's notes ('not run: fd').
    """
    rows = []
    for cell in cells:
        cell_dir = os.path.join(result_dir, "cells", cell.name)
        stages = _read_json(os.path.join(cell_dir, "stages.json"), {})
        if "train" not in stages or final_eval(read_metrics(cell_dir), opts.steps) is None:
            continue
        rows.append(cell_row(cell, opts, cell_dir, stages))
    return rows


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
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=30).stdout.split("\n")
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


def run_grid(cells: list[Cell], opts: Options, result_dir: str, *, parallel: int,
             devices: list[str], hardware: str, log: Callable[[str], None] = print,
             on_progress: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Run the cells, `parallel` at a time, each on a device slot; rows in cell order (failed cells: status 'failed').

    on_progress(rows so far, in cell order) is called after each cell, one call at a time.
    """
    slots: queue.Queue = queue.Queue()
    assigned = [devices[i % len(devices)] if devices else None for i in range(parallel)]
    for device in assigned:
        slots.put(device)
    share = {d: assigned.count(d) for d in assigned}   # processes per GPU (memory split between them)

    def work(cell: Cell) -> dict:
        device = slots.get()
        try:
            return run_cell(cell, opts, os.path.join(result_dir, "cells", cell.name), device=device,
                            share=share[device], hardware=hardware, log=log)
        except CellError as e:
            log(f"[{cell.name}] FAILED: {e}")
            return {"cell": cell.name, "parameterization": cell.parameterization, "weighting": cell.weighting,
                    "schedule": cell.schedule, "seed": cell.seed, "steps": opts.steps, "status": "failed"}
        finally:
            slots.put(device)

    done: dict[Cell, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(work, cell): cell for cell in cells}
        for future in concurrent.futures.as_completed(futures):   # callbacks run in this thread only
            done[futures[future]] = future.result()
            if on_progress is not None:
                on_progress([done[c] for c in cells if c in done])
    return [done[c] for c in cells]


def _config_key_value(flag: str) -> tuple[str, str]:
    body = flag[len("--config."):]
    key, sep, value = body.partition("=")
    if not sep:
        raise ValueError(f"override {flag!r} must look like --config.KEY=VALUE (or --override=config.KEY=VALUE).")
    return key, value


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv for absl with every override as --config.K=V, those --config.K=V flags to pass through).

    Accepts --override=config.K=V, --override config.K=V and --config.K=V; rejects keys the grid sets.
    """
    out, passed, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--override" or arg.startswith("--override="):
            if arg == "--override":
                i += 1
                if i >= len(argv):
                    raise ValueError("--override needs a value: --override=config.KEY=VALUE")
                arg = argv[i]
            else:
                arg = arg[len("--override="):]
            if not arg.startswith("config."):
                raise ValueError(f"--override={arg!r} must start with 'config.' (e.g. config.training.batch_size=32).")
            arg = "--" + arg
        if arg.startswith("--config."):
            key, _ = _config_key_value(arg)
            if key in CONTROLLED_KEYS:
                raise ValueError(f"config.{key} is set per cell by compare_objectives; use --steps, --seeds, "
                                 f"--grid, --eval_steps or --fd_samples instead of overriding it.")
            passed.append(arg)
        out.append(arg)
        i += 1
    return out, passed


def _absolute_config_arg(arg: str) -> str:
    path, sep, variant = arg.partition(":")
    return os.path.abspath(path) + sep + variant


def main(argv: list[str], passed_overrides: list[str]) -> int:
    """CLI (see the module docstring): validate everything up front, run the grid, write the report.

    passed_overrides: the --config.K=V flags (from split_overrides) forwarded to every command.
    """
    from absl import flags
    from vdm import config_utils
    F = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    base = F.config
    steps = F.steps or base.training.num_steps
    spc = base.training.steps_per_call
    if steps % spc:
        raise ValueError(f"--steps={steps} must be a multiple of config.training.steps_per_call={spc}.")
    # At most num_evals evaluations during training (always one at the end), every multiple of spc.
    eval_every = steps if F.num_evals <= 1 else min(steps, -(-steps // (F.num_evals * spc)) * spc)
    cells = enumerate_cells(F.grid, seeds=[int(s) for s in F.seeds], base_schedule=base.model.schedule,
                            schedule_weighting=F.schedule_weighting,
                            schedule_parameterization=F.schedule_parameterization, patterns=F.cells)
    for cell in cells:                          # every cell's config is valid before anything runs
        c = copy.deepcopy(base)
        with c.unlocked():
            c.model.parameterization, c.loss.weighting = cell.parameterization, cell.weighting
            c.model.schedule, c.seed = cell.schedule, cell.seed
            c.training.num_steps, c.training.eval_every, c.eval.num_steps = steps, eval_every, 0
        config_utils.validate(c)
    from vdm.data_toy import TOY_DATASETS
    flat = base.data.dataset in TOY_DATASETS
    eval_steps = tuple(int(t) for t in F.eval_steps)
    if any(t < 1 for t in eval_steps):
        raise ValueError(f"--eval_steps={F.eval_steps}: discrete T must be >= 1 (the continuous ELBO is always reported).")
    opts = Options(_absolute_config_arg(F["config"].config_filename), tuple(passed_overrides), steps,
                   eval_every, eval_steps, F.fd_samples, flat, os.path.abspath(F.feature_net_dir),
                   json.loads(base.data.to_json()))
    result_dir = os.path.abspath(os.path.join(F.results_root, F.name))
    gpus = detect_gpus()
    parallel = F.parallel or max(1, len(gpus))
    if F.dry_run:
        print(f"# {len(cells)} cells -> {result_dir}/cells/<cell>; parallel={parallel}, GPUs={gpus or 'none'}")
        for cell in cells:
            cell_dir = os.path.join(result_dir, "cells", cell.name)
            for stage, cmd in stage_commands(cell, opts, cell_dir).items():
                print(f"[{cell.name}] {stage}: {shlex.join(cmd)}")
            if opts.fd_samples > 0 and not flat:
                print(f"[{cell.name}] fd: {shlex.join(fd_command(opts, cell_dir + '/samples/<sample>.npz', cell_dir + '/fd.json'))}")
        return 0
    if not flat and opts.fd_samples > 0 and not os.path.exists(os.path.join(opts.feature_net_dir, "result.json")):
        raise FileNotFoundError(f"no feature net in {opts.feature_net_dir}: train it once with `make feature-net` "
                                "(or pass --fd_samples=0 to skip sample quality).")

    def report(rows: list[dict], *, hardware: str, parallel, wall_clock_s: float | None, rebuilt: str = "") -> None:
        header = {"config": F["config"].config_filename, "overrides": " ".join(opts.user_overrides) or "none",
                  "steps": steps, "eval_every": eval_every, "seeds": ",".join(F.seeds), "grid": ",".join(F.grid),
                  "cells_finished": f"{len(rows)} of {len(cells)}{rebuilt}", "hardware": hardware,
                  "parallel": parallel, "wall_clock_s": wall_clock_s, "fd_samples": opts.fd_samples,
                  "fd_features": "data coordinates" if flat else f"feature net ({opts.feature_net_dir})",
                  "date": time.strftime("%Y-%m-%d %H:%M")}
        compare_report.write_report(result_dir, rows, eval_steps=eval_steps, header=header,
                                    base_schedule=base.model.schedule)

    if F.report_only:
        rows = report_rows(cells, opts, result_dir)
        if not rows:
            raise FileNotFoundError(f"--report_only: no finished training under {result_dir}/cells for these cells.")
        report(rows, hardware=" / ".join(sorted({r["hardware"] for r in rows})), parallel=F.parallel or "?",
               wall_clock_s=None, rebuilt=" (report rebuilt from the cell folders)")
        print(f"wrote {result_dir}/results.md from {len(rows)} of {len(cells)} cells")
        return 0
    hardware = describe_hardware(gpus)
    print(f"{len(cells)} cells x {steps} steps -> {result_dir}; {parallel} at a time on {hardware}", flush=True)
    t0 = time.perf_counter()
    progress = lambda rows: report(rows, hardware=hardware, parallel=parallel, wall_clock_s=time.perf_counter() - t0)
    rows = run_grid(cells, opts, result_dir, parallel=parallel, devices=gpus, hardware=hardware,
                    log=lambda s: print(s, flush=True), on_progress=progress)   # report so far after each cell
    failed = [r["cell"] for r in rows if r["status"] != "ok"]
    print(f"wrote {result_dir}/results.md" + (f"; FAILED cells: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "experiment config (configs/X.py[:arg])", lock_config=True)
    flags.DEFINE_string("name", None, "result folder name under --results_root")
    flags.DEFINE_integer("steps", None, "training steps of every cell (default: the config's)")
    flags.DEFINE_list("seeds", ["0"], "seeds; every cell runs once per seed")
    flags.DEFINE_list("grid", ["param_weighting"], f"one or more of {', '.join(GRIDS)}")
    flags.DEFINE_string("schedule_weighting", "elbo", "weighting of the schedule grid")
    flags.DEFINE_string("schedule_parameterization", "eps", "parameterisation of the schedule grid")
    flags.DEFINE_list("cells", None, "fnmatch patterns of the cells to run (default: all)")
    flags.DEFINE_multi_string("override", [], "config.KEY=VALUE passed to every command")
    flags.DEFINE_integer("parallel", 0, "cells at a time (0: one per GPU, or 1 on a CPU host); more than "
                         "the GPUs puts several cells on one GPU, splitting its memory")
    flags.DEFINE_list("eval_steps", ["10", "100", "1000"], "discrete T for extra ELBO evaluations")
    flags.DEFINE_integer("fd_samples", 2000, "samples for the Fréchet distance (0: no sampling)")
    flags.DEFINE_integer("num_evals", 5, "ELBO evaluations during training (the bpd-vs-steps curves)")
    flags.DEFINE_string("feature_net_dir", DEFAULT_FEATURE_NET_DIR, "trained feature net (make feature-net)")
    flags.DEFINE_string("results_root", DEFAULT_RESULTS_ROOT, "parent of the result folder")
    flags.DEFINE_bool("dry_run", False, "print every command, run nothing")
    flags.DEFINE_bool("report_only", False, "rebuild the report from the cell folders that finished training; run nothing")
    flags.mark_flags_as_required(["config", "name"])


if __name__ == "__main__":
    from absl import app
    _define_flags()
    try:
        absl_argv, passed = split_overrides(sys.argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)

    def _main(argv):
        try:
            return main(argv, passed)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    sys.argv = absl_argv                # ml_collections reads the --config.K=V overrides from sys.argv
    app.run(_main)
