"""What a cell runs and what it measured: the shared Options, each stage's argv and name, reading the records back.

Stage names: train; eval_T<T> (the config's reverse variance) or, for a cell with several reverse
variances (grid.VARIANTS), eval_T<T>_<variance>; sample (the config's sampler) or
sample_ancestral<S>_<variance>; per sample stage sample<X>, the quality stages fd<X> and
inception<X> write CELL/fd<X>.json and CELL/inception<X>.json and fill the row's fd<X>, fid<X>,
kid<X>, kid_se<X> (X = '' or '_ancestral<S>_<variance>').
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys

from experiments.compare.grid import Cell

EXPERIMENTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EVAL_STAGE = re.compile(r"^eval_T(\d+)(?:_([a-z]+))?$")


@dataclasses.dataclass(frozen=True)
class Options:
    """What every cell shares: the config, user overrides, steps, and what to measure."""

    config_arg: str  # configs/X.py[:arg], absolute path
    user_overrides: tuple[str, ...]  # --config.K=V flags passed through to every command
    steps: int
    eval_every: int
    eval_steps: tuple[int, ...]  # discrete T of the extra ELBO evaluations
    fd_samples: int  # samples for the Fréchet distance (0: no sampling, no FD)
    flat_data: bool  # toy data [N, D]: FD of raw coordinates, else feature-net FD
    feature_net_dir: str
    data_config: dict  # config.data, to load the test split of flat data
    inception_reference: int = 0  # test images of the Inception FID/KID reference (0: not measured)
    python: str = sys.executable
    ancestral_steps: tuple[int, ...] = ()  # sampler steps of the ancestral samples of cells with variances


def stage_commands(cell: Cell, opts: Options, cell_dir: str) -> dict[str, list[str]]:
    """{stage: argv} for the cell's train, eval and sample stages (the fd stages need the sample files)."""
    base = [
        opts.python,
        "-m",
        "vdm.main",
        f"--config={opts.config_arg}",
        f"--workdir={cell_dir}",
        *opts.user_overrides,
        *cell.overrides(),
        f"--config.training.num_steps={opts.steps}",
        f"--config.training.eval_every={opts.eval_every}",
        "--config.eval.t_sampling=uniform",  # every cell's ELBO the same estimator (the T-step evals need it)
    ]
    cmds = {"train": base + ["--config.eval.num_steps=0"]}
    for t in opts.eval_steps:
        if not cell.variances:
            cmds[f"eval_T{t}"] = base + ["--mode=eval", f"--config.eval.num_steps={t}"]
        for v in cell.variances:
            cmds[f"eval_T{t}_{v}"] = base + [
                "--mode=eval",
                f"--config.eval.num_steps={t}",
                f"--config.eval.variance={v}",
            ]
    if opts.fd_samples <= 0:
        return cmds
    sample = base + ["--config.eval.num_steps=0", "--mode=sample", f"--config.sampling.num_samples={opts.fd_samples}"]
    if not cell.variances:
        cmds["sample"] = sample
    for s in opts.ancestral_steps if cell.variances else ():
        for v in cell.variances:
            cmds[f"sample_ancestral{s}_{v}"] = sample + [
                "--config.sampling.method=ancestral",
                f"--config.sampling.num_steps={s}",
                f"--config.sampling.variance={v}",
            ]
    return cmds


def sample_stages(stages) -> list[str]:
    """The sample stages among stage names, in order."""
    return [s for s in stages if s == "sample" or s.startswith("sample_")]


def quality_suffix(sample_stage: str) -> str:
    """X of a sample stage 'sample<X>': its fd<X> / inception<X> stages, files and row columns."""
    return sample_stage[len("sample") :]


def parse_eval_stage(stage: str) -> tuple[int, str | None] | None:
    """(T, variance or None) of an eval_T<T>[_<variance>] stage name, else None."""
    m = _EVAL_STAGE.match(stage)
    return (int(m.group(1)), m.group(2)) if m else None


def fd_command(opts: Options, samples: str, out: str) -> list[str]:
    """argv of the feature-net Fréchet distance of an .npz of image samples."""
    return [
        opts.python,
        os.path.join(EXPERIMENTS, "feature_net.py"),
        "--mode=fd",
        f"--workdir={opts.feature_net_dir}",
        f"--samples={samples}",
        f"--out={out}",
    ]


def inception_command(opts: Options, samples: str, out: str) -> list[str]:
    """argv of the Inception FID and KID (vdm.fid) of an .npz of image samples against the test split."""
    return [
        opts.python,
        "-m",
        "vdm.tools.fid",
        samples,
        f"{opts.data_config['dataset']}:test",
        f"--num_b={opts.inception_reference}",
        f"--json={out}",
    ]


def final_eval(
    records: list[dict], step: int, num_steps: int | None = None, variance: str | None = None
) -> dict | None:
    """The last eval record at `step`: the training loop's (no 'eval/num_steps') or the --mode=eval one for T
    (with `variance`: the one whose resolved eval.variance is it)."""
    hits = [
        r
        for r in records
        if r.get("step") == step
        and r.get("eval/bpd") is not None
        and r.get("eval/num_steps") == num_steps
        and (variance is None or (r.get("eval_settings") or {}).get("variance") == variance)
    ]
    return hits[-1] if hits else None


def _number(v) -> float | None:
    """v as a finite float, else None (lists, strings, null and non-finite values are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def train_variance(records: list[dict], steps: int, key: str = "train/diffusion_var") -> dict:
    """{'train_diffusion_var_2nd_half', 'train_diffusion_var_all'}: the mean of `key` over the logged training steps
    after steps / 2, and over all (last record per step; rows without a numeric value, e.g. histograms, skipped)."""
    per_step = {}
    for r in records:
        v = _number(r.get(key))
        if v is not None and r.get("mode") is None and isinstance(r.get("step"), int):
            per_step[r["step"]] = v
    late = [v for s, v in per_step.items() if s > steps / 2]
    mean = lambda vs: sum(vs) / len(vs) if vs else None  # noqa: E731
    return {"train_diffusion_var_2nd_half": mean(late), "train_diffusion_var_all": mean(list(per_step.values()))}
