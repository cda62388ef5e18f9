"""Sampler benchmarks: (a) overhead per network evaluation, (b) sample error vs evaluations.

(a) A small MLP denoiser (Fourier time features, `--depth` x `--hidden` SiLU layers) on a batch
    of 2-D points. For each sampler, the wall time of one jitted `sample` call, per network
    evaluation (NFE, vdm.sampling.num_evaluations), is compared with bare forward passes of the
    same batch: (i) NFE chained evaluations inside one lax.scan, (ii) NFE chained calls of the
    jitted forward pass from Python. Target: ratio <= 1.05. On a shared machine these ratios
    drift with the load, so the sampler's own work is also timed with a ~free denoiser, giving
    the implied ratio 1 + (own time per NFE) / (forward time per NFE).
(b) The 2-D Gaussian mixture of vdm/core/analytic.py with its exact denoiser: energy distance
    between n samples and n true samples, for each method and step count; the first row is
    the floor, the distance between two independent true samples.

    python experiments/bench_samplers.py            # writes experiments/results/bench_samplers.md
    python experiments/bench_samplers.py --quick    # smaller, for a smoke run
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vdm import sampling, schedules
from vdm.core import analytic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = [
    ("ancestral", {}),
    ("ddim", {}),
    ("sde", {}),
    ("ode", {}),
    ("pc", {}),
    ("dpm_solver", {"order": 2}),
    ("dpm_solver", {"order": 3}),
]
QUALITY_METHODS = METHODS + [("ddim", {"eta": 1.0}), ("dpm_solver", {"order": 3, "lower_order_final": False})]


def label(method: str, opts: dict) -> str:
    return method + "".join(f" {k}={v}" for k, v in opts.items())


# ----------------------------------------------------------------------------- (a) overhead


def init_mlp(key, dim: int, hidden: int, depth: int, num_freqs: int = 8):
    sizes = [dim + 2 * num_freqs] + [hidden] * depth + [dim]
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros((b,))) for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp(params, z, t):
    """eps_hat(z, t): SiLU MLP on [z, sin/cos(2^k pi t)]; z [B, D], t [B]."""
    freqs = jnp.pi * 2.0 ** jnp.arange(8)
    h = jnp.concatenate([z, jnp.sin(t[:, None] * freqs), jnp.cos(t[:, None] * freqs)], axis=-1)
    for w, b in params[:-1]:
        h = jax.nn.silu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def bench_overhead(args) -> str:
    """Sampler vs NFE bare forward passes (in a lax.scan, and as jitted calls from Python), timed in
    turn within each repeat; medians of the per-repeat times and ratios."""
    sched = schedules.linear_logsnr()
    params = init_mlp(jax.random.key(0), 2, args.hidden, args.depth)
    z = jax.random.normal(jax.random.key(1), (args.batch, 2))
    t = jnp.full((args.batch,), 0.5)
    forward = jax.jit(mlp)
    jax.block_until_ready(forward(params, z, t))

    def python_loop(params, z, nfe):
        for _ in range(nfe):
            z = forward(params, z, t)
        return z

    rows = [
        f"batch {args.batch}, MLP {args.depth} x {args.hidden} (SiLU), {args.steps} steps; medians over "
        f"{args.repeats} repeats, each timing back to back the sampler, a lax.scan of NFE chained forward "
        "passes, and NFE chained calls of the jitted forward pass from Python (so load drift on a "
        "shared machine hits all three alike). The sampler's own cost is measured with a ~free "
        "denoiser (0.1 z); implied ratio = 1 + that cost / (scan ms per NFE), insensitive to load drift.\n",
        "| method | NFE | sampler ms | sampler ms / NFE | scan of forwards, ms / NFE | forward calls, ms / NFE "
        "| ratio vs scan | ratio vs forward calls | sampler's own us / NFE | implied ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, opts in METHODS:
        nfe = sampling.num_evaluations(method, args.steps, schedule=sched, **opts)

        def with_denoiser(fn, method=method, opts=opts):
            return lambda key: sampling.sample(
                fn, (args.batch, 2), key, schedule=sched, method=method, num_steps=args.steps, **opts
            )

        run = jax.jit(lambda params, key: with_denoiser(lambda zz, tt: mlp(params, zz, tt))(key))
        run_free = jax.jit(with_denoiser(lambda zz, tt: 0.1 * zz))  # the sampler's own work: a ~free denoiser

        @jax.jit
        def loop(params, z, nfe=nfe):
            return jax.lax.scan(lambda zz, _: (mlp(params, zz, t), None), z, None, length=nfe)[0]

        jax.block_until_ready(run(params, jax.random.key(2)))
        jax.block_until_ready(loop(params, z))
        jax.block_until_ready(run_free(jax.random.key(2)))
        t_run, t_loop, t_fwd, t_free = [], [], [], []
        for r in range(args.repeats):
            t_free.append(seconds(run_free, jax.random.key(r)))
            t_run.append(seconds(run, params, jax.random.key(r)))
            t_loop.append(seconds(loop, params, z))
            t_fwd.append(seconds(python_loop, params, z, nfe))
        t_run, t_loop, t_fwd, t_free = map(np.asarray, (t_run, t_loop, t_fwd, t_free))
        overhead = np.median(t_free) / nfe
        rows.append(
            f"| {label(method, opts)} | {nfe} | {1e3 * np.median(t_run):.1f} | "
            f"{1e3 * np.median(t_run) / nfe:.3f} | {1e3 * np.median(t_loop) / nfe:.3f} | "
            f"{1e3 * np.median(t_fwd) / nfe:.3f} | {np.median(t_run / t_loop):.3f} | "
            f"{np.median(t_run / t_fwd):.3f} | {1e6 * overhead:.1f} | "
            f"{1 + overhead / (np.median(t_loop) / nfe):.4f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


# ----------------------------------------------------------------------------- (b) quality


def bench_quality(args) -> str:
    sched = schedules.linear_logsnr()
    mix = analytic.default_mixture()
    fn = analytic.denoise_fn(mix, sched)
    ref, _ = mix.sample(jax.random.key(100), args.samples)
    floor, _ = mix.sample(jax.random.key(101), args.samples)
    pair_dist = jnp.sqrt(jnp.maximum(jnp.sum((ref[:, None] - ref[None]) ** 2, -1), 1e-30))
    null = 2.0 * float(jnp.mean(pair_dist)) / args.samples
    rows = [
        f"2-D mixture, exact denoiser, linear_logsnr(-13.3, 5), n = {args.samples} samples vs n true, one seed; "
        "energy distance x 1e3 (default grid per method; NFE includes the final denoising step). "
        f"Expected value for exact samples (V-statistic bias 2 E|X-X'|/n): {1e3 * null:.2f}; "
        "the deterministic samplers share z_1, so they converge to the same value.\n",
        "| method | steps | NFE | energy distance x 1e3 |",
        "|---|---|---|---|",
        f"| true vs true (floor) | - | - | {1e3 * float(analytic.energy_distance(floor, ref)):.2f} |",
    ]
    for method, opts in QUALITY_METHODS:
        for steps in args.quality_steps:
            x = sampling.sample(
                fn, (args.samples, 2), jax.random.key(7), schedule=sched, method=method, num_steps=steps, **opts
            )
            nfe = sampling.num_evaluations(method, steps, schedule=sched, **opts)
            ed = float(analytic.energy_distance(x, ref))
            rows.append(f"| {label(method, opts)} | {steps} | {nfe} | {1e3 * ed:.2f} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def define_flags() -> None:
    """The command-line flags (absl), defined only when run as a script."""
    flags.DEFINE_integer("batch", 1024, "samples per sampler call (timing)")
    flags.DEFINE_integer("hidden", 512, "MLP width of the timed network")
    flags.DEFINE_integer("depth", 3, "MLP depth of the timed network")
    flags.DEFINE_integer("steps", 50, "sampler steps (timing)")
    flags.DEFINE_integer("repeats", 7, "timings per measurement (median)")
    flags.DEFINE_integer("samples", 4000, "samples per quality measurement")
    flags.DEFINE_list("quality_steps", ["5", "10", "20", "50", "100", "250"], "step counts of the quality table")
    flags.DEFINE_bool("quick", False, "small sizes for a smoke run")
    flags.DEFINE_string("out", os.path.join(ROOT, "experiments", "results", "bench_samplers.md"), "output table")


def main(argv: list[str]) -> None:
    """Run both benchmarks, print them and write the markdown report."""
    del argv
    args = flags.FLAGS
    args.quality_steps = [int(v) for v in args.quality_steps]
    if args.quick:
        args.batch, args.hidden, args.steps, args.repeats, args.samples = 256, 128, 10, 3, 1000
        args.quality_steps = [5, 20]
    device = jax.devices()[0]
    header = (
        f"# Sampler benchmarks\n\n{datetime.date.today()}, jax {jax.__version__}, "
        f"{device.platform} ({device.device_kind}), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores. `python experiments/bench_samplers.py`\n"
    )
    print(header)
    print("## (a) Time per network evaluation\n")
    overhead = bench_overhead(args)
    print("\n## (b) Sample error vs network evaluations\n")
    quality = bench_quality(args)
    report = (
        f"{header}\n## (a) Time per network evaluation\n\n{overhead}\n\n"
        f"## (b) Sample error vs network evaluations\n\n{quality}\n"
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
