"""Speed of the DiT denoiser: compile time and step time against depth, scanned vs unrolled; DiT vs the UNet.

    python experiments/dit_benchmark.py [--size auto|gpu|cpu] [--sections dit_depth,fashion_mnist]
                                        [--repeats 3] [--iters 2]

Sections (medians over `repeats` timings of `iters` steps each, after compiling; the full train step the loop
runs: loss, grads, AdamW, EMA):
  dit_depth      configs/cifar10.py:dit (32x32x3, patch 2: 256 tokens) with 2, 8 and 28 blocks, unrolled vs
                 under nn.scan (config.model.scan_blocks): compile seconds (each cell in a fresh process, so
                 nothing is cached) and ms/step; --size gpu is DiT-S/2 (width 384, 6 heads) at batch 128,
                 --size cpu width 64 (4 heads) at batch 8, so it runs on 2 cores;
  fashion_mnist  the default config's train step (the ADM UNet) against configs/fashion_mnist.py:dit's, batch 32,
                 on 28x28x1: ms/step, compile seconds and parameter count side by side.
Prints a table; writes experiments/results/dit_benchmark[_gpu].md (with a section list when not all ran).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax

from experiments import bench_steps

ROOT = bench_steps.ROOT
SIZES = {"gpu": {"width": 384, "heads": 6, "batch": 128}, "cpu": {"width": 64, "heads": 4, "batch": 8}}
DEPTHS = (2, 8, 28)  # blocks: DiT-S/B's 12 lies between; 28 is DiT-XL's depth
ALL_SECTIONS = ("dit_depth", "fashion_mnist")


def dit_config(size: dict, num_layers: int, scan: bool):
    """configs/cifar10.py:dit at `size` (width, heads, batch) with num_layers blocks, scanned or unrolled."""
    c = bench_steps.load_config("cifar10", "dit")
    c.model.update(width=size["width"], num_heads=size["heads"], num_layers=num_layers, scan_blocks=scan)
    c.training.batch_size = size["batch"]
    return c


def depth_cell(size: dict, num_layers: int, scan: bool, repeats: int, iters: int) -> dict:
    """Compile seconds and step seconds of DiT with num_layers blocks (run in a fresh process)."""
    compiled, state, batch, seconds, _ = bench_steps.compiled_step(dit_config(size, num_layers, scan))
    (step,) = bench_steps.median_seconds([compiled], [state], [batch], repeats=repeats, iters=iters)
    return {"compile_s": seconds, "step_s": step}


def depth_rows(size: dict, repeats: int, iters: int) -> list[tuple[str, str]]:
    """One row per (blocks, layout): compile seconds and ms/step, each cell in its own process."""
    script = os.path.abspath(__file__)
    return bench_steps.child_depth_rows(script, "dit_depth", " p2", size, DEPTHS, repeats, iters, timeout=3600)


def fashion_mnist_rows(repeats: int, iters: int) -> list[tuple[str, str]]:
    """The default config's train step (the ADM UNet) and :dit's, timed in alternation on 28x28x1, batch 32."""
    steps, states, batches, rows = [], [], [], []
    for arg in ("", "dit"):
        c = bench_steps.load_config("fashion_mnist", arg)
        compiled, state, batch, seconds, _ = bench_steps.compiled_step(c, shape=(28, 28, 1))
        steps.append(compiled)
        states.append(state)
        batches.append(batch)
        params = sum(x.size for x in jax.tree.leaves(state.params))
        m = c.model
        net = f"dit w{m.width} L{m.num_layers} p{m.patch_size}" if m.name == "dit" else f"{m.name} w{m.width}"
        rows.append(
            (f"fashion_mnist{':' + arg if arg else ''} ({net}, batch {c.training.batch_size})", seconds, params)
        )
    times = bench_steps.median_seconds(steps, states, batches, repeats=repeats, iters=iters)
    return [
        (f"{name} train step", f"{sec * 1e3:.1f} ms/step, compile {compile_s:.1f} s, {params / 1e6:.2f} M parameters")
        for (name, compile_s, params), sec in zip(rows, times)
    ]


def main() -> None:
    """Parse the flags, run the sections, write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="auto", choices=("auto", "gpu", "cpu"))
    parser.add_argument("--sections", default=",".join(ALL_SECTIONS))
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement (median)")
    parser.add_argument("--iters", type=int, default=2, help="steps per timing")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(depth_cell(*json.loads(args.child))))
        return
    dev = jax.devices()[0]
    size = SIZES[
        "gpu" if (args.size == "auto" and dev.platform == "gpu") else ("cpu" if args.size == "auto" else args.size)
    ]
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(ALL_SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; valid: {', '.join(ALL_SECTIONS)}")
    name = "dit_benchmark" + ("_gpu" if dev.platform == "gpu" else "")
    name += "" if set(sections) == set(ALL_SECTIONS) else "_" + "_".join(sections)
    path = os.path.join(ROOT, "experiments", "results", name + ".md")
    rows = []
    for section in sections:
        rows += depth_rows(size, args.repeats, args.iters) if section == "dit_depth" else []
        rows += fashion_mnist_rows(args.repeats, args.iters) if section == "fashion_mnist" else []
        header = (
            f"device: {dev.device_kind} ({dev.platform}) x{jax.device_count()}, jax {jax.__version__}, "
            f"{os.cpu_count()} CPUs, {platform.machine()}; median of {args.repeats} x {args.iters} steps; "
            f"{time.strftime('%Y-%m-%d')}; load average {os.getloadavg()[0]:.1f}"
        )
        bench_steps.write_table(rows, header, path, script="experiments/dit_benchmark.py")


if __name__ == "__main__":
    main()
