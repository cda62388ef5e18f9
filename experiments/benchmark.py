"""Training throughput: images/s of the train step, and its overhead over the bare network update.

    python experiments/benchmark.py [--repeats 7] [--iters 5]

Measures, with medians over `repeats` timings of `iters` steps each (after compiling):
  1. the default config (configs/fashion_mnist.py): full train step, images/s;
  2. the VDM UNet at width 32, 2 layers, batch 32, 32x32x3: full train step vs the bare
     network forward + backward + optimizer update on the same batch (target ratio <= 1.10);
  3. on GPU only: configs/cifar10.py in bfloat16, images/s and model FLOP utilisation, with the
     step's FLOPs from XLA's cost analysis of the compiled step.
Batches are synthetic and already on device: this times the step, not the input pipeline.
Prints a table and writes experiments/results/benchmark.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm import data, parallel
from vdm import trainer as tr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Dense bf16 peak FLOP/s by device kind (vendor datasheets, SXM parts).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


def load_config(name: str, arg: str = ""):
    """configs/<name>.py get_config(arg)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def median_seconds(fns, states, batches, *, repeats: int, iters: int) -> list[float]:
    """Median seconds per call of each fn(state, batch) -> (state, out), timed in alternation.

    Alternating the timings (fn 1, fn 2, fn 1, ...) exposes every fn to the same background
    load, so their ratio stays meaningful on a shared machine.
    """
    states = list(states)
    for i, fn in enumerate(fns):                          # compile + one warm step each
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


def setup(config, shape, num_classes=10):
    """(trainer, mesh, state, sharded synthetic batch [1, B, *shape]) for `config` on data of `shape`."""
    info = data.DatasetInfo("synthetic", tuple(shape), 50_000, 10_000, num_classes, True)
    trainer, mesh = tr.build_trainer(config, info), parallel.make_mesh()
    state = parallel.replicate(parallel.to_host(tr.create_train_state(trainer, jax.random.PRNGKey(0))), mesh)
    rng = np.random.default_rng(0)
    b = config.training.batch_size
    x = (rng.integers(0, 256, (1, b, *shape)) / 127.5 - 1).astype(np.float32)
    batch = parallel.shard_batch({"x": x, "label": rng.integers(0, num_classes, (1, b)).astype(np.int32)},
                                 mesh, leading_axes=1)
    return trainer, mesh, state, batch


def full_step(trainer, mesh):
    """The trainer's jitted, sharded, donating step (what the loop runs)."""
    return parallel.data_parallel(lambda s, b: tr.train_step(trainer, s, b), mesh)


def bare_step(trainer):
    """Network forward + backward + optimizer update only: mean ||net(z, gamma) - eps||^2, same optimizer."""
    def step(carry, batch):
        params, opt_state = carry
        x = batch["x"][0]
        eps = batch["eps"]
        gamma = batch["gamma"]

        def loss(p):
            z = jnp.sqrt(jax.nn.sigmoid(-gamma))[:, None, None, None] * x \
                + jnp.sqrt(jax.nn.sigmoid(gamma))[:, None, None, None] * eps
            pred = trainer.apply_model(p["model"], z, gamma, batch["label"][0], train=True,
                                       dropout_key=jax.random.PRNGKey(0))
            return jnp.mean(jnp.square(pred - eps))

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = trainer.tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return jax.jit(step, donate_argnums=0)


def bare_inputs(batch, config):
    """The bare step's batch: x, labels, and fixed eps [B, ...] and gamma [B]."""
    x = batch["x"]
    b = config.training.batch_size
    return {"x": x, "label": batch["label"], "eps": jax.random.normal(jax.random.PRNGKey(1), x.shape[1:]),
            "gamma": jnp.linspace(config.model.gamma_min, config.model.gamma_max, b)}


