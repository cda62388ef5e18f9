"""The report's extra tables: the variance grid's (bpd per T and reverse variance; sample quality per sampler
steps and variance), and bpd at equal training steps (the training loop's eval curve of every cell).

    variance.csv  cell, seed, kind ('elbo' or 'sample'), steps (T or sampler steps), variance, bpd, bpd_se,
                  fd, fid, kid, kid_se: one line per measurement of each cell with reverse variances.
"""

from __future__ import annotations

import csv
import math
import re

VARIANCE_COLUMNS = ("cell", "seed", "kind", "steps", "variance", "bpd", "bpd_se", "fd", "fid", "kid", "kid_se")
VARIANCE_ORDER = ("learned", "small", "large")
_ELBO_KEY = re.compile(r"^bpd_T(\d+)_(learned|small|large)$")
_SAMPLE_KEY = re.compile(r"^fd_ancestral(\d+)_(learned|small|large)$")


def variance_rows(rows: list[dict]) -> list[dict]:
    """The long-format variance table of the ok rows that hold per-variance columns (bpd_T<T>_<v>, fd_ancestral<S>_<v>),
    per cell ordered by kind, steps and VARIANCE_ORDER (whatever the order of the row's keys)."""
    out = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        base = {"cell": r["cell"], "seed": r.get("seed")}
        for key in r:
            m = _ELBO_KEY.match(key)
            if m:
                out.append(
                    {
                        **base,
                        "kind": "elbo",
                        "steps": int(m.group(1)),
                        "variance": m.group(2),
                        "bpd": r[key],
                        "bpd_se": r.get(key + "_se"),
                    }
                )
        for key in r:
            m = _SAMPLE_KEY.match(key)
            if m:
                x = key[2:]
                out.append(
                    {
                        **base,
                        "kind": "sample",
                        "steps": int(m.group(1)),
                        "variance": m.group(2),
                        "fd": r[key],
                        "fid": r.get("fid" + x),
                        "kid": r.get("kid" + x),
                        "kid_se": r.get("kid_se" + x),
                    }
                )
    cells = list(dict.fromkeys(r["cell"] for r in out))
    return sorted(
        out, key=lambda r: (cells.index(r["cell"]), r["kind"], r["steps"], VARIANCE_ORDER.index(r["variance"]))
    )


def write_rows_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    """rows as a CSV of `columns` (others ignored); missing values empty."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})


def read_rows_csv(path: str, text: tuple[str, ...], integers: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV from write_rows_csv: `text` columns as strings, `integers` as int, the rest float, empty as None."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in text:
                r[k] = None if v == "" else (int(v) if k in integers else float(v))
    return rows


def write_variance_csv(path: str, vrows: list[dict]) -> None:
    """variance.csv (see the module docstring); missing values empty."""
    write_rows_csv(path, vrows, VARIANCE_COLUMNS)


def read_variance_csv(path: str) -> list[dict]:
    """Rows of variance.csv with numbers as float/int and empty cells as None."""
    return read_rows_csv(path, ("cell", "kind", "variance"), ("seed", "steps"))


def _fmt(v, digits: int = 3) -> str:
    """A table entry: a float to `digits` decimals, None and non-finite as an en dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _elbo_table(elbo: list[dict]) -> list[str]:
    """Markdown lines: one per (cell, variance), bpd ± se per T."""
    ts = sorted({r["steps"] for r in elbo})
    lines = ["| cell | variance | " + " | ".join(f"bpd T={t} ± se" for t in ts) + " |", "|" + "---|" * (2 + len(ts))]
    for cell, variance in dict.fromkeys((r["cell"], r["variance"]) for r in elbo):
        by_t = {r["steps"]: r for r in elbo if r["cell"] == cell and r["variance"] == variance}
        vals = [f"{_fmt(by_t[t]['bpd'])} ± {_fmt(by_t[t]['bpd_se'])}" if t in by_t else "–" for t in ts]
        lines.append(f"| {cell} | {variance} | " + " | ".join(vals) + " |")
    return lines


def variance_markdown(vrows: list[dict]) -> str:
    """results.md's variance section: the T-step discrete ELBO per reverse variance, and ancestral sample quality."""
    if not vrows:
        return ""
    lines = [
        "## Reverse variance (variance grid)",
        "",
        "T-step discrete -ELBO (bits/dim ± standard error) with each reverse variance the cell has (the main "
        "table's bpd T=k is the cell's default: learned with a variance head, else small; its FD, FID and KID "
        "columns are empty for these cells, whose samples are the ancestral ones below):",
        "",
    ]
    lines += _elbo_table([r for r in vrows if r["kind"] == "elbo"])
    samples = [r for r in vrows if r["kind"] == "sample"]
    if samples:
        lines += [
            "",
            "Ancestral samples (FD as in the main table; FID, KID: Inception):",
            "",
            "| cell | sampler steps | variance | FD | FID | KID ± se |",
            "|---|---|---|---|---|---|",
        ]
        for r in samples:
            kid = "–" if r.get("kid") is None else f"{1e3 * r['kid']:.2f} ± {1e3 * (r.get('kid_se') or 0.0):.2f} e-3"
            lines.append(
                f"| {r['cell']} | {r['steps']} | {r['variance']} | {_fmt(r.get('fd'), 4)} | "
                f"{_fmt(r.get('fid'), 2)} | {kid} |"
            )
    return "\n".join(lines) + "\n"


def curves_markdown(curves: dict[str, list]) -> str:
    """results.md's bpd-at-equal-steps section: one line per cell, the training loop's test bpd at each eval step."""
    steps = sorted({p[0] for pts in curves.values() for p in pts})
    if not steps:
        return ""
    lines = [
        "## Test bpd at equal training steps (the training loop's evaluations; curves.csv)",
        "",
        "| cell | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|" + "---|" * (1 + len(steps)),
    ]
    for cell, pts in curves.items():
        by_step = {p[0]: p[1] for p in pts}
        lines.append(f"| {cell} | " + " | ".join(_fmt(by_step.get(s)) for s in steps) + " |")
    return "\n".join(lines) + "\n"
