"""The grid of compare_objectives: its cells, their names and config keys, and the user's --override flags.

Grids (equal steps and seeds in every cell):
  param_weighting  parameterization {eps, x0, score, v} x weighting {elbo, simple, snr, min_snr,
                   sigmoid, edm}, on the config's schedule;
  schedule         schedule {linear_logsnr, cosine, learned} for one weighting and parameterisation;
  variance         improved DDPM's learned vs fixed reverse variance on the cosine schedule (the config's gamma_max):
                   <p>-hybrid-cosine-learnedvar (L_hybrid, the keys of configs/fashion_mnist.py:hybrid) and
                   <p>-simple-cosine-fixedvar (L_simple, no variance head, continuous time);
  t_sampling       weighting {elbo, sigmoid, edm} x loss.t_sampling {antithetic, adaptive} on the config's
                   schedule and parameterisation;
  flow             FLOW_CELLS (rectified flow on the ot schedule: flow-flow-ot-rf, eps-flow-ot, flow-flow-ot-sd3)
                   and weightings {eps_cosine, v_cosine} on the config's schedule and parameterisation.
A cell is named <parameterization>-<weighting>-<schedule>[-<variant>]-s<seed>: no variant is the
config's own keys (and its loss.t_sampling); a variant names what the cell sets besides (VARIANTS).
Cells shared by several grids run once.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import os

import ml_collections

GRIDS = ("param_weighting", "schedule", "variance", "t_sampling", "flow")
# The param_weighting grid's axes: the four readings and six weightings it has always compared (the ones added
# since, 'flow' and eps_cosine, v_cosine, flow, are the flow grid's cells, so this grid keeps its 24 cells).
PARAM_WEIGHTING_KINDS = ("eps", "x0", "score", "v")
PARAM_WEIGHTING_WEIGHTINGS = ("elbo", "simple", "snr", "min_snr", "sigmoid", "edm")
# flow: rectified flow on the OT path (Liu et al. 2023; Lipman et al. 2023), the same objective read as eps, SD3's
# logit-normal t (Esser et al. 2024), and Kingma & Gao's Table 1 rows eps-MSE and v-MSE under cosine as w(lambda).
FLOW_CELLS = (("flow", "flow", "ot", "rf"), ("eps", "flow", "ot", ""), ("flow", "flow", "ot", "sd3"))
FLOW_BASE_WEIGHTINGS = ("eps_cosine", "v_cosine")  # on the config's schedule and parameterisation
GRID_SCHEDULES = ("linear_logsnr", "cosine", "learned")
T_SAMPLING_WEIGHTINGS = ("elbo", "sigmoid", "edm")
T_SAMPLINGS = ("antithetic", "adaptive")
VARIANCE_SCHEDULE = "cosine"
# variant -> (config keys the cell sets besides its parameterisation, weighting, schedule and seed;
#             the reverse variances of its discrete ELBO and ancestral samples, its default first).
VARIANTS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "learnedvar": (
        {
            "model.variance_head": "interp",
            "loss.objective": "hybrid",
            "loss.weighting": "simple",
            "loss.num_steps": 1000,
            "sampling.variance": "learned",
        },
        ("learned", "small", "large"),
    ),
    "fixedvar": (
        {"model.variance_head": "none", "loss.objective": "weighted", "loss.weighting": "simple", "loss.num_steps": 0},
        ("small", "large"),
    ),
    **{t: ({"loss.t_sampling": t}, ()) for t in ("uniform", *T_SAMPLINGS)},
    "rf": ({"model.input_scaling": "ot"}, ()),  # the velocity net sees z_OT: a rectified-flow model as it is
    "sd3": ({"model.input_scaling": "ot", "loss.t_sampling": "logit_normal"}, ()),
}
# Keys each cell sets itself; a user override of one of them would silently break the grid.
# (config.sampling.num_samples may be overridden: it sizes the training-time grids; the sample stage's own
# --config.sampling.num_samples=--fd_samples comes last on its command line, and the last flag wins.)
CONTROLLED_KEYS = (
    "model.parameterization",
    "loss.weighting",
    "model.schedule",
    "seed",
    "training.num_steps",
    "training.eval_every",
    "eval.num_steps",
    "eval.t_sampling",
)


def grid_axes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(parameterisations, weightings) of the param_weighting grid, checked to be in vdm's own choice sets."""
    from vdm import objectives, parameterization  # jax is imported, but no device is touched

    assert set(PARAM_WEIGHTING_KINDS) <= set(parameterization.KINDS)
    assert set(PARAM_WEIGHTING_WEIGHTINGS) <= set(objectives.WEIGHTINGS)
    return PARAM_WEIGHTING_KINDS, PARAM_WEIGHTING_WEIGHTINGS


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One training run of the grid."""

    parameterization: str
    weighting: str
    schedule: str
    seed: int
    variant: str = ""  # a VARIANTS key, or "" for the config's own other keys

    @property
    def name(self) -> str:
        """<parameterization>-<weighting>-<schedule>[-<variant>]-s<seed>, the cell's folder name."""
        tag = f"-{self.variant}" if self.variant else ""
        return f"{self.parameterization}-{self.weighting}-{self.schedule}{tag}-s{self.seed}"

    @property
    def variances(self) -> tuple[str, ...]:
        """The reverse variances this cell's discrete ELBO and ancestral samples are measured with (() : the default)."""
        return VARIANTS[self.variant][1] if self.variant else ()

    def config_keys(self) -> dict:
        """{config key: value} this cell sets, in flag order (a variant's keys may replace the weighting's value)."""
        keys = {
            "model.parameterization": self.parameterization,
            "loss.weighting": self.weighting,
            "model.schedule": self.schedule,
            "seed": self.seed,
        }
        return {**keys, **(VARIANTS[self.variant][0] if self.variant else {})}

    def overrides(self) -> list[str]:
        """The vdm.main flags that make this cell."""
        return [f"--config.{k}={v}" for k, v in self.config_keys().items()]


