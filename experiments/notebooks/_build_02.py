"""Build experiments/notebooks/02_compare_objectives.ipynb from the cells below (the reviewable source).

    .venv/bin/python experiments/notebooks/_build_02.py            # write the notebook, no outputs
    .venv/bin/python experiments/notebooks/_build_02.py --execute  # ... executed, outputs stored

Edit the cells here, not in the .ipynb, and rebuild.
"""

import pathlib

import _cells_02_adaptive
import _nbbuild

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "02_compare_objectives.ipynb"

CELLS = [
    (
        "md",
        r"""
# 02 — Comparing objectives and parameterisations

`experiments/compare_objectives.py` trains one model per cell of a grid — parameterisation ($\epsilon$, $x_0$, score,
$v$) $\times$ training weighting (ELBO, $L_\text{simple}$, SNR, min-SNR, sigmoid, EDM), and a schedule grid
(linear log-SNR, cosine, learned) — each with `python -m vdm.main`, equal steps and seeds. Whatever a cell was
trained on, it is evaluated on one scale: the **true ELBO in bits/dim** on the test split (continuous time, with its
standard error and its three terms), the same ELBO at a few discrete $T$, and a sample-quality number, the squared
**Fréchet distance** between Gaussians fitted to features of samples and of test data — features of the project's
own Fashion-MNIST classifier for images, the raw coordinates for 2-D toy data. That is *not* Inception FID.

This notebook reads a result folder and plots it:

* `VDM_RESULTS_DIR` — a folder written by `compare_objectives.py --name=...` (its `results.csv`, `curves.csv`,
  `header.json`, `figures/samples/`). Default: the committed `experiments/results/fashion_mnist_h100`, the
  26-cell Fashion-MNIST grid of `experiments/RESULTS.md` (default model, 1500 steps, one H100); the 2-D toy grid
  is `experiments/results/toy2d_grid`.
* `VDM_NB_TINY=1` (the test) — instead builds a tiny folder itself: two toy2d cells, 8 steps, through the real CLI.

The *Checks* cell `assert`s properties of what is shown. The last section, on VDM++'s adaptive noise schedule and an
importance-sampled ELBO, works on Gaussian data in closed form and on one adaptive training run's logged histogram,
with its own `assert`s.
""",
    ),
    (
        "code",
        r"""
import os
import pathlib
import subprocess
import sys
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

REPO = pathlib.Path.cwd().resolve().parents[1]      # the notebook runs in experiments/notebooks/
from experiments.compare import report as compare_report   # experiments/compare/report.py
from experiments.compare import figures as compare_figures # experiments/compare/figures.py

TINY = os.environ.get("VDM_NB_TINY", "0") == "1"
plt.rcParams["figure.dpi"] = 60                     # keeps the stored notebook small
if os.environ.get("VDM_RESULTS_DIR"):
    RESULTS_DIR = pathlib.Path(os.environ["VDM_RESULTS_DIR"])
elif TINY:
    root = tempfile.mkdtemp(prefix="vdm_nb02_")
    cmd = [sys.executable, "-m", "experiments.compare_objectives", "--config=configs/toy2d.py:small",
           "--name=tiny", f"--results_root={root}", "--steps=8", "--num_evals=2", "--cells=eps-elbo-*,v-elbo-*",
           "--eval_steps=10", "--fd_samples=128", "--parallel=2", "--override=config.data.num_test=256"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    RESULTS_DIR = pathlib.Path(root) / "tiny"
else:
    RESULTS_DIR = REPO / "experiments" / "results" / "fashion_mnist_h100"
res = compare_report.load_results(str(RESULTS_DIR))
rows, curves, header, eval_steps = res["rows"], res["curves"], res["header"], res["eval_steps"]
ok = [r for r in rows if r["status"] == "ok"]
print(f"{RESULTS_DIR}: {len(rows)} cells ({len(ok)} ok), {header['steps']} steps, config {header['config']}, "
      f"{header['hardware']}")
""",
    ),
    (
        "code",
        r"""
display(Markdown((RESULTS_DIR / "results.md").read_text()))
""",
    ),
    (
        "md",
        r"""
## Heat maps: test bits/dim and Fréchet distance (mean over seeds)

Rows: how the network output is read; columns: the weighting $w(\lambda)$ of the training loss. Lower is better
in both. The ELBO weighting optimises the reported bound directly; the others optimise a reweighted bound
(Kingma & Gao 2023) and may trade bits/dim for sample quality. Cells of one seed are evaluated on the same test
examples with the same $t$ and $\epsilon$ draws, so differences between cells are paired and less noisy than each
cell's standard error suggests; short runs still differ by little, so read small gaps with care.
""",
    ),
    (
        "code",
        r"""
base = max({r["schedule"] for r in ok}, key=lambda s: sum(r["schedule"] == s for r in ok))   # the grid's schedule
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
compare_figures.plot_heatmap(rows, "bpd", base, ax=axes[0])
if any(r["fd"] is not None for r in ok):
    compare_figures.plot_heatmap(rows, "fd", base, ax=axes[1])
else:
    axes[1].axis("off")
plt.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        r"""
## Test bits/dim during training, and the discrete-time ELBO

Left: the true ELBO on the test split at each evaluation (from every cell's `metrics.jsonl`, via `curves.csv`).
Right: the same final model evaluated with $T$ discrete steps; the dashed level is $T \to \infty$.
With few steps the bound is much looser (VDM, Kingma et al. 2021, sec. 4.1).
""",
    ),
    (
        "code",
        r"""
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
compare_figures.plot_curves(curves, ax=axes[0])
for r in ok:
    ts = [t for t in eval_steps if r.get(f"bpd_T{t}") is not None]
    line, = axes[1].semilogx(ts, [r[f"bpd_T{t}"] for t in ts], marker="o", label=r["cell"])
    axes[1].axhline(r["bpd"], color=line.get_color(), ls="--", lw=0.8)
axes[1].set(xlabel="discrete steps T", ylabel="test -ELBO (bits/dim)")
plt.tight_layout()
plt.show()
""",
    ),
    (
        "code",
        r"""
schedules_run = {r["schedule"] for r in ok}
if len(schedules_run) > 1:
    pairs = {(r["parameterization"], r["weighting"]) for r in ok if r["schedule"] != base}
    compare_figures.plot_schedules([r for r in ok if (r["parameterization"], r["weighting"]) in pairs])
    plt.title("schedule grid")
    plt.tight_layout()
    plt.show()
else:
    print(f"one schedule only ({base}): no schedule grid in this folder")
""",
    ),
    (
        "md",
        r"""
## Samples: each cell's last sample grid from training
""",
    ),
    (
        "code",
        r"""
fig = compare_figures.sample_montage(str(RESULTS_DIR), ok, panel_inches=1.5)
if fig is not None:
    plt.show()
""",
    ),
    (
        "md",
        r"""
## Checks

* every cell finished, and its reported total is the sum of its three terms (reconstruction + prior + diffusion);
* every standard error is positive and every Fréchet distance non-negative;
* the last point of each training curve is the cell's reported final bits/dim (two files, one measurement);
* for every cell, the coarsest discrete-time ELBO is looser than the continuous one;
* a value is missing only where the run reported it non-finite or never ran that stage, and the cell's notes name
  it (printed below).
""",
    ),
    (
        "code",
        r"""
assert rows and len(ok) == len(rows), [r["cell"] for r in rows if r["status"] != "ok"]
for r in ok:
    assert abs(r["bpd"] - (r["bpd_recon"] + r["bpd_prior"] + r["bpd_diffusion"])) < 1e-6 * max(1, abs(r["bpd"])), r
    assert r["bpd_se"] > 0, r
    assert r["fd"] is None or r["fd"] >= 0, r
    assert curves[r["cell"]][-1][0] == r["steps"] and abs(curves[r["cell"]][-1][1] - r["bpd"]) < 1e-9, r["cell"]
    # A value is missing only where the run reported it non-finite or never ran it; the notes say which.
    for key in [f"bpd_T{t}" for t in eval_steps] + (["fd"] if header["fd_samples"] else []):
        assert r[key] is not None or key in (r["notes"] or ""), (r["cell"], key)
    coarse = r[f"bpd_T{min(eval_steps)}"] if eval_steps else None
    if coarse is not None:
        assert coarse > r["bpd"], (r["cell"], coarse, r["bpd"])
for r in ok:
    if r["notes"]:
        print(f"note: {r['cell']}: {r['notes']}")
best = min(ok, key=lambda r: r["bpd"])
print(f"{len(ok)} cells checked; lowest test bpd: {best['cell']} ({best['bpd']:.3f} ± {best['bpd_se']:.3f})")
""",
    ),
]
CELLS += _cells_02_adaptive.CELLS  # the section on the adaptive noise schedule and the importance-sampled ELBO


if __name__ == "__main__":
    _nbbuild.main(CELLS, OUT, __doc__.splitlines()[0], timeout=1800)