def step_flops(fn, state, batch) -> float:
    """FLOPs of one compiled call of fn(state, batch), from XLA's cost analysis."""
    cost = fn.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def run(repeats: int, iters: int) -> list[tuple[str, str]]:
    rows = []
    # 1. The default config.
    c = load_config("fashion_mnist")
    trainer, mesh, state, batch = setup(c, (28, 28, 1))
    (sec,) = median_seconds([full_step(trainer, mesh)], [state], [batch], repeats=repeats, iters=iters)
    m = c.model
    rows.append((f"default config (fashion_mnist: {m.name} w{m.width} L{m.num_layers}, "
                 f"batch {c.training.batch_size}) train step",
                 f"{c.training.batch_size / sec:.1f} images/s ({sec * 1e3:.1f} ms/step)"))

    # 2. VDM UNet width 32, 2 layers, batch 32, 32x32x3: full step vs bare update.
    c = load_config("cifar10")
    c.model.update(width=32, num_layers=2, dropout=0.0)
    c.training.batch_size = 32
    trainer, mesh, state, batch = setup(c, (32, 32, 3))
    carry = (jax.tree.map(jnp.copy, state.params), jax.tree.map(jnp.copy, state.opt_state))
    full_sec, bare_sec = median_seconds([full_step(trainer, mesh), bare_step(trainer)], [state, carry],
                                        [batch, bare_inputs(batch, c)], repeats=repeats, iters=iters)
    rows.append(("vdm_unet w32 L2 batch 32 32x32x3: full train step", f"{32 / full_sec:.1f} images/s "
                 f"({full_sec * 1e3:.1f} ms/step)"))
    rows.append(("vdm_unet w32 L2 batch 32 32x32x3: bare fwd+bwd+update", f"{32 / bare_sec:.1f} images/s "
                 f"({bare_sec * 1e3:.1f} ms/step)"))
    rows.append(("ratio full / bare (target <= 1.10)", f"{full_sec / bare_sec:.3f}"))

    # 3. GPU: the paper's CIFAR-10 config in bfloat16, with model FLOP utilisation.
    dev = jax.devices()[0]
    if dev.platform == "gpu":
        c = load_config("cifar10")
        c.training.dtype = "bfloat16"
        trainer, mesh, state, batch = setup(c, (32, 32, 3))
        fn = full_step(trainer, mesh)
        flops = step_flops(fn, state, batch)
        (sec,) = median_seconds([fn], [state], [batch], repeats=repeats, iters=iters)
        peak = next((v for k, v in PEAK_BF16.items() if k in dev.device_kind), None)
        mfu = f"{flops / sec / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else "peak unknown"
        rows.append((f"cifar10 config bf16 (w128 L32 batch 128) on {dev.device_kind}",
                     f"{128 / sec:.1f} images/s, {flops / sec / 1e12:.1f} TFLOP/s, MFU {mfu}"))
    else:
        rows.append(("cifar10 config bf16 images/s and MFU", f"skipped: no GPU ({dev.platform})"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timings per measurement (median)")
    parser.add_argument("--iters", type=int, default=5, help="steps per timing")
    args = parser.parse_args()
    rows = run(args.repeats, args.iters)
    dev = jax.devices()[0]
    header = (f"device: {dev.device_kind} ({dev.platform}) x{jax.device_count()}, jax {jax.__version__}, "
              f"{os.cpu_count()} CPUs, {platform.machine()}; median of {args.repeats} x {args.iters} steps; "
              f"load average at the end {os.getloadavg()[0]:.1f} (other processes share the CPUs)")
    width = max(len(r[0]) for r in rows)
    print(header)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    os.makedirs(os.path.join(ROOT, "experiments", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "experiments", "results", "benchmark.md"), "w") as f:
        f.write("# Training throughput\n\n" + header + "\n\n| measurement | result |\n|---|---|\n")
        f.writelines(f"| {name} | {value} |\n" for name, value in rows)
        f.write("\nMeasured by `python experiments/benchmark.py`; synthetic on-device batches.\n")
    print("wrote experiments/results/benchmark.md")


if __name__ == "__main__":
    main()
