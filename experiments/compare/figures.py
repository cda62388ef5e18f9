"""The figures of a compare_objectives report (figures/ of the result folder) and of notebook 02.

bpd_heatmap.png and fd_heatmap.png (parameterisation x weighting, mean over seeds, on the base
schedule), schedules.png (bpd per schedule), bpd_vs_steps.png (test bpd against training step)
and samples_montage.png (every cell's last sample grid); matplotlib is imported only to draw.
"""

from __future__ import annotations

import math
import os

import numpy as np


def heatmap_matrix(
    rows: list[dict], value: str = "bpd", schedule: str | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """(parameterisations, weightings, M [P, W]): mean of `value` over seeds of the ok cells (NaN where none)."""
    ok = [
        r
        for r in rows
        if r.get("status") == "ok" and (schedule is None or r["schedule"] == schedule) and not r.get("variant")
    ]  # a variant cell is not its (param, weighting) square
    params = list(dict.fromkeys(r["parameterization"] for r in ok))
    weights = list(dict.fromkeys(r["weighting"] for r in ok))
    m = np.full((len(params), len(weights)), np.nan)
    for i, p in enumerate(params):
        for j, w in enumerate(weights):
            vals = [
                r[value] for r in ok if r["parameterization"] == p and r["weighting"] == w and r.get(value) is not None
            ]
            if vals:
                m[i, j] = float(np.mean(vals))
    return params, weights, m


def plot_heatmap(rows: list[dict], value: str = "bpd", schedule: str | None = None, ax=None):
    """Heat map of `value` (parameterisation rows x weighting columns), numbers written in; returns the axes."""
    import matplotlib
    import matplotlib.pyplot as plt

    params, weights, m = heatmap_matrix(rows, value, schedule)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.3 * max(len(weights), 2) + 2, 0.8 * max(len(params), 2) + 1.5))
    finite = m[np.isfinite(m)]
    # A log colour scale when values span more than a factor 5 (one diverged cell would wash out the rest).
    norm = (
        matplotlib.colors.LogNorm(vmin=finite.min(), vmax=finite.max())
        if finite.size and finite.min() > 0 and finite.max() > 5 * finite.min()
        else None
    )
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis_r", aspect="auto", norm=norm)
    ax.set_xticks(range(len(weights)), weights)
    ax.set_yticks(range(len(params)), params)
    ax.set_xlabel("training weighting")
    ax.set_ylabel("parameterisation")
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
    ax.figure.colorbar(im, ax=ax, label=value + (" (lower is better)" if value in ("bpd", "fd") else ""))
    ax.set_title(f"test {value}" + (f", schedule {schedule}" if schedule else ""))
    return ax


def plot_curves(curves: dict[str, list], ax=None):
    """Test bpd (true ELBO) against training step, one line per cell; returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    for cell, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=cell)
    ax.set_xlabel("training step")
    ax.set_ylabel("test -ELBO (bits/dim)")
    if 0 < len(curves) <= 30:
        ax.legend(fontsize=6, ncol=2)
    return ax


def plot_schedules(rows: list[dict], ax=None):
    """Bar chart of bpd ± SE per schedule for the schedule grid's cells (same parameterisation and weighting)."""
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok" and r.get("bpd") is not None]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    labels = [f"{r['schedule']}\n{r['parameterization']}-{r['weighting']} s{r['seed']}" for r in ok]
    ax.bar(range(len(ok)), [r["bpd"] for r in ok], yerr=[r["bpd_se"] or 0 for r in ok], capsize=3)
    ax.set_xticks(range(len(ok)), labels, fontsize=7)
    ax.set_ylabel("test -ELBO (bits/dim)")
    return ax


def sample_montage(result_dir: str, rows: list[dict], max_cells: int = 24, panel_inches: float = 2.2):
    """A figure of every cell's sample grid (figures/samples/<cell>.png), titled by cell; None if none exist."""
    import matplotlib.pyplot as plt
    from PIL import Image

    items = [
        (r["cell"], os.path.join(result_dir, r["samples_png"]))
        for r in rows
        if r.get("samples_png") and os.path.exists(os.path.join(result_dir, r["samples_png"]))
    ][:max_cells]
    if not items:
        return None
    cols = min(6, len(items))
    nrows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(panel_inches * cols, (panel_inches + 0.2) * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (cell, path) in zip(axes.ravel(), items):
        ax.imshow(np.asarray(Image.open(path)), cmap="gray")
        ax.set_title(cell, fontsize=6 if panel_inches < 2 else 7)
    fig.tight_layout()
    return fig


def write_figures(result_dir: str, rows: list[dict], curves: dict[str, list], base_schedule: str) -> None:
    """figures/: the bpd and FD heat maps on the base schedule, the schedule bars, bpd vs steps, the sample montage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = os.path.join(result_dir, "figures")
    ok = [r for r in rows if r.get("status") == "ok" and not r.get("variant")]
    figures = []
    if any(r["schedule"] == base_schedule for r in ok):
        figures.append(("bpd_heatmap.png", lambda: plot_heatmap(rows, "bpd", base_schedule)))
        if any(r.get("fd") is not None for r in ok):
            figures.append(("fd_heatmap.png", lambda: plot_heatmap(rows, "fd", base_schedule)))
    if len({r["schedule"] for r in ok}) > 1:
        sched_rows = [
            r
            for r in ok
            if (r["parameterization"], r["weighting"])
            in {(q["parameterization"], q["weighting"]) for q in ok if q["schedule"] != base_schedule}
        ]
        figures.append(("schedules.png", lambda: plot_schedules(sched_rows)))
    figures.append(("bpd_vs_steps.png", lambda: plot_curves(curves)))
    for name, make in figures:
        ax = make()
        ax.figure.tight_layout()
        ax.figure.savefig(os.path.join(fig_dir, name), dpi=100)
        plt.close(ax.figure)
    fig = sample_montage(result_dir, rows)
    if fig is not None:
        fig.savefig(os.path.join(fig_dir, "samples_montage.png"), dpi=100)
        plt.close(fig)
