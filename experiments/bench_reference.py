"""Our train step against google-research/vdm's own train step, at equal architecture (benchmark.py --sections=reference).

The reference is loaded from its checkout at run time (`--reference_dir`, the directory holding its
`vdm/` package: model_vdm.py, experiment.py, experiment_vdm.py, train_state.py, utils.py,
configs/cifar10.py); nothing of it is copied here. Its modules import `vdm.*`, so they are loaded
under a temporary stand-in `vdm` package pointing at the checkout (ours is put back afterwards),
with run-time shims for today's jax/flax and for packages a train step does not use:
  - `jax.tree_map`, `jax.tree_multimap` (removed from jax): -> `jax.tree_util.tree_map`;
  - `clu` (writers, checkpoints, progress hooks; not installed) and `tensorflow` / the reference's
    `vdm.dataset` (input pipeline only): empty stand-in modules;
  - `model.init` returns a dict today, a FrozenDict in 2022 (its AdamW decay mask is a
    FrozenDict, and optax needs equal tree types): the params are frozen before TrainState.create;
  - `Experiment.__init__` (builds TFDS iterators) is skipped: the object gets config, model,
    state and lr_schedule the way __init__ sets them (get_model_and_params, TrainState.create with
    get_optimizer, get_lr_schedule), and its train_step(rng, state, batch) is jitted (see
    reference_step for why not its pmap).

Equal architecture: the reference's configs/cifar10.py with model.sm_n_embd = width and
model.sm_n_layer = num_layers; ours configs/cifar10.py with model.width, model.num_layers,
model.norm_groups = 32 (the reference's GroupNorm default; ours defaults to adaptive below width 64),
training.batch_size = batch and model.scan_blocks as given. Everything else is both configs' own
(dropout 0.1, Fourier features 6..7, learned linear gamma in [-13.3, 5], antithetic t, AdamW
b2 0.99 wd 0.01 with the non-bias mask, warmup 100, EMA 0.9999, float32).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vdm.data import pipeline
from vdm.infra import parallel
from vdm.tasks import diffusion_model as dm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_MODULES = ("model_vdm", "train_state", "utils", "experiment", "experiment_vdm")


class _AnyMeta(type):
    """Every attribute of a stand-in class is the stand-in class (clu.metric_writers.interface.Scalar ...)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any


class _Any(metaclass=_AnyMeta):
    """Stand-in for anything of an unused package: a class, a base class, a type annotation."""

    def __init__(self, *args, **kwargs):
        pass


class _StubModule(types.ModuleType):
    """A module whose every attribute is `_Any` (and a package, so `from clu.a.b import C` works)."""

    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any


STUBS = (
    "clu",
    "clu.periodic_actions",
    "clu.parameter_overview",
    "clu.metric_writers",
    "clu.checkpoint",
    "clu.deterministic_data",
    "clu.metric_writers.async_writer",
    "clu.metric_writers.logging_writer",
    "clu.metric_writers.summary_writer",
    "clu.metric_writers.interface",
    "clu.metric_writers.multi_writer",
    "tensorflow",
    "tensorflow_datasets",
    "vdm.dataset",
)


@contextlib.contextmanager
def _reference_package(package_dir: str):
    """sys.modules with `vdm` = the reference's package and the stubs; ours (and any real tensorflow) restored after."""
    saved = {k: v for k, v in sys.modules.items() if k == "vdm" or k.startswith("vdm.") or k in STUBS}
    for k in saved:
        del sys.modules[k]
    package = types.ModuleType("vdm")
    package.__path__ = [package_dir]
    sys.modules["vdm"] = package
    for name in STUBS:
        sys.modules[name] = _StubModule(name)
    try:
        yield package
    finally:
        for k in [k for k in sys.modules if k == "vdm" or k.startswith("vdm.") or k in STUBS]:
            del sys.modules[k]
        sys.modules.update(saved)


