"""The timing harness of the train-step benchmarks (experiments/benchmark.py, experiments/dit_benchmark.py).

A config's full train step on a synthetic sharded batch (what the loop runs: loss, grads, AdamW, EMA),
compiled ahead of time with XLA's FLOP count; the bare network update it is compared against; median
timings of several steps in alternation; the per-process depth cells (a fresh process each, so nothing
is cached); and the markdown table a benchmark writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm.data import pipeline
from vdm.infra import parallel
from vdm.tasks import diffusion_model as dm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str = ""):
    """configs/<name>.py get_config(arg)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def setup(config, shape, num_classes=10):
    """(model, mesh, state, sharded synthetic batch [1, B, *shape]) for `config` on data of `shape`."""
    info = pipeline.DatasetInfo(
        "synthetic", tuple(shape), 50_000, 10_000, num_classes, True, encoding=config.data.encoding
    )
    trainer, mesh = dm.build(config, info), parallel.make_mesh()
    state = parallel.replicate(parallel.to_host(trainer.init_state(jax.random.PRNGKey(0))), mesh)
    rng = np.random.default_rng(0)
    b = config.training.batch_size
    x = (rng.integers(0, 256, (1, b, *shape)) / 127.5 - 1).astype(np.float32)
    batch = parallel.shard_batch(
        {
            "x": x,
            "label": rng.integers(0, num_classes, (1, b)).astype(np.int32),
            "index": np.arange(b, dtype=np.int32)[None],
        },
        mesh,
        leading_axes=1,
    )
    return trainer, mesh, state, batch


def full_step(trainer, mesh):
    """The diffusion model's jitted, sharded, donating train step (what the loop runs)."""
    return parallel.data_parallel(lambda s, b: dm.train_step(trainer, s, b), mesh)


def compiled_step(config, shape=(32, 32, 3)) -> tuple:
    """(compiled step, state, batch, compile seconds, FLOPs per step) of the full train step of `config`."""
    trainer, mesh, state, batch = setup(config, shape)
    t0 = time.perf_counter()
    compiled = full_step(trainer, mesh).lower(state, batch).compile()
    seconds = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled, state, batch, seconds, float((cost or {}).get("flops", float("nan")))


def median_seconds(fns, states, batches, *, repeats: int, iters: int) -> list[float]:
    """Median seconds per call of each fn(state, batch) -> (state, out), timed in alternation after one warm call."""
    states = list(states)
    for i, fn in enumerate(fns):
        states[i], out = fn(states[i], batches[i])
        jax.block_until_ready(out)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(iters):
                states[i], out = fn(states[i], batches[i])
            jax.block_until_ready(out)
            times[i].append((time.perf_counter() - t0) / iters)
    return [statistics.median(t) for t in times]


def bare_step(trainer):
    """Network forward + backward + optimizer update only: mean ||net(z, gamma) - eps||^2, same optimizer."""

    def step(carry, batch):
        params, opt_state = carry
        x, eps, gamma = batch["x"][0], batch["eps"], batch["gamma"]

        def loss(p):
            z = (
                jnp.sqrt(jax.nn.sigmoid(-gamma))[:, None, None, None] * x
                + jnp.sqrt(jax.nn.sigmoid(gamma))[:, None, None, None] * eps
            )
            pred = trainer.apply_network(
                p["model"], z, gamma, batch["label"][0], train=True, dropout_key=jax.random.PRNGKey(0)
            )
            return jnp.mean(jnp.square(pred - eps))

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = trainer.optimizer.tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return jax.jit(step, donate_argnums=0)


def bare_inputs(batch, config):
    """The bare step's batch: x, labels, and fixed eps [B, ...] and gamma [B]."""
    x = batch["x"]
    return {
        "x": x,
        "label": batch["label"],
        "eps": jax.random.normal(jax.random.PRNGKey(1), x.shape[1:]),
        "gamma": jnp.linspace(config.model.gamma_min, config.model.gamma_max, config.training.batch_size),
    }


def child_depth_rows(
    script: str, name: str, extra: str, size: dict, depths, repeats: int, iters: int, *, timeout: int
) -> list[tuple[str, str]]:
    """Rows of `script --child [size, layers, scan, repeats, iters]` (a fresh process per cell, nothing cached)."""
    rows = []
    for num_layers in depths:
        for scan in (False, True):
            arg = json.dumps([size, num_layers, scan, repeats, iters])
            proc = subprocess.run(
                [sys.executable, script, "--child", arg], capture_output=True, text=True, timeout=timeout
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{name} cell {num_layers} {scan} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(
                (
                    f"{name}: w{size['width']} L{num_layers}{extra} batch {size['batch']} 32x32x3, "
                    f"{'nn.scan' if scan else 'unrolled'} blocks",
                    f"compile {r['compile_s']:.1f} s, {r['step_s'] * 1e3:.1f} ms/step "
                    f"({size['batch'] / r['step_s']:.1f} images/s)",
                )
            )
    return rows


def write_table(rows: list[tuple[str, str]], header: str, path: str, script: str = "experiments/benchmark.py") -> None:
    """Print the rows and write them as a markdown table to `path`, measured by `python SCRIPT <this run's flags>`."""
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    print(header)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("# Speed\n\n" + header + "\n\n| measurement | result |\n|---|---|\n")
        f.writelines(f"| {name} | {value} |\n" for name, value in rows)
        f.write(f"\nMeasured by `python {script} " + " ".join(sys.argv[1:]) + "`.\n")
    print(f"wrote {os.path.relpath(path, ROOT)}")