def _check_choices(grids: list[str], seeds: list[int], schedule_weighting: str, schedule_parameterization: str) -> None:
    """Raise ValueError, naming the valid choices, for an unknown grid, weighting or parameterisation or bad seeds."""
    params, weightings = grid_axes()
    unknown = [g for g in grids if g not in GRIDS]
    if unknown or not grids:
        raise ValueError(f"--grid={','.join(grids)}: choose one or more of {', '.join(GRIDS)}.")
    if schedule_weighting not in weightings:
        raise ValueError(f"--schedule_weighting={schedule_weighting!r}; choose one of {', '.join(weightings)}.")
    if schedule_parameterization not in params:
        raise ValueError(
            f"--schedule_parameterization={schedule_parameterization!r}; choose one of {', '.join(params)}."
        )
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds={seeds}: give distinct non-negative integers.")


def _grid_combos(
    grid: str,
    params: tuple[str, ...],
    weightings: tuple[str, ...],
    base_schedule: str,
    base_parameterization: str,
    base_t_sampling: str,
    schedule_weighting: str,
    schedule_parameterization: str,
) -> list[tuple[str, str, str, str]]:
    """(parameterisation, weighting, schedule, variant) of one grid's cells."""
    if grid == "param_weighting":
        return [(p, w, base_schedule, "") for p in params for w in weightings]
    if grid == "schedule":
        return [(schedule_parameterization, schedule_weighting, s, "") for s in GRID_SCHEDULES]
    if grid == "variance":
        return [
            (base_parameterization, "hybrid", VARIANCE_SCHEDULE, "learnedvar"),
            (base_parameterization, "simple", VARIANCE_SCHEDULE, "fixedvar"),
        ]
    if grid == "flow":
        return list(FLOW_CELLS) + [(base_parameterization, w, base_schedule, "") for w in FLOW_BASE_WEIGHTINGS]
    # t_sampling: the config's own loss.t_sampling is the unnamed cell, shared with the other grids
    return [
        (base_parameterization, w, base_schedule, "" if t == base_t_sampling else t)
        for w in T_SAMPLING_WEIGHTINGS
        for t in T_SAMPLINGS
    ]


