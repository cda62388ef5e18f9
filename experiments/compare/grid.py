"""The grid of compare_objectives: its cells, their names and config keys, and the user's --override flags.

Grids (equal steps and seeds in every cell):
  param_weighting  parameterization {eps, x0, score, v} x weighting {elbo, simple, snr, min_snr,
                   sigmoid, edm}, on the config's schedule;
  schedule         schedule {linear_logsnr, cosine, learned} for one weighting and parameterisation.
A cell is named <parameterization>-<weighting>-<schedule>-s<seed>; cells shared by the two grids
run once.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import os

import ml_collections

GRIDS = ("param_weighting", "schedule")
GRID_SCHEDULES = ("linear_logsnr", "cosine", "learned")
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


def _check_choices(grids: list[str], seeds: list[int], schedule_weighting: str,
                   schedule_parameterization: str) -> None:
    """Raise ValueError, naming the valid choices, for an unknown grid, weighting or parameterisation or bad seeds."""
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


def enumerate_cells(grids: list[str], *, seeds: list[int], base_schedule: str,
                    schedule_weighting: str = "elbo", schedule_parameterization: str = "eps",
                    patterns: list[str] | None = None) -> list[Cell]:
    """The cells of `grids`, deduplicated, in grid order, seeds innermost; `patterns` (fnmatch on the name) filters.

    param_weighting: every parameterisation x weighting on `base_schedule`; schedule: every
    GRID_SCHEDULES entry with `schedule_weighting` and `schedule_parameterization`.
    """
    _check_choices(grids, seeds, schedule_weighting, schedule_parameterization)
    params, weightings = grid_axes()
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


def eval_interval(steps: int, num_evals: int, steps_per_call: int) -> int:
    """Steps between training-time ELBO evaluations: at most `num_evals` (one at the end), a multiple of steps_per_call."""
    if steps % steps_per_call:
        raise ValueError(f"--steps={steps} must be a multiple of config.training.steps_per_call={steps_per_call}.")
    return steps if num_evals <= 1 else min(steps, -(-steps // (num_evals * steps_per_call)) * steps_per_call)


def validate_cells(base: ml_collections.ConfigDict, cells: list[Cell], *, steps: int, eval_every: int) -> None:
    """Raise vdm.config_utils.ConfigError if any cell's config (base + the cell's keys) is invalid, before anything runs."""
    from vdm import config_utils
    for cell in cells:
        c = copy.deepcopy(base)
        with c.unlocked():
            c.model.parameterization, c.loss.weighting = cell.parameterization, cell.weighting
            c.model.schedule, c.seed = cell.schedule, cell.seed
            c.training.num_steps, c.training.eval_every, c.eval.num_steps = steps, eval_every, 0
        config_utils.validate(c)


def _config_key_value(flag: str) -> tuple[str, str]:
    """(KEY, VALUE) of a --config.KEY=VALUE flag."""
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


def absolute_config_arg(arg: str) -> str:
    """configs/X.py[:variant] with the file made absolute (the cells run in their own folders' commands)."""
    path, sep, variant = arg.partition(":")
    return os.path.abspath(path) + sep + variant
