"""Compare parameterisations, training weightings and schedules: one `python -m vdm.main` run per grid cell.

    python -m experiments.compare_objectives --config=configs/fashion_mnist.py --name=fm_grid \
        --steps=20000 [--seeds=0,1] [--grid=param_weighting,schedule,variance,t_sampling] \
        [--schedule_weighting=elbo] [--ancestral_steps=25,50,100] [--cells='eps-*,v-elbo-*'] [--parallel=K] \
        [--override=config.training.batch_size=64] [--dry_run] [--report_only]
(from the repository root; `python experiments/compare_objectives.py ...` in the venv `make` builds.)

Grids (equal steps and seeds in every cell):
  param_weighting  parameterization {eps, x0, score, v} x weighting {elbo, simple, snr, min_snr,
                   sigmoid, edm}, on the config's schedule;
  schedule         schedule {linear_logsnr, cosine, learned} for one weighting and parameterisation;
  variance         improved DDPM's comparison, two cells on the cosine schedule (the config's gamma_max) and the
                   config's parameterisation: <p>-hybrid-cosine-learnedvar (a learned reverse variance,
                   model.variance_head=interp, trained by L_hybrid: loss.objective=hybrid, weighting simple,
                   loss.num_steps=1000, sampling.variance=learned: the keys of configs/fashion_mnist.py:hybrid;
                   its eval.num_steps=1000 is replaced by the stages' own) and <p>-simple-cosine-fixedvar (fixed
                   variance: variance_head none, objective weighted, weighting simple, loss.num_steps 0);
  t_sampling       weighting {elbo, sigmoid, edm} x loss.t_sampling {antithetic, adaptive} on the config's
                   schedule and parameterisation;
  flow             flow matching (issue 25): flow-flow-ot-rf (rectified flow: velocity net on z_OT,
                   model.input_scaling=ot), eps-flow-ot (the same objective read as eps), flow-flow-ot-sd3
                   (SD3's logit-normal t), and weightings eps_cosine, v_cosine (Kingma & Gao's Table 1 rows)
                   on the config's schedule and parameterisation; the ot cells use the config's gamma range.
A cell is named <parameterization>-<weighting>-<schedule>[-<variant>]-s<seed> and lives in
RESULTS/NAME/cells/<cell>. Without a variant the cell takes every other key from the config (its
loss.t_sampling included: antithetic by default); the variant names what else it sets: learnedvar,
fixedvar (the variance grid; 'hybrid' sits in the weighting slot of the L_hybrid cell, whose mean part
is weighted 'simple'), rf, sd3 (the flow grid), or a loss.t_sampling other than the config's (adaptive,
antithetic, uniform).
So on the default config the t_sampling grid's antithetic cells are the param_weighting grid's
<p>-elbo/sigmoid/edm-<schedule>-s<seed>, and the adaptive ones <p>-<w>-<schedule>-adaptive-s<seed>.
Cells shared by several grids run once.

Every cell runs the commands a user runs (each printed with --dry_run):
  train   python -m vdm.main --config=C --workdir=CELL [--config.K=V overrides] \
              --config.model.parameterization=P --config.loss.weighting=W --config.model.schedule=S \
              --config.seed=SEED --config.training.num_steps=N --config.training.eval_every=E \
              --config.eval.num_steps=0
  eval T  the same with --mode=eval --config.eval.num_steps=T, for each T in --eval_steps; a variance
          cell once per reverse variance it has (learnedvar: learned, small, large; fixedvar: small,
          large), adding --config.eval.variance=V (stage eval_T<T>_<V>);
  sample  the same with --mode=sample --config.sampling.num_samples=--fd_samples; a variance cell instead
          once per S in --ancestral_steps and variance V, adding --config.sampling.method=ancestral
          --config.sampling.num_steps=S --config.sampling.variance=V (stage sample_ancestral<S>_<V>;
          its fd and inception stages below write fd_ancestral<S>_<V>.json, inception_...json);
  fd      images: python experiments/feature_net.py --mode=fd (Fréchet distance of classifier
          features, NOT Inception FID; see vdm/evaluation/feature_metrics.py); flat toy data: Fréchet distance
          of the raw coordinates, computed here.
  inception  images: python -m vdm.tools.fid SAMPLES NAME:test --num_b=R --json=CELL/inception.json: Inception
          FID and KID (the literature's metric; vdm/evaluation/fid.py) against the first R = --inception_reference
          test images, whose statistics are computed once and cached beside the data set.
The reported ELBO is always the true continuous-time ELBO in bits/dim (whatever the training
weighting), with its standard error and its three terms; eval T adds the T-step discrete ELBO (a
variance cell's bpd T=k column: its default variance, learned or small). Every cell also reports the
training loss's variance: train/diffusion_var averaged over the logged steps of the second half of
training and over all; results.md adds the variance grid's tables (bpd per T and variance, sample
quality per sampler steps and variance; also variance.csv) and test bpd at equal training steps.

Cells run in parallel, one process per GPU (CUDA_VISIBLE_DEVICES), or one at a time on a CPU
host unless --parallel=K. A finished stage is recorded in CELL/stages.json and not rerun; a
finished cell has CELL/DONE.json, so rerunning the same command skips it and only rewrites the
report: RESULTS/NAME/{results.csv, results.md, curves.csv, figures/}.

This file is the CLI only; the grid, the runner and the report are experiments/compare/.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from experiments.compare import cell_rows, grid, report, runner


def _options(F: flags.FlagValues, passed_overrides: list[str]) -> tuple[list[grid.Cell], runner.Options]:
    """(cells, options) of the flags; every cell's config is validated before anything runs."""
    from vdm.data.toy_sets import TOY_DATASETS

    base = F.config
    steps = F.steps or base.training.num_steps
    eval_every = grid.eval_interval(steps, F.num_evals, base.training.steps_per_call)
    cells = grid.enumerate_cells(
        F.grid,
        seeds=[int(s) for s in F.seeds],
        base_schedule=base.model.schedule,
        schedule_weighting=F.schedule_weighting,
        schedule_parameterization=F.schedule_parameterization,
        patterns=F.cells,
        base_parameterization=base.model.parameterization,
        base_t_sampling=base.loss.t_sampling,
    )
    eval_steps = tuple(int(t) for t in F.eval_steps)
    if any(t < 1 for t in eval_steps):
        raise ValueError(
            f"--eval_steps={F.eval_steps}: discrete T must be >= 1 (the continuous ELBO is always reported)."
        )
    ancestral_steps = tuple(int(s) for s in F.ancestral_steps)
    if any(s < 1 for s in ancestral_steps):
        raise ValueError(f"--ancestral_steps={F.ancestral_steps}: sampler steps must be >= 1.")
    grid.validate_cells(
        base,
        cells,
        steps=steps,
        eval_every=eval_every,
        eval_steps=eval_steps,
        ancestral_steps=ancestral_steps if F.fd_samples > 0 else (),
    )
    opts = runner.Options(
        grid.absolute_config_arg(F["config"].config_filename),
        tuple(passed_overrides),
        steps,
        eval_every,
        eval_steps,
        F.fd_samples,
        base.data.dataset in TOY_DATASETS,
        os.path.abspath(F.feature_net_dir),
        json.loads(base.data.to_json()),
        F.inception_reference,
        ancestral_steps=ancestral_steps,
    )
    return cells, opts


