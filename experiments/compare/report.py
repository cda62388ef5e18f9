"""The report of a compare_objectives result folder: results.csv, results.md, curves.csv, header.json, figures/.

    from experiments.compare import report; report.load_results("experiments/results/fashion_mnist_h100")


variance.csv (the variance grid's per-variance measurements, experiments/compare/tables.py) is
written when a cell has them. Everything the report and notebook 02 need sits at the top of the folder, so it can be committed
without the cells/ (checkpoints). Figures: bpd_heatmap.png (parameterisation x weighting, mean
over seeds), fd_heatmap.png, bpd_vs_steps.png, schedules.png, samples_montage.png and
samples/<cell>.png (each cell's last sample grid from training), drawn by experiments/compare/figures.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from typing import Any

import numpy as np

from experiments.compare import figures, tables
from vdm.infra.fileio import atomic_write
from vdm.infra.metrics import read_metrics

BASE_COLUMNS = (
    "cell",
    "parameterization",
    "weighting",
    "schedule",
    "variant",
    "seed",
    "steps",
    "status",
    "bpd",
    "bpd_se",
    "bpd_recon",
    "bpd_prior",
    "bpd_diffusion",
)
TAIL_COLUMNS = (
    "fid",
    "kid",
    "kid_se",
    "fd",
    "fd_features",
    "fd_num_samples",
    "sample_nonfinite_frac",
    "train_diffusion_var_2nd_half",
    "train_diffusion_var_all",
    "train_seconds",
    "measure_seconds",
    "hardware",
    "samples_png",
    "notes",
)
TEXT_COLUMNS = (
    "cell",
    "parameterization",
    "weighting",
    "schedule",
    "variant",
    "status",
    "fd_features",
    "hardware",
    "samples_png",
    "notes",
)


def columns(eval_steps: tuple[int, ...] | list[int]) -> list[str]:
    """CSV columns: cell identity, ELBO bits/dim (+ SE, 3 terms), bpd_T<T>(+_se) per T, Inception FID/KID, FD, timings."""
    return [*BASE_COLUMNS, *(c for t in eval_steps for c in (f"bpd_T{t}", f"bpd_T{t}_se")), *TAIL_COLUMNS]


def eval_steps_of(cols: list[str]) -> list[int]:
    """The discrete T present in a column list (bpd_T<T> columns)."""
    return [int(c[5:]) for c in cols if c.startswith("bpd_T") and c[5:].isdigit()]


def write_csv(path: str, rows: list[dict], eval_steps: tuple[int, ...]) -> None:
    """One row per cell; missing values empty."""
    tables.write_rows_csv(path, rows, columns(eval_steps))


def read_csv(path: str) -> list[dict]:
    """Rows of results.csv with numbers as float/int and empty cells as None."""
    return tables.read_rows_csv(path, tuple(TEXT_COLUMNS), ("seed", "steps", "fd_num_samples"))


def _fmt(v: Any, digits: int = 3, significant: bool = False) -> str:
    """A table entry: floats to `digits` decimals (or significant digits), None and non-finite as an en dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}{'g' if significant else 'f'}}" if isinstance(v, float) else str(v)


def _kid(r: dict) -> str:
    """'KID ± se' of a row, KID in units of 1e-3, or an en dash."""
    if r.get("kid") is None:
        return "–"
    return f"{1e3 * r['kid']:.2f} ± {1e3 * (r.get('kid_se') or 0.0):.2f} e-3"


