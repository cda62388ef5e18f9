"""A cell's result row, read from its folder: the ELBO columns of metrics.jsonl, the FD / FID / KID of its
stages' JSON files, the training loss's variance, timings, and notes naming the columns without a value.

The row's columns are report.columns; `runner.run_cell` writes the row into CELL/DONE.json, and
`report_rows` (--report_only) rebuilds the rows of finished cells without running anything.
"""

from __future__ import annotations

import glob
import json
import os

from experiments.compare.grid import Cell
from experiments.compare.stages import (
    Options,
    final_eval,
    parse_eval_stage,
    quality_suffix,
    sample_stages,
    stage_commands,
    train_variance,
)
from vdm.infra.metrics import read_metrics


def read_json(path: str, default=None):
    """The JSON value in `path`, or `default` if the file does not exist."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


class CellError(RuntimeError):
    """A stage of a cell failed; the message has its command and the end of its log."""


def _notes(row: dict, opts: Options, stages: dict, cmds: dict) -> str:
    """'non-finite: ...; not run: ...' for the measured columns that have no value (empty if all do)."""
    wanted = [("bpd" + stage[4:], stage) for stage in cmds if parse_eval_stage(stage)]  # eval_T<T>[_v]: bpd_T..
    for x in map(quality_suffix, sample_stages(cmds)):
        wanted.append(("fd" + x, "fd" + x))
        if not opts.flat_data and opts.inception_reference > 0:
            wanted.append(("fid" + x, "inception" + x))
    not_run = [col for col, stage in wanted if row.get(col) is None and stage not in stages]
    nonfinite = [col for col, stage in wanted if row.get(col) is None and stage in stages]
    notes = ([f"non-finite: {', '.join(nonfinite)}"] if nonfinite else []) + (
        [f"not run: {', '.join(not_run)}"] if not_run else []
    )
    return "; ".join(notes)


def _eval_columns(cell: Cell, opts: Options, records: list[dict]) -> dict:
    """bpd_T<T>(_se) per T (a cell with variances: bpd_T<T>_<v>(_se) per variance, bpd_T<T> its default's)."""
    row = {}
    for t in opts.eval_steps:
        for v in cell.variances or (None,):
            rec = final_eval(records, opts.steps, t, v) or {}
            col = f"bpd_T{t}" + (f"_{v}" if v else "")
            row[col], row[col + "_se"] = rec.get("eval/bpd"), rec.get("eval/bpd_se")
        if cell.variances:
            default = f"bpd_T{t}_{cell.variances[0]}"
            row[f"bpd_T{t}"], row[f"bpd_T{t}_se"] = row[default], row[default + "_se"]
    return row


def _quality_columns(cell_dir: str, opts: Options, stages: dict, cmds: dict) -> dict:
    """fd<X>, fid<X>, kid<X>, kid_se<X> per sample stage sample<X>, and fd_features / fd_num_samples."""
    row = {"fd": None, "fd_features": "", "fd_num_samples": None, "fid": None, "kid": None, "kid_se": None}
    for x in map(quality_suffix, sample_stages(cmds)):
        fd_out = read_json(os.path.join(cell_dir, f"fd{x}.json"), {}) if opts.fd_samples > 0 else {}
        row["fd" + x] = fd_out.get("fd")
        if fd_out:
            row["fd_features"] = "data" if opts.flat_data else "feature_net"
            row["fd_num_samples"] = fd_out.get("num_samples")
        inc = read_json(os.path.join(cell_dir, f"inception{x}.json"), {}) if "inception" + x in stages else {}
        row["fid" + x], row["kid" + x], row["kid_se" + x] = inc.get("fid"), inc.get("kid"), inc.get("kid_se")
    return row


def cell_row(cell: Cell, opts: Options, cell_dir: str, stages: dict) -> dict:
    """The cell's results: ELBO terms and SE from metrics.jsonl, discrete-T ELBOs, FD, the training loss's
    variance, timings.

    A value the run reported as non-finite (null in metrics.jsonl / fd.json) is None here and
    named in row['notes'].
    """
    records = read_metrics(cell_dir)
    final = final_eval(records, opts.steps)
    if final is None:
        nonfinite = any(r.get("step") == opts.steps and "eval/bpd" in r and "eval/num_steps" not in r for r in records)
        raise CellError(
            f"{cell_dir}/metrics.jsonl: the final eval at step {opts.steps} is "
            + ("non-finite (did training diverge?)." if nonfinite else "missing.")
        )
    cmds = stage_commands(cell, opts, cell_dir)
    row = {**failed_row(cell, opts), "status": "ok"}
    for key in ("bpd", "bpd_se", "bpd_recon", "bpd_prior", "bpd_diffusion", "sample_nonfinite_frac"):
        row[key] = final.get(f"eval/{key}")
    row.update(_eval_columns(cell, opts, records))
    row.update(_quality_columns(cell_dir, opts, stages, cmds))
    row.update(train_variance(records, opts.steps))
    row["train_seconds"] = stages["train"]["seconds"]
    row["measure_seconds"] = sum(v.get("seconds", 0.0) for k, v in stages.items() if k != "train")
    row["hardware"] = stages["train"].get("hardware", "")
    samples = sorted(glob.glob(os.path.join(cell_dir, "samples", "step_*.png")))
    row["samples_png"] = os.path.relpath(samples[-1], cell_dir) if samples else ""
    row["notes"] = _notes(row, opts, stages, cmds)
    return row


def report_rows(cells: list[Cell], opts: Options, result_dir: str) -> list[dict]:
    """--report_only: the rows of the cells whose training finished, from their folders; nothing is run.

    For a grid stopped part-way, or cell folders copied back from another machine (checkpoints
    left behind): a stage that never ran is named in the row's notes ('not run: fd').
    """
    rows = []
    for cell in cells:
        cell_dir = os.path.join(result_dir, "cells", cell.name)
        stages = read_json(os.path.join(cell_dir, "stages.json"), {})
        if "train" not in stages or final_eval(read_metrics(cell_dir), opts.steps) is None:
            continue
        rows.append(cell_row(cell, opts, cell_dir, stages))
    return rows


def failed_row(cell: Cell, opts: Options) -> dict:
    """The row of a cell whose stage raised CellError: its identity and status 'failed'."""
    return {
        "cell": cell.name,
        "parameterization": cell.parameterization,
        "weighting": cell.weighting,
        "schedule": cell.schedule,
        "variant": cell.variant,
        "seed": cell.seed,
        "steps": opts.steps,
        "status": "failed",
    }