def load_reference(reference_dir: str) -> types.SimpleNamespace:
    """The reference's modules (model_vdm, train_state, utils, experiment, experiment_vdm) and its cifar10 config module."""
    package_dir = os.path.join(os.path.abspath(reference_dir), "vdm")
    if not os.path.isfile(os.path.join(package_dir, "model_vdm.py")):
        raise FileNotFoundError(
            f"no vdm/model_vdm.py under --reference_dir={reference_dir} "
            "(a checkout of google-research/vdm, its files under vdm/)"
        )
    for old in ("tree_map", "tree_multimap"):  # removed from jax; the reference calls them
        if not hasattr(jax, old):
            setattr(jax, old, jax.tree_util.tree_map)
    with _reference_package(package_dir):
        modules = {name: importlib.import_module(f"vdm.{name}") for name in REFERENCE_MODULES}
    spec = importlib.util.spec_from_file_location(
        "reference_cifar10", os.path.join(package_dir, "configs", "cifar10.py")
    )
    modules["cifar10"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(modules["cifar10"])
    return types.SimpleNamespace(**modules)


def reference_config(ref: types.SimpleNamespace, size: dict):
    """The reference's configs/cifar10.py with sm_n_embd = width, sm_n_layer = num_layers, batch_size_train = batch."""
    c = ref.cifar10.get_config()
    c.model.sm_n_embd, c.model.sm_n_layer = size["width"], size["num_layers"]
    c.training.batch_size_train = size["batch"]
    return c


def reference_experiment(ref: types.SimpleNamespace, size: dict, seed: int = 0):
    """An Experiment_VDM with what its __init__ sets for a train step (no data iterators, no checkpoints)."""
    exp = object.__new__(ref.experiment_vdm.Experiment_VDM)
    exp.config = reference_config(ref, size)
    exp.model, params = exp.get_model_and_params(jax.random.PRNGKey(seed))
    params = flax.core.freeze(params)  # flax of 2022 returned FrozenDicts from init; its decay mask is one
    exp.state = ref.train_state.TrainState.create(
        apply_fn=exp.model.apply, variables=params, optax_optimizer=exp.get_optimizer
    )
    exp.lr_schedule = exp.get_lr_schedule()
    return exp


def reference_step(ref: types.SimpleNamespace, size: dict) -> tuple:
    """(step(state, batch) -> (state, metrics), state, batch [B, ...]): its Experiment.train_step, jitted.

    Its own wrapper, jax.pmap(lax.scan(train_step)), runs ~8x slower than jit on today's jax on
    CPU (pmap is emulated there), so the same train_step runs in jit(shard_map) over a 1-device
    mesh axis named 'batch' (its axis_index / pmean), one step per call, no donation: the way
    ours runs (parallel.data_parallel), minus the donation the reference does not ask for.
    """
    exp = reference_experiment(ref, size)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
    step = functools.partial(exp.train_step, jax.random.PRNGKey(1))
    P = jax.sharding.PartitionSpec
    step = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch")), out_specs=(P(), P()), check_vma=False))
    rng = np.random.default_rng(0)
    b = size["batch"]
    batch = {
        "images": jnp.asarray(rng.integers(0, 256, (b, 32, 32, 3)).astype(np.uint8)),
        "conditioning": jnp.zeros((b,)),
    }
    state = exp.state.replace(step=jnp.zeros((), jnp.int32))  # an int32 array, as after one pmap step
    return step, state, batch


def ours_config(size: dict, *, scan: bool):
    """configs/cifar10.py at the benchmark's width, num_layers, batch, with the reference's 32 norm groups."""
    spec = importlib.util.spec_from_file_location("cifar10", os.path.join(ROOT, "configs", "cifar10.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.update(width=size["width"], num_layers=size["num_layers"], scan_blocks=scan, norm_groups=32)
    c.training.batch_size = size["batch"]
    return c


def ours_step(config) -> tuple:
    """(step, state, batch) of OUR loop's train step for `config`: the one place that builds it.

    vdm.tasks.diffusion_model.train_step inside parallel.data_parallel (jit(shard_map), state donated),
    one step per call, on CIFAR-10-shaped synthetic 8-bit data: what train.run runs.
    """
    model, mesh = build(config)
    state = parallel.replicate(parallel.to_host(model.init_state(jax.random.PRNGKey(0))), mesh)
    step = parallel.data_parallel(lambda s, b: dm.train_step(model, s, b), mesh)
    return step, state, synthetic_batch(config, mesh)


def build(config) -> tuple:
    """(vdm.tasks.diffusion_model.DiffusionModel, mesh) of `config` on CIFAR-10-shaped 8-bit data."""
    info = pipeline.DatasetInfo("synthetic", (32, 32, 3), 50_000, 10_000, 10, True, encoding=config.data.encoding)
    return dm.build(config, info), parallel.make_mesh()


def synthetic_batch(config, mesh) -> dict:
    """Our loop's batch [1 step, B, 32, 32, 3]: random 8-bit images on the config's grid, labels, sharded."""
    rng = np.random.default_rng(0)
    b = config.training.batch_size
    k = rng.integers(0, 256, (1, b, 32, 32, 3))
    x = (k + 0.5) / 128 - 1 if config.data.encoding == "bin_centres" else k / 127.5 - 1
    return parallel.shard_batch(
        {
            "x": x.astype(np.float32),
            "label": rng.integers(0, 10, (1, b)).astype(np.int32),
            "index": np.arange(b, dtype=np.int32)[None],
        },
        mesh,
        leading_axes=1,
    )


def time_alternating(cases: dict, *, repeats: int, iters: int) -> dict:
    """{name: [seconds per step, one per repeat]} of each case (step, state, batch), run A, B, C, A, B, C ... after warm calls."""
    states = {name: c[1] for name, c in cases.items()}
    for name, (step, _, batch) in cases.items():  # compile; the second call meets the stepped state's types
        for _ in range(2):
            states[name], out = step(states[name], batch)
        jax.block_until_ready(out)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (step, _, batch) in cases.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                states[name], out = step(states[name], batch)
            jax.block_until_ready((states[name], out))
            times[name].append((time.perf_counter() - t0) / iters)
    return times


def reference_source(reference_dir: str) -> str:
    """What of the reference ran, from where (and its git commit when reference_dir is a git work tree)."""
    proc = subprocess.run(
        ["git", "-C", os.path.join(reference_dir, "vdm"), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    commit = proc.stdout.strip() if proc.returncode == 0 else "commit: not a git work tree"
    return (
        f"{os.path.abspath(reference_dir)} ({commit}): vdm/model_vdm.py VDM + ScoreUNet, experiment_vdm.py "
        "Experiment_VDM.get_model_and_params / loss_fn, experiment.py Experiment.train_step / get_optimizer / "
        "get_lr_schedule, train_state.py TrainState, configs/cifar10.py; shims in experiments/bench_reference.py"
    )


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """numerator[i] / denominator[i]: two cases' seconds timed next to each other in repeat i (the load drifts less)."""
    return [a / b for a, b in zip(numerator, denominator)]


def reference_rows(size: dict, reference_dir: str, repeats: int, iters: int) -> list[tuple[str, str]]:
    """Rows: images/s of the reference's train step and ours (scanned, unrolled), ratios ours/reference, one alternating run."""
    ref = load_reference(reference_dir)
    cases = {
        "reference": reference_step(ref, size),
        "ours_scan": ours_step(ours_config(size, scan=True)),
        "ours_unrolled": ours_step(ours_config(size, scan=False)),
    }
    times = time_alternating(cases, repeats=repeats, iters=iters)
    med = {k: statistics.median(v) for k, v in times.items()}
    b, shape = size["batch"], f"w{size['width']} L{size['num_layers']} batch {size['batch']} 32x32x3 float32"
    per_repeat = lambda k: ", ".join(f"{b / s:.2f}" for s in times[k])
    rows = [("reference code", reference_source(reference_dir))]
    rows += [
        (
            f"reference: google-research/vdm train_step (model_vdm.VDM, loss_fn, AdamW, EMA), {shape}",
            f"{b / med['reference']:.2f} images/s ({med['reference'] * 1e3:.0f} ms/step; repeats {per_repeat('reference')})",
        )
    ]
    for key, layout in (("ours_scan", "blocks under nn.scan"), ("ours_unrolled", "blocks unrolled")):
        rows.append(
            (
                f"ours: vdm.tasks.diffusion_model.train_step in parallel.data_parallel, {layout}, {shape}",
                f"{b / med[key]:.2f} images/s ({med[key] * 1e3:.0f} ms/step; repeats {per_repeat(key)}); "
                f"ours / reference = {med['reference'] / med[key]:.3f}",
            )
        )
    for key, layout in (("ours_scan", "scanned"), ("ours_unrolled", "unrolled")):
        ratios = paired_ratios(times["reference"], times[key])
        rows.append(
            (
                f"ours {layout} / reference, per repeat (adjacent timings); median",
                ", ".join(f"{x:.3f}" for x in ratios) + f"; median {statistics.median(ratios):.3f}",
            )
        )
    return rows