def markdown_table(rows: list[dict], eval_steps: tuple[int, ...]) -> str:
    """A Markdown table: one line per cell, bpd ± SE and its terms, discrete-T bpd, FID, KID ± se, FD, train seconds."""
    head = [
        "cell",
        "param",
        "weighting",
        "schedule",
        "seed",
        "bpd ± se",
        "recon",
        "prior",
        "diffusion",
        *(f"bpd T={t}" for t in eval_steps),
        "FID",
        "KID ± se",
        "FD",
        "Var(diffusion) 2nd half",
        "Var(diffusion) all",
        "train s",
        "notes",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(
                "| "
                + " | ".join(
                    [
                        r["cell"],
                        r["parameterization"],
                        r["weighting"],
                        r["schedule"],
                        str(r["seed"]),
                        f"**{r.get('status')}**",
                    ]
                    + ["–"] * (len(head) - 6)
                )
                + " |"
            )
            continue
        vals = [
            r["cell"],
            r["parameterization"],
            r["weighting"],
            r["schedule"],
            str(r["seed"]),
            f"{_fmt(r['bpd'])} ± {_fmt(r['bpd_se'])}",
            _fmt(r["bpd_recon"]),
            _fmt(r["bpd_prior"], 4),
            _fmt(r["bpd_diffusion"]),
            *(_fmt(r.get(f"bpd_T{t}")) for t in eval_steps),
            _fmt(r.get("fid"), 2),
            _kid(r),
            _fmt(r.get("fd"), 4),
            _fmt(r.get("train_diffusion_var_2nd_half"), 4, True),
            _fmt(r.get("train_diffusion_var_all"), 4, True),
            _fmt(r.get("train_seconds"), 0),
            r.get("notes") or "",
        ]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def read_curves(cell_dir: str) -> list[tuple[int, float, float | None]]:
    """[(step, eval bpd, se)] of the training loop's evaluations in CELL/metrics.jsonl (last record per step)."""
    points: dict[int, tuple[float, float | None]] = {}
    for r in read_metrics(cell_dir):
        if r.get("eval/bpd") is not None and "eval/num_steps" not in r:
            points[int(r["step"])] = (float(r["eval/bpd"]), r.get("eval/bpd_se"))
    return [(s, *points[s]) for s in sorted(points)]


def write_curves_csv(path: str, curves: dict[str, list]) -> None:
    """curves.csv: cell, step, bpd, bpd_se."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "step", "bpd", "bpd_se"])
        for cell, pts in curves.items():
            for step, bpd, se in pts:
                w.writerow([cell, step, bpd, "" if se is None else se])


def read_curves_csv(path: str) -> dict[str, list[tuple[int, float, float | None]]]:
    """{cell: [(step, bpd, se)]} from curves.csv."""
    out: dict[str, list] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.setdefault(r["cell"], []).append(
                (int(r["step"]), float(r["bpd"]), float(r["bpd_se"]) if r["bpd_se"] else None)
            )
    return out


def _summary(
    result_dir: str, rows: list[dict], header: dict, eval_steps: tuple[int, ...], curves: dict[str, list] | None = None
) -> str:
    """results.md: what was run and on what (from `header`), how long it took, what the columns mean, the tables."""
    ok = [r for r in rows if r.get("status") == "ok"]
    train_s = [r["train_seconds"] for r in ok if r.get("train_seconds") is not None]
    total_s = [r["train_seconds"] + (r.get("measure_seconds") or 0.0) for r in ok if r.get("train_seconds") is not None]
    lines = [
        f"# compare_objectives: {os.path.basename(result_dir)}",
        "",
        f"- config: `{header.get('config')}`, overrides: `{header.get('overrides')}`",
        f"- cells finished: {header.get('cells_finished', len(rows))} ({len(ok)} ok), "
        f"{header.get('steps')} steps each, seeds "
        f"{header.get('seeds')}, grid {header.get('grid')}, ELBO evaluated every {header.get('eval_every')} steps",
        f"- hardware: {header.get('hardware')}, {header.get('parallel')} cell(s) at a time",
        "- time per cell (training / all stages): "
        + (
            f"mean {np.mean(train_s):.0f} s / {np.mean(total_s):.0f} s, max {np.max(train_s):.0f} s / "
            f"{np.max(total_s):.0f} s; sum of all stages {np.sum(total_s):.0f} s"
            if train_s
            else "–"
        )
        + (
            f"; wall-clock of the last invocation {header['wall_clock_s']:.0f} s"
            if header.get("wall_clock_s") is not None
            else ""
        ),
        "- bpd: true continuous-time -ELBO on the test split (bits/dim) ± its standard error, whatever "
        "the training weighting; `bpd T=k`: the k-step discrete ELBO",
        (
            f"- FD: squared Fréchet distance of {header.get('fd_features')} between {header.get('fd_samples')} "
            "samples and the test split (not Inception FID)"
            if header.get("fd_samples")
            else "- FD: not measured (--fd_samples=0)"
        ),
        (
            f"- FID, KID: Inception-v3 (2015-12-05) pool features (vdm.fid, TF1 resize), the samples against "
            f"the first {header.get('inception_reference')} test images; KID ± its standard error over "
            "100 subsets of 1000"
            if header.get("inception_reference") and header.get("fd_samples")
            else "- FID, KID: not measured"
        ),
        "- Var(diffusion): the training loss's variance, the batch variance of the per-example diffusion term "
        "(train/diffusion_var) averaged over the logged steps of the second half of training (step > steps/2), "
        "and over all logged steps",
        f"- date: {header.get('date')}",
        "",
        markdown_table(rows, eval_steps),
        tables.variance_markdown(tables.variance_rows(rows)),
        tables.curves_markdown(curves or {}),
    ]
    return "\n".join(lines)


def write_report(
    result_dir: str, rows: list[dict], *, eval_steps: tuple[int, ...], header: dict, base_schedule: str
) -> None:
    """Write results.csv, results.md, curves.csv, header.json and figures/ for `rows` (see module docstring)."""
    fig_dir = os.path.join(result_dir, "figures")
    os.makedirs(os.path.join(fig_dir, "samples"), exist_ok=True)
    curves = {}
    for r in rows:
        cell_dir = os.path.join(result_dir, "cells", r["cell"])
        curves[r["cell"]] = read_curves(cell_dir)
        src = os.path.join(cell_dir, r.get("samples_png") or "")
        if r.get("samples_png") and os.path.exists(src) and not r["samples_png"].startswith("figures/"):
            shutil.copyfile(src, os.path.join(fig_dir, "samples", r["cell"] + ".png"))
            r["samples_png"] = f"figures/samples/{r['cell']}.png"
    write_csv(os.path.join(result_dir, "results.csv"), rows, eval_steps)
    write_curves_csv(os.path.join(result_dir, "curves.csv"), curves)
    atomic_write(
        os.path.join(result_dir, "header.json"), lambda f: json.dump(header, f, indent=1, sort_keys=True, default=str)
    )
    vrows = tables.variance_rows(rows)
    if vrows:
        tables.write_variance_csv(os.path.join(result_dir, "variance.csv"), vrows)
    atomic_write(
        os.path.join(result_dir, "results.md"),
        lambda f: f.write(_summary(result_dir, rows, header, eval_steps, curves)),
    )
    figures.write_figures(result_dir, rows, curves, base_schedule)


def load_results(result_dir: str) -> dict:
    """{'rows', 'curves', 'header', 'eval_steps', 'variance_rows'} of a result folder (for notebooks); FileNotFoundError
    if absent ('variance_rows': variance.csv's, [] without one)."""
    path = os.path.join(result_dir, "results.csv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run experiments/compare_objectives.py with --name first.")
    with open(path, newline="") as f:
        cols = next(csv.reader(f))
    with open(os.path.join(result_dir, "header.json")) as f:
        header = json.load(f)
    variance = os.path.join(result_dir, "variance.csv")
    return {
        "rows": read_csv(path),
        "curves": read_curves_csv(os.path.join(result_dir, "curves.csv")),
        "header": header,
        "eval_steps": eval_steps_of(cols),
        "variance_rows": tables.read_variance_csv(variance) if os.path.exists(variance) else [],
    }
