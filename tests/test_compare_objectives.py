"""experiments/compare_objectives.py and experiments/compare/: the grid, the pass-through of overrides, the report, skip-on-rerun.

The end-to-end test runs two toy2d cells for a few steps through the real CLI (which itself runs
`python -m vdm.main` per stage), then reruns the same command and checks that nothing ran again.
The new grids' end-to-end test (below) adds a variance cell and an adaptive
t_sampling cell to the same result folder (the module-scoped `base_grid` fixture), sharing the
antithetic eps-elbo cell that the first run trained.
"""

import csv
import json
import math
import os
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, load_config
from experiments.compare import figures, grid, report, runner
from vdm.infra.metrics import read_metrics


def test_param_weighting_grid_is_every_pair_once():
    cells = grid.enumerate_cells(["param_weighting"], seeds=[0], base_schedule="linear_logsnr")
    pairs = {(c.parameterization, c.weighting) for c in cells}
    assert len(cells) == 24 and len(pairs) == 24
    assert {p for p, _ in pairs} == {"eps", "x0", "score", "v"}
    assert {w for _, w in pairs} == {"elbo", "simple", "snr", "min_snr", "sigmoid", "edm"}
    assert {c.schedule for c in cells} == {"linear_logsnr"}
    assert len({c.name for c in cells}) == 24


def test_schedule_grid_shares_its_base_cell_and_seeds_multiply():
    sched = grid.enumerate_cells(["schedule"], seeds=[0], base_schedule="linear_logsnr", schedule_weighting="snr")
    assert [(c.schedule, c.weighting, c.parameterization) for c in sched] == [
        ("linear_logsnr", "snr", "eps"),
        ("cosine", "snr", "eps"),
        ("learned", "snr", "eps"),
    ]
    both = grid.enumerate_cells(["param_weighting", "schedule"], seeds=[0, 1], base_schedule="linear_logsnr")
    assert len(both) == (24 + 2) * 2  # eps-elbo-linear_logsnr is in both grids: once
    assert len({c.name for c in both}) == len(both)
    # On a cosine base config the schedule grid's cosine cell is the shared one instead.
    assert len(grid.enumerate_cells(["param_weighting", "schedule"], seeds=[0], base_schedule="cosine")) == 26


def test_cell_patterns_and_bad_choices():
    cells = grid.enumerate_cells(
        ["param_weighting"], seeds=[0, 3], base_schedule="cosine", patterns=["v-*-s3", "eps-elbo-*"]
    )
    assert sorted(c.name for c in cells) == sorted(
        [f"v-{w}-cosine-s3" for w in ("elbo", "simple", "snr", "min_snr", "sigmoid", "edm")]
        + ["eps-elbo-cosine-s0", "eps-elbo-cosine-s3"]
    )
    with pytest.raises(ValueError, match="choose one or more of param_weighting, schedule"):
        grid.enumerate_cells(["params"], seeds=[0], base_schedule="cosine")
    with pytest.raises(ValueError, match="schedule_weighting='l2'"):
        grid.enumerate_cells(["schedule"], seeds=[0], base_schedule="cosine", schedule_weighting="l2")
    with pytest.raises(ValueError, match="matches no cell"):
        grid.enumerate_cells(["schedule"], seeds=[0], base_schedule="cosine", patterns=["nothing"])
    with pytest.raises(ValueError, match="distinct"):
        grid.enumerate_cells(["schedule"], seeds=[1, 1], base_schedule="cosine")


def test_overrides_pass_through_and_grid_keys_are_refused():
    argv, passed = grid.split_overrides(
        [
            "prog",
            "--config=c.py",
            "--override=config.training.batch_size=32",
            "--override",
            "config.model.width=16",
            "--config.optimizer.b2=0.9",
        ]
    )
    assert passed == ["--config.training.batch_size=32", "--config.model.width=16", "--config.optimizer.b2=0.9"]
    assert argv == ["prog", "--config=c.py", *passed]
    with pytest.raises(ValueError, match="set per cell"):
        grid.split_overrides(["prog", "--override=config.loss.weighting=snr"])
    with pytest.raises(ValueError, match="start with 'config.'"):
        grid.split_overrides(["prog", "--override=training.batch_size=3"])


