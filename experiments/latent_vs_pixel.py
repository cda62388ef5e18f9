"""Pixel vs latent diffusion on Fashion-MNIST at equal training compute: bits/dim, Inception FID/KID, seconds per image.

    python experiments/latent_vs_pixel.py [--root=runs/latent_vs_pixel] [--fid_samples=500] \
        [--sample_steps=100] [--latent_steps=0] [--out=experiments/results/latent_vs_pixel.csv] [--tiny]

Three runs, each the command a user runs (printed before it starts; a finished run is not redone):
  pixel   python -m vdm.main --config=configs/fashion_mnist.py --workdir=ROOT/pixel
  ae      python -m vdm.main --config=configs/fashion_mnist_ae.py --workdir=ROOT/ae
  latent  python -m vdm.main --config=configs/fashion_mnist.py:latent --config.latent.autoencoder_workdir=ROOT/ae \
              --config.training.num_steps=N --config.training.eval_every=N --workdir=ROOT/latent
The latent model's budget is the pixel model's: N (unless --latent_steps) is chosen so that the
autoencoder's and the latent prior's training seconds add up to the pixel model's, from the prior's
steady steps per second in a 200-step probe run (ROOT/latent_probe; its first window, with the
compilation, left out). Training seconds are the loop's own
(metrics.jsonl: steps / train/steps_per_sec per logged window; evaluation excluded, compilation in).

Per model: the test bits/dim of its bound (the pixel model's -ELBO; the latent model's three-term
bound, vdm.tasks.latent_task), with its standard error; --fid_samples samples drawn with
config.sampling.method=ancestral and --sample_steps steps in chunks of 100 (decoded by the decoder's
mean for the latent model), timed after a warm-up chunk, and saved beside the run (.npz); and their Inception FID and KID
(vdm.fid) against the cached statistics of the train split's first --fid_reference_examples. The table goes to --out (CSV) and is
printed; the machine and the load are printed with it. --tiny: the `:small` configs and a few
samples, no FID (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = (
    "model",
    "bpd",
    "bpd_se",
    "fid",
    "kid",
    "kid_se",
    "train_s_per_image",
    "sample_s_per_image",
    "num_samples",
    "num_reference",
    "train_steps",
)


def run_command(args: list[str]) -> None:
    """Run one CLI command from the repository root (printed first); raise with its stderr's tail if it fails."""
    print("$ python " + " ".join(shlex.quote(a) for a in args), flush=True)
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def logged_rates(workdir: str) -> dict[int, float]:
    """{step: train/steps_per_sec of the window ending there} from metrics.jsonl (the last record per step)."""
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if "train/steps_per_sec" in r:
                rows[r["step"]] = r["train/steps_per_sec"]
    return rows


def steady_rate(workdir: str) -> float:
    """Steps per second of a run's logged windows after the first (which holds the compilation)."""
    rows = logged_rates(workdir)
    steps = sorted(rows)
    later = [(s - prev, s) for prev, s in zip(steps[:-1], steps[1:])]
    return sum(n for n, _ in later) / sum(n / rows[s] for n, s in later)


def train_seconds(workdir: str) -> tuple[float, int, int]:
    """(training seconds, steps, batch size) of a run from its metrics.jsonl and config.json (the last record per step)."""
    rows = logged_rates(workdir)
    steps = sorted(rows)
    seconds = sum((s - prev) / rows[s] for prev, s in zip([0] + steps[:-1], steps))
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        batch = json.load(f)["training"]["batch_size"]
    return seconds, steps[-1], batch


def final_eval(workdir: str) -> dict:
    """The loop's final eval of a finished run (workdir/final_eval.json)."""
    with open(os.path.join(workdir, "final_eval.json"), encoding="utf-8") as f:
        return json.load(f)["result"]


def sample_and_score(workdir: str, num: int, steps: int, fid: bool, num_reference: int) -> dict:
    """Seconds per sample (after a warm-up call of the same size) and Inception FID/KID of `num` ancestral samples,
    measured once per (num, steps, fid, num_reference) and kept in workdir/latent_vs_pixel_samples.json."""
    path = os.path.join(workdir, "latent_vs_pixel_samples.json")
    done = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {}
    tag = f"{num}_{steps}_{int(fid)}_{num_reference}"
    if tag not in done:
        done[tag] = _sample_and_score(workdir, num, steps, fid, num_reference)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(done, f, indent=1)
    return done[tag]


