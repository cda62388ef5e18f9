"""Speed: compile time against depth, the paper config's throughput (and MFU on a GPU), the input pipeline, FID features.

    python experiments/benchmark.py [--size auto|gpu|cpu] [--sections default,depth,paper,pipeline,fid]
                                    [--repeats 5] [--iters 5]
    python experiments/benchmark.py --sections reference --reference_dir DIR

Sections (medians over `repeats` timings of `iters` steps each, after compiling; one run, so ratios
between rows are meaningful on a shared machine):
  depth     the VDM UNet's full train step (what the loop runs: loss, grads, AdamW, EMA) for 2, 8
            and 32 layers, blocks unrolled vs under nn.scan (config.model.scan_blocks): compile
            seconds (each cell in a fresh process, so nothing is cached) and step time;
  paper     configs/cifar10.py (the VDM paper's model and optimizer, batch 128) in float32 and
            bfloat16: images/s, and on a GPU TFLOP/s and model FLOP utilisation (the compiled step's
            FLOPs from XLA's cost analysis over the chip's dense peak); the reference code's 886
            images/s (H200, float32) is the target;
  pipeline  images/s that vdm.data.pipeline delivers from the array cache onto the devices (iterator, host
            slice, stack, device_put), against the train step's images/s, for the default config and
            for the paper config (CIFAR-10-shaped random 8-bit data written as an array cache);
  default   the default config's train step, and the full step / bare network update ratio;
  fid       features/s of the FID Inception-v3 (vdm.fid.inception_features, batches of 64 over all
            local devices) for 28x28 grey input (resized to 299x299 inside) and 299x299 RGB, and the
            seconds of the first call (weights load + compile); needs `make fid-weights`.
  reference our train step (scanned and unrolled blocks) against google-research/vdm's own
            train step at equal architecture (experiments/bench_reference.py; DIR is a checkout
            of it, loaded at run time): images/s and ours / reference, alternating timings, and
            the two self-attention blocks alone; run only when asked for (it needs
            --reference_dir); at --size cpu 8 layers, at gpu 32; writes benchmark[_gpu]_reference.md.
--size gpu is the paper's size (width 128, batch 128); --size cpu shrinks width and batch (32, 8)
so it runs on 2 cores. Prints a table; writes experiments/results/benchmark.md (benchmark_gpu.md
on a GPU) when all sections run, else benchmark[_gpu]_<sections>.md, so a partial run never
overwrites the full table. The timing harness (the synthetic batch, the compiled full and bare steps,
median timings, the per-process depth cells, the table) is experiments/bench_steps.py, shared with
experiments/dit_benchmark.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_reference
from experiments.bench_steps import (
    ROOT,
    bare_inputs,
    bare_step,
    child_depth_rows,
    compiled_step,
    full_step,
    load_config,
    median_seconds,
    setup,
    write_table,
)
from vdm.data import pipeline
from vdm.infra import parallel

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}  # dense, SXM datasheets
PEAK_TF32 = {"H100": 494e12, "H200": 494e12, "A100": 156e12, "B200": 1100e12}  # float32 matmuls run as TF32
REFERENCE_IMAGES_PER_S = 886.0  # google-research/vdm's model code, paper size, float32, one H200
SIZES = {"gpu": {"width": 128, "batch": 128}, "cpu": {"width": 32, "batch": 8}}
ALL_SECTIONS = ("default", "depth", "paper", "pipeline", "fid")
REFERENCE_SECTIONS = ("reference",)  # only when asked for: it needs --reference_dir
REFERENCE_LAYERS = {128: 32, 32: 8}  # num_layers of the reference comparison by width


def paper_config(size: dict, *, num_layers: int = 32, scan: bool = True, dtype: str = "float32"):
    """configs/cifar10.py at `size` (width, batch), with num_layers, scan_blocks and the compute dtype."""
    c = load_config("cifar10")
    c.model.update(width=size["width"], num_layers=num_layers, scan_blocks=scan)
    if size["width"] < 64:
        c.model.norm_groups = 0  # 32 groups need >= 64 channels; adaptive below
    c.training.batch_size = size["batch"]
    c.training.dtype = dtype
    return c


# ----------------------------------------------------------------------------- sections


def depth_cell(size: dict, num_layers: int, scan: bool, repeats: int, iters: int) -> dict:
    """Compile seconds and step seconds of the paper model with num_layers blocks (run in a fresh process)."""
    compiled, state, batch, seconds, _ = compiled_step(paper_config(size, num_layers=num_layers, scan=scan))
    (step,) = median_seconds([compiled], [state], [batch], repeats=repeats, iters=iters)
    return {"compile_s": seconds, "step_s": step}


def depth_rows(size: dict, repeats: int, iters: int) -> list[tuple[str, str]]:
    """One row per (layers, layout): compile seconds and ms/step, each cell in its own process."""
    return child_depth_rows(os.path.abspath(__file__), "depth", "", size, (2, 8, 32), repeats, iters, timeout=1800)


def paper_rows(size: dict, repeats: int, iters: int) -> tuple[list[tuple[str, str]], float]:
    """The paper config in float32 and bfloat16: images/s (and MFU on GPU); returns (rows, float32 images/s)."""
    dev, rows, f32_rate = jax.devices()[0], [], float("nan")
    for dtype, peaks in (("float32", PEAK_TF32), ("bfloat16", PEAK_BF16)):
        c = paper_config(size, dtype=dtype)
        compiled, state, batch, seconds, flops = compiled_step(c)
        (sec,) = median_seconds([compiled], [state], [batch], repeats=repeats, iters=iters)
        rate = c.training.batch_size / sec
        f32_rate = rate if dtype == "float32" else f32_rate
        text = f"{rate:.1f} images/s ({sec * 1e3:.1f} ms/step), compile {seconds:.1f} s"
        peak = next((v for k, v in peaks.items() if k in dev.device_kind), None)
        if dev.platform == "gpu":
            text += f", {flops / sec / 1e12:.1f} TFLOP/s"
            text += f", MFU {flops / sec / peak:.1%} of {peak / 1e12:.0f}" if peak else ", peak unknown"
            text += f"; {rate / REFERENCE_IMAGES_PER_S:.2f}x the reference's 886 images/s (H200 float32)"
        rows.append(
            (
                f"paper config (cifar10: w{size['width']} L32 scan, batch {size['batch']}) {dtype} "
                f"on {dev.device_kind}",
                text,
            )
        )
    return rows, f32_rate


def pipeline_rate(data_config, batch_size: int, mesh, *, num_batches: int) -> float:
    """Images/s from pipeline.train_iterator through host_slice, stacking and shard_batch to ready device arrays."""
    it = pipeline.train_iterator(data_config, batch_size, seed=0)
    next(it)  # load the split first
    t0 = time.perf_counter()
    for _ in range(num_batches):
        b = parallel.host_slice(next(it), batch_size)
        out = parallel.shard_batch({k: b[k][None] for k in ("x", "label")}, mesh, leading_axes=1)
    jax.block_until_ready(out)
    return num_batches * batch_size / (time.perf_counter() - t0)


def synthetic_cifar_cache(folder: str) -> dict:
    """A CIFAR-10-shaped array cache (random uint8 50000 x 32x32x3, 10 classes) in DATA_DIR=folder; its config.data."""
    from vdm.data import tfds_sets

    rng = np.random.default_rng(0)
    info = {"shape": (32, 32, 3), "num_train": 50_000, "num_test": 10_000, "num_classes": 10}
    for split, n in (("train", 50_000), ("test", 10_000)):
        tfds_sets.write_array_cache(
            "cifar10",
            folder,
            split,
            rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
            rng.integers(0, 10, n).astype(np.int32),
            info,
        )
    c = load_config("cifar10").data
    c.data_dir = folder
    return c


def pipeline_rows(size: dict, step_rates: dict) -> list[tuple[str, str]]:
    """Input pipeline images/s against the train step's, for the default config and the paper config."""
    mesh, rows = parallel.make_mesh(), []
    default = load_config("fashion_mnist")
    with tempfile.TemporaryDirectory() as folder:
        cases = (
            ("default config (fashion_mnist)", default.data, default.training.batch_size, "default"),
            (
                f"paper config (CIFAR-10-shaped cache), batch {size['batch']}",
                synthetic_cifar_cache(folder),
                size["batch"],
                "paper",
            ),
        )
        for name, data_config, batch, key in cases:
            rate = pipeline_rate(data_config, batch, mesh, num_batches=max(20, 20_000 // batch))
            step = step_rates.get(key, float("nan"))
            rows.append(
                (
                    f"pipeline: {name}",
                    f"{rate:.0f} images/s to device; train step {step:.1f} images/s; "
                    f"pipeline / step = {rate / step:.0f}x",
                )
            )
    return rows


def default_rows(repeats: int, iters: int) -> tuple[list[tuple[str, str]], float]:
    """The default config's train step, and the w32 L2 full step vs the bare network update."""
    c = load_config("fashion_mnist")
    trainer, mesh, state, batch = setup(c, (28, 28, 1))
    (sec,) = median_seconds([full_step(trainer, mesh)], [state], [batch], repeats=repeats, iters=iters)
    rate = c.training.batch_size / sec
    rows = [
        (
            f"default config (fashion_mnist: {c.model.name} w{c.model.width}, batch "
            f"{c.training.batch_size}) train step",
            f"{rate:.1f} images/s ({sec * 1e3:.1f} ms/step)",
        )
    ]
    c = paper_config({"width": 32, "batch": 32}, num_layers=2, scan=False)
    c.model.dropout = 0.0
    trainer, mesh, state, batch = setup(c, (32, 32, 3))
    carry = (jax.tree.map(jnp.copy, state.params), jax.tree.map(jnp.copy, state.opt_state))
    full_sec, bare_sec = median_seconds(
        [full_step(trainer, mesh), bare_step(trainer)],
        [state, carry],
        [batch, bare_inputs(batch, c)],
        repeats=repeats,
        iters=iters,
    )
    rows.append(
        (
            "vdm_unet w32 L2 batch 32 32x32x3: full train step / bare fwd+bwd+update (target <= 1.10)",
            f"{full_sec / bare_sec:.3f} ({32 / full_sec:.1f} vs {32 / bare_sec:.1f} images/s)",
        )
    )
    return rows, rate


def fid_rows(repeats: int, iters: int, batch: int = 64) -> list[tuple[str, str]]:
    """Features/s of vdm.fid.inception_features at 28x28x1 and 299x299x3 (median of repeats x iters batches)."""
    from vdm import fid
    from vdm.evaluation import fid_weights

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    try:
        net = fid.load_inception()
    except fid_weights.WeightsError as e:
        return [("fid: Inception-v3 pool features", f"not measured: {e}")]
    fid.inception_features(np.zeros((batch, 28, 28, 1), np.uint8), net=net, batch_size=batch)
    first = time.perf_counter() - t0
    rows = []
    for shape in ((28, 28, 1), (299, 299, 3)):
        images = rng.integers(0, 256, (batch * iters, *shape), dtype=np.uint8)
        fid.inception_features(images[:batch], net=net, batch_size=batch)  # compiled for this shape
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fid.inception_features(images, net=net, batch_size=batch)
            times.append(time.perf_counter() - t)
        rate = len(images) / statistics.median(times)
        rows.append(
            (
                f"fid: Inception-v3 pool features, {shape[0]}x{shape[1]}x{shape[2]} uint8 input, batch {batch}",
                f"{rate:.1f} features/s ({jax.local_device_count()} device(s))",
            )
        )
    rows.append(("fid: first call (weights load + sha256 + compile), 28x28x1", f"{first:.1f} s"))
    return rows


def run(
    size: dict, sections: list[str], repeats: int, iters: int, report=lambda rows: None, reference_dir: str = ""
) -> list[tuple[str, str]]:
    """The requested sections' rows in the order asked (the pipeline compares against step rates measured here);
    report(rows so far) after each section, so a run cut short keeps what it measured."""
    rows, rates = [], {}
    for section in sections:
        if section == "default" or (section == "pipeline" and "default" not in rates):
            r, rates["default"] = default_rows(repeats, iters)
            rows += r if section == "default" else []
        if section == "paper" or (section == "pipeline" and "paper" not in rates):
            r, rates["paper"] = paper_rows(size, repeats, iters)
            rows += r if section == "paper" else []
        if section == "depth":
            rows += depth_rows(size, repeats, iters)
        if section == "pipeline":
            rows += pipeline_rows(size, rates)
        if section == "fid":
            rows += fid_rows(repeats, iters)
        if section in REFERENCE_SECTIONS:
            ref_size = {**size, "num_layers": REFERENCE_LAYERS[size["width"]]}
            rows += bench_reference.reference_rows(ref_size, reference_dir, repeats, iters)
        report(rows)
    return rows


def main() -> None:
    """Parse the flags, run the sections, write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="auto", choices=("auto", "gpu", "cpu"))
    parser.add_argument("--sections", default=",".join(ALL_SECTIONS))
    parser.add_argument("--repeats", type=int, default=5, help="timings per measurement (median)")
    parser.add_argument("--iters", type=int, default=5, help="steps per timing")
    parser.add_argument("--reference_dir", default="", help="google-research/vdm checkout (section reference)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(depth_cell(*json.loads(args.child))))
        return
    dev = jax.devices()[0]
    size = SIZES[
        "gpu" if (args.size == "auto" and dev.platform == "gpu") else ("cpu" if args.size == "auto" else args.size)
    ]
    header = (
        f"device: {dev.device_kind} ({dev.platform}) x{jax.device_count()}, jax {jax.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}; median of {args.repeats} x {args.iters} steps; "
        f"{time.strftime('%Y-%m-%d')}"
    )
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(ALL_SECTIONS) - set(REFERENCE_SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; valid: {', '.join(ALL_SECTIONS + REFERENCE_SECTIONS)}")
    if set(sections) & set(REFERENCE_SECTIONS) and not args.reference_dir:
        parser.error("section reference needs --reference_dir (a google-research/vdm checkout)")
    name = "benchmark_gpu" if dev.platform == "gpu" else "benchmark"
    if set(sections) <= set(REFERENCE_SECTIONS):
        name += "_reference"
    else:
        name += "" if set(sections) == set(ALL_SECTIONS) else "_" + "_".join(sections)
    path = os.path.join(ROOT, "experiments", "results", name + ".md")
    run(
        size,
        sections,
        args.repeats,
        args.iters,
        report=lambda rows: write_table(rows, header + f"; load average {os.getloadavg()[0]:.1f}", path),
        reference_dir=args.reference_dir,
    )


if __name__ == "__main__":
    main()