def test_stage_commands_are_the_user_cli_with_the_cell_flags():
    cell = grid.Cell("x0", "min_snr", "cosine", 2)
    opts = runner.Options(
        "/r/configs/toy2d.py:small",
        ("--config.model.width=16",),
        40,
        20,
        (10, 100),
        64,
        True,
        "/fn",
        {"dataset": "mixture2d"},
        python="py",
    )
    cmds = runner.stage_commands(cell, opts, "/res/cells/x")
    assert list(cmds) == ["train", "eval_T10", "eval_T100", "sample"]
    for argv in cmds.values():
        assert argv[:5] == ["py", "-m", "vdm.main", "--config=/r/configs/toy2d.py:small", "--workdir=/res/cells/x"]
        for flag in (
            "--config.model.width=16",
            "--config.model.parameterization=x0",
            "--config.loss.weighting=min_snr",
            "--config.model.schedule=cosine",
            "--config.seed=2",
            "--config.training.num_steps=40",
        ):
            assert flag in argv
    assert cmds["train"][-1] == "--config.eval.num_steps=0" and "--mode=eval" not in cmds["train"]
    assert cmds["eval_T100"][-2:] == ["--mode=eval", "--config.eval.num_steps=100"]
    assert cmds["sample"][-2:] == ["--mode=sample", "--config.sampling.num_samples=64"]


def _rows(specs):
    keys = ("parameterization", "weighting", "seed", "bpd", "fd")
    out = []
    for spec in specs:
        r = dict(
            zip(keys, spec),
            schedule="cosine",
            status="ok",
            steps=10,
            bpd_se=0.1,
            bpd_recon=0.5,
            bpd_prior=0.01,
            bpd_T10=None,
            bpd_T10_se=None,
            train_seconds=3.0,
        )
        r["bpd_diffusion"] = r["bpd"] - 0.51
        r["cell"] = f"{r['parameterization']}-{r['weighting']}-cosine-s{r['seed']}"
        out.append(r)
    return out


def test_report_tables_and_heatmap_average_seeds(tmp_path):
    rows = _rows([("eps", "elbo", 0, 3.0, 1.0), ("eps", "elbo", 1, 4.0, 3.0), ("v", "snr", 0, 2.5, None)])
    rows.append(
        {
            "cell": "v-elbo-cosine-s0",
            "parameterization": "v",
            "weighting": "elbo",
            "schedule": "cosine",
            "seed": 0,
            "steps": 10,
            "status": "failed",
        }
    )
    rows[0].update(fid=12.345, kid=0.0042, kid_se=0.0003)  # Inception FID / KID of an image cell
    params, weights, m = figures.heatmap_matrix(rows, "bpd")
    assert params == ["eps", "v"] and weights == ["elbo", "snr"]
    assert m[0, 0] == 3.5 and m[1, 1] == 2.5 and math.isnan(m[0, 1]) and math.isnan(m[1, 0])  # failed cell: NaN
    path = str(tmp_path / "r.csv")
    report.write_csv(path, rows, (10,))
    back = report.read_csv(path)
    assert list(back[0]) == report.columns((10,)) and len(back) == 4
    assert back[0]["bpd"] == 3.0 and back[2]["fd"] is None and back[3]["status"] == "failed"
    table = report.markdown_table(rows, (10,)).splitlines()
    assert table[0].startswith("| cell | param | weighting | schedule | seed | bpd ± se |") and "bpd T=10" in table[0]
    assert len(table) == 2 + 4 and "3.000 ± 0.100" in table[2] and "**failed**" in table[5]
    assert "| FID | KID ± se | FD |" in table[0] and "| 12.35 | 4.20 ± 0.30 e-3 | 1.0000 |" in table[2]
    assert back[0]["fid"] == 12.345 and back[0]["kid_se"] == 0.0003 and back[1]["fid"] is None