def enumerate_cells(
    grids: list[str],
    *,
    seeds: list[int],
    base_schedule: str,
    schedule_weighting: str = "elbo",
    schedule_parameterization: str = "eps",
    patterns: list[str] | None = None,
    base_parameterization: str = "eps",
    base_t_sampling: str = "antithetic",
) -> list[Cell]:
    """The cells of `grids`, deduplicated, in grid order, seeds innermost; `patterns` (fnmatch on the name) filters.

    param_weighting: every parameterisation x weighting on `base_schedule`; schedule: every
    GRID_SCHEDULES entry with `schedule_weighting` and `schedule_parameterization`; variance: the
    learnedvar and fixedvar cells; t_sampling: T_SAMPLING_WEIGHTINGS x T_SAMPLINGS (the config's
    `base_t_sampling` unnamed) on `base_schedule` with `base_parameterization`; flow: FLOW_CELLS and the
    FLOW_BASE_WEIGHTINGS on `base_schedule` with `base_parameterization`.
    """
    _check_choices(grids, seeds, schedule_weighting, schedule_parameterization)
    params, weightings = grid_axes()
    combos = []
    for grid in grids:
        combos += _grid_combos(
            grid,
            params,
            weightings,
            base_schedule,
            base_parameterization,
            base_t_sampling,
            schedule_weighting,
            schedule_parameterization,
        )
    cells = list(dict.fromkeys(Cell(p, w, s, seed, v) for p, w, s, v in combos for seed in seeds))
    if patterns:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.name, pat) for pat in patterns)]
        if not cells:
            raise ValueError(
                f"--cells={','.join(patterns)} matches no cell; names look like "
                "'eps-elbo-linear_logsnr-s0' (fnmatch patterns such as 'eps-*' work)."
            )
    return cells


def eval_interval(steps: int, num_evals: int, steps_per_call: int) -> int:
    """Steps between training-time ELBO evaluations: at most `num_evals` (one at the end), a multiple of steps_per_call."""
    if steps % steps_per_call:
        raise ValueError(f"--steps={steps} must be a multiple of config.training.steps_per_call={steps_per_call}.")
    return steps if num_evals <= 1 else min(steps, -(-steps // (num_evals * steps_per_call)) * steps_per_call)


def _set_keys(c: ml_collections.ConfigDict, keys: dict) -> None:
    """Set dotted config keys ('model.schedule') of an unlocked ConfigDict."""
    for key, value in keys.items():
        *path, leaf = key.split(".")
        node = c
        for part in path:
            node = node[part]
        node[leaf] = value


def stage_keys(cell: Cell, eval_steps: tuple[int, ...] = (), ancestral_steps: tuple[int, ...] = ()) -> list[dict]:
    """The config keys of the cell's --mode=eval and ancestral --mode=sample stages (besides its training keys)."""
    if not cell.variances:
        return [{"eval.num_steps": t} for t in eval_steps]
    evals = [{"eval.num_steps": t, "eval.variance": v} for t in eval_steps for v in cell.variances]
    return evals + [
        {"eval.num_steps": 0, "sampling.method": "ancestral", "sampling.num_steps": s, "sampling.variance": v}
        for s in ancestral_steps
        for v in cell.variances
    ]


def validate_cells(
    base: ml_collections.ConfigDict,
    cells: list[Cell],
    *,
    steps: int,
    eval_every: int,
    eval_steps: tuple[int, ...] = (),
    ancestral_steps: tuple[int, ...] = (),
) -> None:
    """Raise vdm.config.validation.ConfigError if any cell's config (base + the cell's keys), or that of one of its
    eval / ancestral-sample stages, is invalid, before anything runs."""
    from vdm.config import validation

    for cell in cells:
        c = copy.deepcopy(base)
        with c.unlocked():
            _set_keys(
                c,
                {
                    **cell.config_keys(),
                    "training.num_steps": steps,
                    "training.eval_every": eval_every,
                    "eval.num_steps": 0,
                    "eval.t_sampling": "uniform",
                },
            )
        validation.validate(c)
        for keys in stage_keys(cell, eval_steps, ancestral_steps):
            s = copy.deepcopy(c)
            with s.unlocked():
                _set_keys(s, keys)
            validation.validate(s)


def _config_key_value(flag: str) -> tuple[str, str]:
    """(KEY, VALUE) of a --config.KEY=VALUE flag."""
    body = flag[len("--config.") :]
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
                arg = arg[len("--override=") :]
            if not arg.startswith("config."):
                raise ValueError(f"--override={arg!r} must start with 'config.' (e.g. config.training.batch_size=32).")
            arg = "--" + arg
        if arg.startswith("--config."):
            key, _ = _config_key_value(arg)
            if key in CONTROLLED_KEYS:
                raise ValueError(
                    f"config.{key} is set per cell by compare_objectives; use --steps, --seeds, "
                    f"--grid, --eval_steps or --fd_samples instead of overriding it."
                )
            passed.append(arg)
        out.append(arg)
        i += 1
    return out, passed


def absolute_config_arg(arg: str) -> str:
    """configs/X.py[:variant] with the file made absolute (the cells run in their own folders' commands)."""
    path, sep, variant = arg.partition(":")
    return os.path.abspath(path) + sep + variant