def _sample_and_score(workdir: str, num: int, steps: int, fid: bool, num_reference: int) -> dict:
    """sample_and_score, measured: `num` samples in chunks of up to 100 (one warm-up chunk first), saved beside the run."""
    import jax

    from vdm.cli import modes
    from vdm.config import record

    config = record.load_recorded(workdir)
    config.sampling.method, config.sampling.num_steps = "ancestral", steps
    config = record.inference_config(workdir, config)[0]
    task, _, state, step = modes.restore_for_inference(config, workdir, mode="sample")
    chunk = min(num, 100)
    sampler = task.sampler(chunk)
    key = jax.random.PRNGKey(config.seed + 7)
    jax.block_until_ready(sampler(state.ema_params, jax.random.fold_in(key, 10**6)))  # compile (a key no chunk uses)
    t0 = time.perf_counter()
    samples = np.concatenate(
        [
            np.asarray(jax.block_until_ready(sampler(state.ema_params, jax.random.fold_in(key, i))))
            for i in range(-(-num // chunk))
        ]
    )[:num]
    out = {"sample_s_per_image": (time.perf_counter() - t0) / num, "num_samples": num}
    np.savez(os.path.join(workdir, f"latent_vs_pixel_samples_{num}_{steps}.npz"), samples=samples)
    if fid:
        from vdm import fid as fid_lib

        scores = fid_lib.score_samples(
            samples,
            f"{config.data.dataset}:train",
            num_reference=num_reference,
            encoding_name=task.data_info.encoding,
            kid_subset_size=min(1000, num),
        )
        out.update(fid=scores["fid"], kid=scores["kid"], kid_se=scores["kid_se"], num_reference=scores["num_reference"])
    return out


def budget_steps(latent: list[str], probe_dir: str, seconds: float, probe: int) -> int:
    """The prior's steps (a multiple of 100, at least `probe`) that fill `seconds` at the steady rate of a `probe`-step
    run logged every probe/10 steps (its compilation, in the first window, left out)."""
    run_command(
        latent
        + [
            f"--config.training.num_steps={probe}",
            f"--config.training.eval_every={probe}",
            f"--config.training.log_every={probe // 10}",
            "--config.eval.max_examples=200",
            f"--workdir={probe_dir}",
        ]
    )
    return max(probe, int(round(max(seconds, 0.0) * steady_rate(probe_dir) / 100)) * 100)


def measure(
    name: str, workdir: str, extra_seconds: float, num: int, sample_steps: int, fid: bool, num_reference: int = 10_000
) -> dict:
    """One row of the table: the run's bound (final eval), training seconds per image (+ extra_seconds), samples."""
    seconds, n_steps, batch = train_seconds(workdir)
    result = final_eval(workdir)
    row = {
        "model": name,
        "bpd": result["eval/bpd"],
        "bpd_se": result["eval/bpd_se"],
        "train_s_per_image": (seconds + extra_seconds) / (n_steps * batch),
        "train_steps": n_steps,
        **sample_and_score(workdir, num, sample_steps, fid, num_reference),
    }
    return {k: row.get(k, "") for k in COLUMNS}


def main(argv: list[str] | None = None) -> int:
    """Train (or reuse) the three runs, measure them, write and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="runs/latent_vs_pixel")
    p.add_argument("--fid_samples", type=int, default=500)
    p.add_argument(
        "--fid_reference_examples",
        type=int,
        default=10_000,
        help="the train split's first N as the reference (cached once; all 60,000 take 1.5-2 h on 2 CPU cores)",
    )
    p.add_argument("--sample_steps", type=int, default=100)
    p.add_argument("--latent_steps", type=int, default=0, help="the latent prior's steps (0: the pixel model's budget)")
    p.add_argument("--out", default="experiments/results/latent_vs_pixel.csv")
    p.add_argument("--tiny", action="store_true", help="`:small` configs, 8 samples, no FID")
    p.add_argument(
        "--small_kl",
        action="store_true",
        help="add a row: the autoencoder of `:small_kl` (KL weight 1e-3, "
        "latent diffusion's usual recipe) and its prior, at the same budget",
    )
    a = p.parse_args(argv)
    small = ",small" if a.tiny else ""
    root = os.path.abspath(a.root)
    pixel = os.path.join(root, "pixel")
    run_command(
        ["-m", "vdm.main", f"--config=configs/fashion_mnist.py{':small' if a.tiny else ''}", f"--workdir={pixel}"]
    )
    pixel_s, pixel_steps, pixel_batch = train_seconds(pixel)
    print(f"pixel: {pixel_steps} steps x {pixel_batch} in {pixel_s:.0f} s of training", flush=True)
    num = 8 if a.tiny else a.fid_samples
    sample_steps = 5 if a.tiny else a.sample_steps
    ref = a.fid_reference_examples
    rows = [measure("pixel", pixel, 0.0, num, sample_steps, not a.tiny, ref)]
    for name, variant in (("latent", ""), ("latent_small_kl", "small_kl"))[: 2 if a.small_kl else 1]:
        ae = os.path.join(root, "ae" + (f"_{variant}" if variant else ""))
        ae_variants = ",".join(filter(None, (variant, "small" if a.tiny else "")))
        ae_config = "configs/fashion_mnist_ae.py" + (f":{ae_variants}" if ae_variants else "")
        run_command(["-m", "vdm.main", f"--config={ae_config}", f"--workdir={ae}"])
        ae_s = train_seconds(ae)[0]
        workdir = os.path.join(root, name)
        latent = [
            "-m",
            "vdm.main",
            f"--config=configs/fashion_mnist.py:latent{small}",
            f"--config.latent.autoencoder_workdir={ae}",
        ]
        steps = a.latent_steps or budget_steps(latent, workdir + "_probe", pixel_s - ae_s, 20 if a.tiny else 200)
        run_command(
            latent
            + [f"--config.training.num_steps={steps}", f"--config.training.eval_every={steps}", f"--workdir={workdir}"]
        )
        print(f"{name}: autoencoder {ae_s:.0f} s + prior {steps} steps", flush=True)
        rows.append(measure(name, workdir, ae_s, num, sample_steps, not a.tiny, ref))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f} now"
    )
    print(",".join(COLUMNS))
    for r in rows:
        print(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in r.values()))
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