def _dry_run(cells: list[grid.Cell], opts: runner.Options, result_dir: str, parallel: int, gpus: list[str]) -> None:
    """Print every command of every cell; run nothing."""
    print(f"# {len(cells)} cells -> {result_dir}/cells/<cell>; parallel={parallel}, GPUs={gpus or 'none'}")
    for cell in cells:
        cell_dir = os.path.join(result_dir, "cells", cell.name)
        cmds = runner.stage_commands(cell, opts, cell_dir)
        for stage, cmd in cmds.items():
            print(f"[{cell.name}] {stage}: {shlex.join(cmd)}")
        for x in map(runner.quality_suffix, runner.sample_stages(cmds)):
            npz = f"{cell_dir}/samples/<sample{x}>.npz"
            if opts.flat_data:
                print(
                    f"[{cell.name}] fd{x}: (in this process) Fréchet distance of {npz} to the test split "
                    f"-> {cell_dir}/fd{x}.json"
                )
                continue
            print(f"[{cell.name}] fd{x}: {shlex.join(runner.fd_command(opts, npz, f'{cell_dir}/fd{x}.json'))}")
            if opts.inception_reference > 0:
                inc = runner.inception_command(opts, npz, f"{cell_dir}/inception{x}.json")
                print(f"[{cell.name}] inception{x}: {shlex.join(inc)}")