def _run(name, root, *extra):
    cmd = [
        sys.executable,
        "-m",
        "experiments.compare_objectives",
        "--config=configs/toy2d.py:small",
        f"--name={name}",
        f"--results_root={root}",
        "--steps=4",
        "--num_evals=2",
        "--cells=eps-elbo-*,v-snr-*",
        "--eval_steps=10",
        "--fd_samples=64",
        "--parallel=2",
        "--override=config.data.num_test=256",
        "--override=config.sampling.num_samples=32",
        *extra,
    ]  # training grids of 32; the FD stage's 64 wins
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def _mtimes(folder):
    out = {}
    for base, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(base, f)
            out[path] = os.stat(path).st_mtime_ns
    return out


@pytest.fixture(scope="module")
def base_grid(tmp_path_factory):
    """(results root, CompletedProcess) of the two-cell toy2d grid 'g' run once for this module."""
    root = str(tmp_path_factory.mktemp("grid"))
    return root, _run("g", root)


def test_grid_runs_through_the_cli_writes_the_report_and_skips_finished_cells(base_grid):
    root, proc = base_grid
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = os.path.join(root, "g")
    with open(os.path.join(result, "results.csv"), newline="") as f:
        header = next(csv.reader(f))
    assert header == report.columns((10,))
    rows = report.read_csv(os.path.join(result, "results.csv"))
    assert [r["cell"] for r in rows] == ["eps-elbo-linear_logsnr-s0", "v-snr-linear_logsnr-s0"]
    for r in rows:
        assert r["status"] == "ok" and r["steps"] == 4 and r["bpd_se"] > 0
        # The three terms add up to the total (each is an independent mean over the same examples).
        assert r["bpd"] == pytest.approx(r["bpd_recon"] + r["bpd_prior"] + r["bpd_diffusion"], abs=1e-6)
        assert math.isfinite(r["bpd_T10"]) and r["bpd_T10_se"] > 0
        assert r["fd"] >= 0 and r["fd_num_samples"] == 64 and r["fd_features"] == "data"
        assert os.path.exists(os.path.join(result, r["samples_png"]))
        cell_dir = os.path.join(result, "cells", r["cell"])
        with open(os.path.join(cell_dir, "config.json")) as f:  # the cell really ran its own settings
            cfg = json.load(f)
        assert (
            cfg["model"]["parameterization"],
            cfg["loss"]["weighting"],
            cfg["training"]["num_steps"],
            cfg["data"]["num_test"],
            cfg["sampling"]["num_samples"],
        ) == (r["parameterization"], r["weighting"], 4, 256, 32)
    curves = report.read_curves_csv(os.path.join(result, "curves.csv"))
    assert [s for s, _, _ in curves["eps-elbo-linear_logsnr-s0"]] == [2, 4]  # num_evals=2
    with open(os.path.join(result, "results.md")) as f:
        md = f.read()
    assert "| eps-elbo-linear_logsnr-s0 | eps | elbo |" in md and "not Inception FID" in md
    for fig in ("bpd_heatmap.png", "fd_heatmap.png", "bpd_vs_steps.png", "samples_montage.png"):
        assert os.path.getsize(os.path.join(result, "figures", fig)) > 1000

    cells_before = _mtimes(os.path.join(result, "cells"))
    again = _run("g", root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done already: skipped") == 2
    assert _mtimes(os.path.join(result, "cells")) == cells_before  # no file in any cell was touched
    assert report.read_csv(os.path.join(result, "results.csv")) == rows

    # The same cell asked with other training settings is refused, not silently reused.
    done = json.load(open(os.path.join(result, "cells", rows[0]["cell"], "DONE.json")))
    train_argv = done["spec"]["commands"]["train"]
    opts = runner.Options(
        train_argv[2].split("=", 1)[1],
        ("--config.data.num_test=128",),
        4,
        2,
        (10,),
        64,
        True,
        runner.DEFAULT_FEATURE_NET_DIR,
        {"dataset": "mixture2d", "num_test": 128},
    )
    with pytest.raises(runner.CellError, match="trained with other settings"):
        runner.run_cell(
            grid.Cell("eps", "elbo", "linear_logsnr", 0),
            opts,
            os.path.join(result, "cells", rows[0]["cell"]),
            log=lambda s: None,
        )

    _check_report_only_rebuilds_copied_cells(root, result, rows)


def _check_report_only_rebuilds_copied_cells(root, result, rows):
    """--report_only on cell folders copied back without checkpoints, one of them stopped before its FD:
    the report is rebuilt from what is there, nothing runs, the missing stage is named."""
    import shutil

    copy = os.path.join(root, "copied")
    shutil.copytree(result, copy, ignore=shutil.ignore_patterns("checkpoints", "results.*", "DONE.json"))
    stages_path = os.path.join(copy, "cells", rows[1]["cell"], "stages.json")
    stages = json.load(open(stages_path))
    del stages["fd"], stages["sample"]
    json.dump(stages, open(stages_path, "w"))
    os.remove(os.path.join(copy, "cells", rows[1]["cell"], "fd.json"))
    cells_before = _mtimes(os.path.join(copy, "cells"))
    proc = _run("copied", root, "--report_only")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "from 2 of 2 cells" in proc.stdout and _mtimes(os.path.join(copy, "cells")) == cells_before
    rebuilt = report.read_csv(os.path.join(copy, "results.csv"))
    skip = {"measure_seconds", "samples_png", "notes", "fd", "fd_features", "fd_num_samples"}
    for new_row, old_row in zip(rebuilt, rows):
        assert {k: v for k, v in new_row.items() if k not in skip} == {
            k: v for k, v in old_row.items() if k not in skip
        }
    assert rebuilt[0]["fd"] == rows[0]["fd"] and not rebuilt[0]["notes"]
    assert rebuilt[1]["fd"] is None and rebuilt[1]["notes"] == "not run: fd"


def test_gpu_slots_set_the_device_and_split_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert runner.detect_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runner.detect_gpus() == []
    probe = [
        sys.executable,
        "-c",
        "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION'))",
    ]
    log = str(tmp_path / "logs" / "probe.log")
    runner.run_stage(probe, log, "5", share=2)
    assert open(log).read().splitlines()[-1] == "5 0.450"
    runner.run_stage(probe, log, "5", share=1)
    assert open(log).read().splitlines()[-1] == "5 None"
    with pytest.raises(runner.CellError, match="exit 3"):
        runner.run_stage([sys.executable, "-c", "raise SystemExit(3)"], log, None)


def test_eval_interval_spaces_at_most_num_evals_in_whole_calls():
    assert grid.eval_interval(4, 2, 1) == 2
    assert grid.eval_interval(100, 5, 1) == 20 and grid.eval_interval(100, 1, 1) == 100
    assert grid.eval_interval(100, 3, 4) == 36  # ceil(100 / 12) * 4: 3 evals at most, multiples of 4
    assert grid.eval_interval(8, 100, 2) == 2  # never below one call
    with pytest.raises(ValueError, match="multiple of config.training.steps_per_call=4"):
        grid.eval_interval(10, 2, 4)


def _compare(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m experiments.compare_objectives ARGS` from the repo root (text output)."""
    cmd = [sys.executable, "-m", "experiments.compare_objectives", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_dry_run_as_a_module_prints_every_stage_of_an_image_grid(tmp_path):
    proc = _compare(
        [
            "--config=configs/fashion_mnist.py",
            "--name=dry",
            f"--results_root={tmp_path}",
            "--cells=v-elbo-*",
            "--steps=10",
            "--eval_steps=10",
            "--dry_run",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"# 1 cells -> {tmp_path}/dry/cells/<cell>")
    stages = [line.split("]", 1)[1].split(":", 1)[0].strip() for line in lines[1:]]
    assert stages == ["train", "eval_T10", "sample", "fd", "inception"]
    assert "--config.model.parameterization=v" in lines[1] and "--config.training.num_steps=10" in lines[1]
    assert os.path.join(REPO_ROOT, "experiments", "feature_net.py") + " --mode=fd" in lines[4]
    assert (
        " -m vdm.tools.fid " in lines[5] and "fashion_mnist:test --num_b=10000 --json=" in lines[5]
    )  # Inception FID/KID
    assert not os.path.exists(tmp_path / "dry")  # nothing ran


def test_run_grid_gives_each_gpu_its_share_and_keeps_cell_order(monkeypatch):
    seen = []

    def fake_run_cell(cell, opts, cell_dir, *, slot, log):
        seen.append((cell.seed, slot))
        if cell.seed == 1:
            raise runner.CellError("boom")
        return {"cell": cell.name, "status": "ok"}

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    cells = [grid.Cell("eps", "elbo", "cosine", s) for s in range(5)]
    opts = runner.Options("c.py", (), 4, 2, (), 0, True, "/fn", {})
    progress = []
    rows = runner.run_grid(
        cells,
        opts,
        "/res",
        parallel=3,
        devices=["0", "1"],
        hardware="hw",
        log=lambda s: None,
        on_progress=progress.append,
    )
    assert [r["cell"] for r in rows] == [c.name for c in cells]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "ok", "ok"]
    # Three slots on two GPUs: GPU 0 holds two processes (memory split in two), GPU 1 one.
    assert {(slot.device, slot.share, slot.hardware) for _, slot in seen} <= {("0", 2, "hw"), ("1", 1, "hw")}
    assert len(seen) == 5 and [len(p) for p in progress] == [1, 2, 3, 4, 5]


def test_image_cells_get_inception_fid_and_kid_once(tmp_path, monkeypatch):
    """The fd stage of an image cell also runs `python -m vdm.tools.fid` (recorded, not rerun); its JSON fills fid/kid."""
    ran = []

    def fake_run_stage(argv, log_path, device, share=1):
        ran.append(argv)
        out = next(a.split("=", 1)[1] for a in argv if a.startswith(("--out=", "--json=")))
        json.dump(
            {"fd": 1.5, "num_samples": 8} if "--mode=fd" in argv else {"fid": 42.0, "kid": 0.01, "kid_se": 0.001},
            open(out, "w"),
        )
        return 0.0

    monkeypatch.setattr(runner, "run_stage", fake_run_stage)
    opts = runner.Options(
        "c.py", (), 10, 5, (), 8, False, str(tmp_path / "fnet"), {"dataset": "fashion_mnist"}, inception_reference=500
    )
    stages = {"sample": {"npz": str(tmp_path / "s.npz")}}
    runner._fd_stage(opts, str(tmp_path), stages, runner.Slot())
    runner._fd_stage(opts, str(tmp_path), stages, runner.Slot())  # done already: nothing reruns
    assert len(ran) == 2 and ran[1][1:5] == ["-m", "vdm.tools.fid", str(tmp_path / "s.npz"), "fashion_mnist:test"]
    assert "--num_b=500" in ran[1] and stages["inception"]["key"]["reference"] == 500
    inc = runner.read_json(str(tmp_path / "inception.json"))
    assert inc["fid"] == 42.0


# --- the variance and t_sampling grids ---------------------------------------------------------------------


def test_variance_and_t_sampling_grids_enumerate_named_cells_shared_once():
    cells = grid.enumerate_cells(
        ["variance", "t_sampling"], seeds=[0], base_schedule="linear_logsnr", base_parameterization="v"
    )
    assert [c.name for c in cells] == [
        "v-hybrid-cosine-learnedvar-s0",
        "v-simple-cosine-fixedvar-s0",
        "v-elbo-linear_logsnr-s0",
        "v-elbo-linear_logsnr-adaptive-s0",
        "v-sigmoid-linear_logsnr-s0",
        "v-sigmoid-linear_logsnr-adaptive-s0",
        "v-edm-linear_logsnr-s0",
        "v-edm-linear_logsnr-adaptive-s0",
    ]
    assert [c.variances for c in cells[:3]] == [("learned", "small", "large"), ("small", "large"), ()]
    # The antithetic cells are the param_weighting grid's own (the config's t_sampling): they run once.
    both = grid.enumerate_cells(["param_weighting", "t_sampling"], seeds=[0, 1], base_schedule="cosine")
    assert len(both) == (24 + 3) * 2 and len({c.name for c in both}) == len(both)
    # A config whose t_sampling is another: both t_sampling cells are named, none is the unnamed cell.
    uni = grid.enumerate_cells(
        ["t_sampling"], seeds=[0], base_schedule="cosine", base_t_sampling="uniform", patterns=["eps-elbo-*"]
    )
    assert [c.name for c in uni] == ["eps-elbo-cosine-antithetic-s0", "eps-elbo-cosine-adaptive-s0"]
    assert uni[0].overrides()[-1] == "--config.loss.t_sampling=antithetic"


def test_new_grid_cells_make_exact_commands():
    hybrid, adaptive = (
        grid.Cell("eps", "hybrid", "cosine", 1, "learnedvar"),
        grid.Cell("eps", "edm", "cosine", 0, "adaptive"),
    )
    opts = runner.Options(
        "/c.py", ("--config.model.width=16",), 40, 20, (10,), 64, True, "/fn", {}, python="py", ancestral_steps=(25,)
    )
    base = [
        "py",
        "-m",
        "vdm.main",
        "--config=/c.py",
        "--workdir=/w",
        "--config.model.width=16",
        "--config.model.parameterization=eps",
        "--config.loss.weighting=simple",
        "--config.model.schedule=cosine",
        "--config.seed=1",
        "--config.model.variance_head=interp",
        "--config.loss.objective=hybrid",
        "--config.loss.num_steps=1000",
        "--config.sampling.variance=learned",
        "--config.training.num_steps=40",
        "--config.training.eval_every=20",
        "--config.eval.t_sampling=uniform",
    ]
    cmds = runner.stage_commands(hybrid, opts, "/w")
    assert list(cmds) == [
        "train",
        "eval_T10_learned",
        "eval_T10_small",
        "eval_T10_large",
        "sample_ancestral25_learned",
        "sample_ancestral25_small",
        "sample_ancestral25_large",
    ]
    assert cmds["train"] == base + ["--config.eval.num_steps=0"]
    assert cmds["eval_T10_large"] == base + [
        "--mode=eval",
        "--config.eval.num_steps=10",
        "--config.eval.variance=large",
    ]
    assert cmds["sample_ancestral25_small"] == base + [
        "--config.eval.num_steps=0",
        "--mode=sample",
        "--config.sampling.num_samples=64",
        "--config.sampling.method=ancestral",
        "--config.sampling.num_steps=25",
        "--config.sampling.variance=small",
    ]
    simple = runner.stage_commands(grid.Cell("eps", "simple", "cosine", 1, "fixedvar"), opts, "/w")
    assert [k for k in simple if k != "train"] == [
        "eval_T10_small",
        "eval_T10_large",
        "sample_ancestral25_small",
        "sample_ancestral25_large",
    ]
    assert "--config.model.variance_head=none" in simple["train"] and "--config.loss.num_steps=0" in simple["train"]
    cmds = runner.stage_commands(adaptive, opts, "/w")
    assert list(cmds) == ["train", "eval_T10", "sample"]
    assert cmds["train"][6:11] == [
        "--config.model.parameterization=eps",
        "--config.loss.weighting=edm",
        "--config.model.schedule=cosine",
        "--config.seed=0",
        "--config.loss.t_sampling=adaptive",
    ]


def test_every_new_cell_and_stage_config_validates_and_a_bad_one_is_refused():
    from vdm.config import validation

    for base in (load_config("fashion_mnist", ""), load_config("toy2d", "small")):
        cells = grid.enumerate_cells(
            list(grid.GRIDS),
            seeds=[0],
            base_schedule=base.model.schedule,
            base_parameterization=base.model.parameterization,
        )
        grid.validate_cells(base, cells, steps=20, eval_every=10, eval_steps=(10, 100, 1000), ancestral_steps=(25, 50))
    base = load_config("toy2d", "small")
    with base.unlocked():
        base.model.schedule = "learned"  # adaptive t needs a fixed schedule
    with pytest.raises(validation.ConfigError, match="adaptive"):
        grid.validate_cells(base, [grid.Cell("eps", "elbo", "learned", 0, "adaptive")], steps=4, eval_every=2)


def test_dry_run_prints_every_stage_of_the_new_grids(tmp_path):
    proc = _compare(
        [
            "--config=configs/toy2d.py:small",
            "--name=dry",
            f"--results_root={tmp_path}",
            "--grid=variance,t_sampling",
            "--steps=4",
            "--cells=*-fixedvar-*,eps-edm-*",
            "--eval_steps=5,7",
            "--ancestral_steps=3",
            "--fd_samples=16",
            "--dry_run",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"# 3 cells -> {tmp_path}/dry/cells/<cell>")
    cells = grid.enumerate_cells(
        ["variance", "t_sampling"], seeds=[0], base_schedule="linear_logsnr", patterns=["*-fixedvar-*", "eps-edm-*"]
    )
    opts = runner.Options(
        os.path.join(REPO_ROOT, "configs", "toy2d.py") + ":small",
        (),
        4,
        1,
        (5, 7),
        16,
        True,
        "",
        {},
        ancestral_steps=(3,),
    )
    expected = []
    for cell in cells:
        cell_dir = f"{tmp_path}/dry/cells/{cell.name}"
        cmds = runner.stage_commands(cell, opts, cell_dir)
        expected += [f"[{cell.name}] {stage}: {shlex.join(argv)}" for stage, argv in cmds.items()]
        expected += [line for line in lines if line.startswith(f"[{cell.name}] fd")]
    assert lines[1:] == expected
    fixed = [line for line in lines if line.startswith("[eps-simple-cosine-fixedvar-s0]")]
    assert [line.split("]", 1)[1].split(":", 1)[0].strip() for line in fixed] == [
        "train",
        "eval_T5_small",
        "eval_T5_large",
        "eval_T7_small",
        "eval_T7_large",
        "sample_ancestral3_small",
        "sample_ancestral3_large",
        "fd_ancestral3_small",
        "fd_ancestral3_large",
    ]
    assert [c.name for c in cells] == [
        "eps-simple-cosine-fixedvar-s0",
        "eps-edm-linear_logsnr-s0",
        "eps-edm-linear_logsnr-adaptive-s0",
    ]
    assert not os.path.exists(tmp_path / "dry")


def test_report_tolerates_histogram_rows_and_orders_variance_tables(tmp_path):
    from experiments.compare import stages, tables

    records = [
        {"step": 1, "train/diffusion_var": 4.0},
        {"step": 2, "train/t_histogram/edges": [0.0, 1.0], "train/t_histogram/probs": [1.0]},
        {"step": 3, "train/diffusion_var": 2.0},
        {"step": 4, "train/diffusion_var": None},
        {"step": 4, "eval/bpd": 5.0, "train/t_histogram/probs": [0.5, 0.5]},
        {"step": 4, "mode": "eval", "train/diffusion_var": 100.0},
    ]
    assert stages.train_variance(records, 4) == {"train_diffusion_var_2nd_half": 2.0, "train_diffusion_var_all": 3.0}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert report.read_curves(str(tmp_path)) == [(4, 5.0, None)]
    row = {
        "cell": "c",
        "seed": 0,
        "status": "ok",
        "bpd_T5_small": 1.0,
        "bpd_T5_small_se": 0.1,
        "bpd_T5_learned": 0.9,
        "bpd_T5_learned_se": 0.2,
        "bpd_T5": 0.9,
        "fd_ancestral3_small": 2.0,
        "fid_ancestral3_small": None,
    }
    vrows = tables.variance_rows([dict(sorted(row.items()))])
    assert [(r["kind"], r["variance"], r.get("bpd")) for r in vrows] == [
        ("elbo", "learned", 0.9),
        ("elbo", "small", 1.0),
        ("sample", "small", None),
    ]
    assert "| c | learned | 0.900 ± 0.200 |" in tables.variance_markdown(vrows)
    assert report.eval_steps_of(["bpd_T5", "bpd_T5_se", "bpd_T5_small", "bpd_T5_small_se"]) == [5]
    rows = _rows([("eps", "elbo", 0, 3.0, 1.0), ("eps", "elbo", 0, 9.0, 1.0)])
    rows[1]["variant"] = "adaptive"  # not averaged into the eps-elbo square
    assert figures.heatmap_matrix(rows, "bpd")[2][0, 0] == 3.0


@pytest.mark.slow  # two more cells through the CLI (~30 s); the commands and configs are checked above
def test_new_grids_run_end_to_end_with_finite_new_columns(base_grid):
    """One fixedvar (variance) cell and the adaptive eps-elbo cell beside the antithetic one base_grid trained."""
    root, first = base_grid
    assert first.returncode == 0, first.stderr[-3000:]
    proc = _run("g", root, "--grid=variance,t_sampling", "--cells=*-fixedvar-*,eps-elbo-*", "--ancestral_steps=5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done already: skipped") == 1  # eps-elbo-linear_logsnr-s0, shared
    result = os.path.join(root, "g")
    res = report.load_results(result)
    rows = {r["cell"]: r for r in res["rows"]}
    assert list(rows) == [
        "eps-simple-cosine-fixedvar-s0",
        "eps-elbo-linear_logsnr-s0",
        "eps-elbo-linear_logsnr-adaptive-s0",
    ]
    for r in rows.values():
        assert r["status"] == "ok" and not r["notes"], r
        assert math.isfinite(r["bpd"]) and math.isfinite(r["bpd_T10"])
        assert r["train_diffusion_var_2nd_half"] > 0 and r["train_diffusion_var_all"] > 0
        assert [s for s, _, _ in res["curves"][r["cell"]]] == [2, 4]
    assert (
        rows["eps-simple-cosine-fixedvar-s0"]["variant"] == "fixedvar" and rows["eps-elbo-linear_logsnr-s0"]["fd"] >= 0
    )
    v = res["variance_rows"]
    assert [(r["kind"], r["steps"], r["variance"]) for r in v] == [
        ("elbo", 10, "small"),
        ("elbo", 10, "large"),
        ("sample", 5, "small"),
        ("sample", 5, "large"),
    ]
    assert all(math.isfinite(r["bpd"]) and r["bpd_se"] > 0 for r in v[:2]) and all(r["fd"] >= 0 for r in v[2:])
    assert v[0]["bpd"] == rows["eps-simple-cosine-fixedvar-s0"]["bpd_T10"]  # the default variance: small
    adaptive_dir = os.path.join(result, "cells", "eps-elbo-linear_logsnr-adaptive-s0")
    cfg = json.load(open(os.path.join(adaptive_dir, "config.json")))
    assert cfg["loss"]["t_sampling"] == "adaptive"
    assert any(isinstance(rec.get("train/t_histogram/probs"), list) for rec in read_metrics(adaptive_dir))
    md = open(os.path.join(result, "results.md")).read()
    for text in (
        "Var(diffusion) 2nd half",
        "## Reverse variance",
        "| eps-simple-cosine-fixedvar-s0 | large |",
        "## Test bpd at equal training steps",
    ):
        assert text in md


def test_flow_grid_cells_and_their_dry_run(tmp_path):
    """The flow grid (issue 25): rectified flow, the same objective read as eps, SD3's logit-normal t, and the two
    Kingma & Gao weightings on the config's schedule; the param_weighting grid keeps its 24 cells."""
    cells = grid.enumerate_cells(["flow"], seeds=[0], base_schedule="linear_logsnr")
    assert [c.name for c in cells] == [
        "flow-flow-ot-rf-s0",
        "eps-flow-ot-s0",
        "flow-flow-ot-sd3-s0",
        "eps-eps_cosine-linear_logsnr-s0",
        "eps-v_cosine-linear_logsnr-s0",
    ]
    assert cells[0].overrides()[-1] == "--config.model.input_scaling=ot"
    assert cells[2].overrides()[-2:] == ["--config.model.input_scaling=ot", "--config.loss.t_sampling=logit_normal"]
    assert len(grid.enumerate_cells(["param_weighting", "flow"], seeds=[0], base_schedule="linear_logsnr")) == 29
    proc = _compare(
        ["--config=configs/toy2d.py:small", "--name=dry", f"--results_root={tmp_path}", "--grid=flow"]
        + ["--steps=4", "--fd_samples=16", "--dry_run"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"# 5 cells -> {tmp_path}/dry/cells/<cell>")
    train = [line for line in lines if line.startswith("[flow-flow-ot-sd3-s0] train:")]
    assert len(train) == 1 and "--config.loss.t_sampling=logit_normal" in train[0]
    assert not os.path.exists(tmp_path / "dry")