def _write_report(
    F: flags.FlagValues,
    opts: runner.Options,
    num_cells: int,
    result_dir: str,
    rows: list[dict],
    *,
    hardware: str,
    parallel,
    wall_clock_s: float | None,
    rebuilt: str = "",
) -> None:
    """report.write_report with the header of this invocation (config, overrides, grid, hardware, timing)."""
    header = {
        "config": F["config"].config_filename,
        "overrides": " ".join(opts.user_overrides) or "none",
        "steps": opts.steps,
        "eval_every": opts.eval_every,
        "seeds": ",".join(F.seeds),
        "grid": ",".join(F.grid),
        "cells_finished": f"{len(rows)} of {num_cells}{rebuilt}",
        "hardware": hardware,
        "parallel": parallel,
        "wall_clock_s": wall_clock_s,
        "fd_samples": opts.fd_samples,
        "ancestral_steps": ",".join(map(str, opts.ancestral_steps)),
        "inception_reference": 0 if opts.flat_data else opts.inception_reference,
        "fd_features": "data coordinates" if opts.flat_data else f"feature net ({opts.feature_net_dir})",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report.write_report(
        result_dir, rows, eval_steps=opts.eval_steps, header=header, base_schedule=F.config.model.schedule
    )


def _report_only(F: flags.FlagValues, cells: list[grid.Cell], opts: runner.Options, result_dir: str) -> int:
    """--report_only: rebuild the report from the cell folders whose training finished."""
    rows = cell_rows.report_rows(cells, opts, result_dir)
    if not rows:
        raise FileNotFoundError(f"--report_only: no finished training under {result_dir}/cells for these cells.")
    _write_report(
        F,
        opts,
        len(cells),
        result_dir,
        rows,
        hardware=" / ".join(sorted({r["hardware"] for r in rows})),
        parallel=F.parallel or "?",
        wall_clock_s=None,
        rebuilt=" (report rebuilt from the cell folders)",
    )
    print(f"wrote {result_dir}/results.md from {len(rows)} of {len(cells)} cells")
    return 0


def main(argv: list[str], passed_overrides: list[str]) -> int:
    """CLI (see the module docstring): validate everything up front, run the grid, write the report.

    passed_overrides: the --config.K=V flags (from grid.split_overrides) forwarded to every command.
    """
    F = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    cells, opts = _options(F, passed_overrides)
    result_dir = os.path.abspath(os.path.join(F.results_root, F.name))
    gpus = runner.detect_gpus()
    parallel = F.parallel or max(1, len(gpus))
    if F.dry_run:
        _dry_run(cells, opts, result_dir, parallel, gpus)
        return 0
    if (
        not opts.flat_data
        and opts.fd_samples > 0
        and not os.path.exists(os.path.join(opts.feature_net_dir, "result.json"))
    ):
        raise FileNotFoundError(
            f"no feature net in {opts.feature_net_dir}: train it once with `make feature-net` "
            "(or pass --fd_samples=0 to skip sample quality)."
        )
    if F.report_only:
        return _report_only(F, cells, opts, result_dir)
    hardware = runner.describe_hardware(gpus)
    print(f"{len(cells)} cells x {opts.steps} steps -> {result_dir}; {parallel} at a time on {hardware}", flush=True)
    t0 = time.perf_counter()
    progress = lambda rows: _write_report(
        F,
        opts,
        len(cells),
        result_dir,
        rows,
        hardware=hardware,  # noqa: E731
        parallel=parallel,
        wall_clock_s=time.perf_counter() - t0,
    )
    rows = runner.run_grid(
        cells,
        opts,
        result_dir,
        parallel=parallel,
        devices=gpus,
        hardware=hardware,
        log=lambda s: print(s, flush=True),
        on_progress=progress,
    )  # report so far after each cell
    failed = [r["cell"] for r in rows if r["status"] != "ok"]
    print(f"wrote {result_dir}/results.md" + (f"; FAILED cells: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def define_flags() -> None:
    """The CLI's absl flags (see the module docstring)."""
    config_flags.DEFINE_config_file("config", None, "experiment config (configs/X.py[:arg])", lock_config=True)
    flags.DEFINE_string("name", None, "result folder name under --results_root")
    flags.DEFINE_integer("steps", None, "training steps of every cell (default: the config's)")
    flags.DEFINE_list("seeds", ["0"], "seeds; every cell runs once per seed")
    flags.DEFINE_list("grid", ["param_weighting"], f"one or more of {', '.join(grid.GRIDS)}")
    flags.DEFINE_string("schedule_weighting", "elbo", "weighting of the schedule grid")
    flags.DEFINE_string("schedule_parameterization", "eps", "parameterisation of the schedule grid")
    flags.DEFINE_list("cells", None, "fnmatch patterns of the cells to run (default: all)")
    flags.DEFINE_multi_string("override", [], "config.KEY=VALUE passed to every command")
    flags.DEFINE_integer(
        "parallel",
        0,
        "cells at a time (0: one per GPU, or 1 on a CPU host); more than "
        "the GPUs puts several cells on one GPU, splitting its memory",
    )
    flags.DEFINE_list("eval_steps", ["10", "100", "1000"], "discrete T for extra ELBO evaluations")
    flags.DEFINE_list(
        "ancestral_steps",
        ["25", "50", "100"],
        "sampler steps of the variance grid's ancestral samples (each with every reverse variance of the cell)",
    )
    flags.DEFINE_integer(
        "fd_samples", 2000, "samples for the Fréchet distance and the Inception FID/KID (0: no sampling)"
    )
    flags.DEFINE_integer(
        "inception_reference",
        10000,
        "image data: test images of the Inception FID/KID reference (cached once; 0: no Inception FID/KID)",
    )
    flags.DEFINE_integer("num_evals", 5, "ELBO evaluations during training (the bpd-vs-steps curves)")
    flags.DEFINE_string("feature_net_dir", runner.DEFAULT_FEATURE_NET_DIR, "trained feature net (make feature-net)")
    flags.DEFINE_string("results_root", runner.DEFAULT_RESULTS_ROOT, "parent of the result folder")
    flags.DEFINE_bool("dry_run", False, "print every command, run nothing")
    flags.DEFINE_bool(
        "report_only", False, "rebuild the report from the cell folders that finished training; run nothing"
    )
    flags.mark_flags_as_required(["config", "name"])


def cli() -> None:
    """Entry point: split the overrides off sys.argv, define the flags, run main; errors print one line, exit 1."""
    define_flags()
    try:
        absl_argv, passed = grid.split_overrides(sys.argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)

    def _main(argv):
        """main with the overrides; a bad flag or a missing input prints one line and exits 1."""
        try:
            return main(argv, passed)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1

    sys.argv = absl_argv  # ml_collections reads the --config.K=V overrides from sys.argv
    app.run(_main)


if __name__ == "__main__":
    cli()
