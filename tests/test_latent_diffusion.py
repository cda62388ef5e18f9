"""Latent diffusion end to end, as a user runs it: the autoencoder Task (train, kill -9, resume), the latent model on
its latents (train, --mode=eval, --mode=sample, joint fine-tuning on resume) and the clear errors of bad input.

The math of the bound is checked against closed forms in tests/test_latent_bound.py; here the runs'
numbers are checked for what must hold of any run: the three terms add up to the bound, the frozen
autoencoder stays bit-identical, the recorded result is what --mode=eval returns.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, run_cli, sigkill_past_checkpoint
from vdm.cli import modes
from vdm.config import record, validation
from vdm.infra.checkpoint import Checkpointer
from vdm.infra.metrics import read_metrics
from vdm.infra.optim import TrainState
from vdm.tasks import latent_task
from vdm.tasks.autoencoder_task import load_autoencoder, train_autoencoder

AE_SMALL = ["--config=configs/fashion_mnist_ae.py:small", "--config.eval.max_examples=300"]
LATENT_SMALL = [
    "--config=configs/fashion_mnist.py:latent,small",
    "--config.eval.max_examples=300",
    "--config.latent.scale_examples=300",
    "--config.training.num_steps=10",
    "--config.training.eval_every=10",
    "--config.training.checkpoint_every=10",
]


def run_ae(args: list[str], **kw) -> subprocess.CompletedProcess:
    """python -m vdm.tasks.autoencoder_task ARGS from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "vdm.main", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=kw.get("timeout", 300),
    )


def latent_config(ae_dir: str, **overrides):
    """configs/fashion_mnist.py:latent,small as LATENT_SMALL sets it, on ae_dir's autoencoder (locked)."""
    c = load_config("fashion_mnist", "latent,small")
    c.eval.max_examples, c.latent.scale_examples, c.latent.autoencoder_workdir = 300, 300, ae_dir
    c.training.num_steps = c.training.eval_every = c.training.checkpoint_every = 10
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    c.lock()
    return c


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory) -> str:
    """A trained (20-step) autoencoder run (in this process: the CLI's path is the kill -9 test's)."""
    d = str(tmp_path_factory.mktemp("ae"))
    c = load_config("fashion_mnist_ae", "small")
    c.eval.max_examples = 300
    train_autoencoder(c, d)
    return d


@pytest.fixture(scope="module")
def latent_dir(ae_dir, tmp_path_factory) -> str:
    """A latent diffusion run (10 steps) on ae_dir's latents."""
    d = str(tmp_path_factory.mktemp("latent"))
    latent_task.train_and_evaluate(latent_config(ae_dir), d)
    return d


def _restore(workdir: str) -> tuple[TrainState, int]:
    config = record.load_recorded(workdir)
    task = latent_task.build(config, mode="eval")
    with Checkpointer(os.path.join(workdir, "checkpoints"), create=False) as ckpt:
        return ckpt.restore_latest(jax.device_get(task.init_state()))


def test_the_autoencoder_trains_and_reports_its_elbo(ae_dir):
    """The loop's eval of the VAE: -ELBO = reconstruction + KL in bits/dim, finite, with its grids written."""
    result = json.load(open(os.path.join(ae_dir, "final_eval.json")))["result"]
    assert np.isfinite(result["eval/bpd"]) and result["eval/bpd_se"] > 0
    np.testing.assert_allclose(result["eval/bpd"], result["eval/bpd_recon"] + result["eval/bpd_kl"], rtol=1e-6)
    assert result["eval/bpd_kl"] >= 0
    assert {"recon_0000020.png", "prior_0000020.png"} <= set(os.listdir(os.path.join(ae_dir, "samples")))


def _losses_by_step(workdir: str) -> dict[int, float]:
    out = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return out
    for line in open(path):
        try:
            rec = json.loads(line)
        except ValueError:  # a line half-written at the kill
            continue
        if "train/loss" in rec:
            out[rec["step"]] = rec["train/loss"]
    return out


@pytest.mark.slow
def test_the_autoencoder_resumes_after_kill_9_bit_identically(tmp_path):
    """Kill -9 an autoencoder run a few steps past a checkpoint; the rerun replays those steps with identical losses."""
    args = [
        "--config=configs/fashion_mnist_ae.py:small",
        "--config.optimizer.decay=constant",
        "--config.training.checkpoint_every=10",
        "--config.training.eval_every=100000",
        "--config.training.log_every=1",
        f"--workdir={tmp_path}",
    ]
    ckpt_dir = os.path.join(tmp_path, "checkpoints")
    sigkill_past_checkpoint(
        ["-m", "vdm.main", *args, "--config.training.num_steps=100000"], str(tmp_path), _losses_by_step
    )
    before = _losses_by_step(tmp_path)
    with Checkpointer(ckpt_dir) as ckpt:
        resume_from = ckpt.latest_step()
    overlap = [s for s in before if s > resume_from]
    assert resume_from is not None and overlap, (resume_from, max(before))
    end = max(before) + 2
    proc = run_ae(args + [f"--config.training.num_steps={end}", "--config.eval.max_examples=100"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from checkpoint step {resume_from}" in proc.stderr
    after = _losses_by_step(tmp_path)
    assert [after[s] for s in overlap] == [before[s] for s in overlap]  # bit-identical floats
    assert sorted(after) == list(range(1, end + 1))


def test_the_latent_run_reports_the_three_term_bound_and_eval_returns_it(latent_dir):
    """eval/bpd = recon + neg_entropy + cross_entropy, and cross_entropy = the prior's -ELBO of u - d log c (pixel D)."""
    result = json.load(open(os.path.join(latent_dir, "final_eval.json")))["result"]
    parts = result["eval/bpd_recon"] + result["eval/bpd_neg_entropy"] + result["eval/bpd_cross_entropy"]
    np.testing.assert_allclose(result["eval/bpd"], parts, rtol=1e-6)
    prior = sum(result[f"eval/bpd_latent_{k}"] for k in ("recon", "prior", "diffusion"))
    np.testing.assert_allclose(result["eval/bpd_cross_entropy"], prior + result["eval/bpd_scale_log_det"], rtol=1e-5)
    recorded = record.load_recorded(latent_dir)
    assert recorded.latent.scale > 0 and recorded.latent.autoencoder.downsample == 4  # computed / copied, recorded
    np.testing.assert_allclose(
        result["eval/bpd_scale_log_det"] * 784 * np.log(2), -7 * 7 * 4 * np.log(recorded.latent.scale), rtol=1e-6
    )
    config = record.load_recorded(latent_dir)
    config.eval.ode_steps += 1  # an ODE-only key: other settings, so computed again (not the training's row)
    again = modes.evaluate(config, latent_dir)  # what --mode=eval runs
    assert again["eval/bpd"] == result["eval/bpd"]  # the same draws: the same number
    assert read_metrics(latent_dir)[-1]["eval_settings"]["ode_steps"] == config.eval.ode_steps  # it was computed


def test_the_frozen_autoencoder_is_the_trained_one_bit_for_bit(ae_dir, latent_dir):
    """Two-stage training leaves params['autoencoder'] equal to the autoencoder run's EMA params (no gradient, no decay)."""
    _, ae_params, _ = load_autoencoder(ae_dir)
    state, _ = _restore(latent_dir)
    for a, b in zip(jax.tree.leaves(state.params[latent_task.AE]), jax.tree.leaves(ae_params["model"])):
        np.testing.assert_array_equal(a, b)


def test_sampling_decodes_latents_to_images(latent_dir):
    """--mode=sample draws latents and decodes them: 8-bit grid values (argmax), image-shaped, a PNG and an .npz."""
    given = load_config("fashion_mnist", "latent,small")
    given.sampling.decode, given.sampling.num_samples = "argmax", 6
    config, _ = record.inference_config(latent_dir, given, ["sampling.decode", "sampling.num_samples"])
    png = modes.sample(config, latent_dir)
    samples = np.load(png[:-4] + ".npz")["samples"]
    assert samples.shape == (6, 28, 28, 1) and os.path.exists(png)
    k = (samples + 1.0) * 127.5
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)  # on the 8-bit grid


@pytest.mark.slow
def test_joint_fine_tuning_on_resume_trains_the_autoencoder_too(ae_dir, latent_dir, tmp_path):
    """A resume with latent.joint=True moves encoder and decoder (the bound's gradient reaches them); the loss is finite."""
    d = str(tmp_path / "joint")
    shutil.copytree(latent_dir, d)
    before, _ = _restore(d)
    latent_task.train_and_evaluate(
        latent_config(ae_dir, latent__joint=True, training__num_steps=14, training__eval_every=14), d
    )
    after, step = _restore(d)
    assert step == 14
    moved = [
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(after.params[latent_task.AE]), jax.tree.leaves(before.params[latent_task.AE]))
    ]
    assert max(moved) > 0
    changes = [json.loads(line) for line in open(os.path.join(d, "config_changes.jsonl"))]
    assert any("latent.joint" in c["changes"] for c in changes)
    assert np.isfinite(json.load(open(os.path.join(d, "final_eval.json")))["result"]["eval/bpd"])


def test_bad_latent_input_is_one_clear_line_and_writes_nothing(ae_dir, tmp_path):
    """A missing autoencoder (through the CLI: one line naming it), a discrete decoder on latents, an unknown choice,
    a diffusion run given as the autoencoder: a ConfigError or FileNotFoundError saying what is needed; nothing written."""
    wd = tmp_path / "run"
    proc = run_cli(LATENT_SMALL + ["--config.latent.autoencoder_workdir=/nonexistent/ae", f"--workdir={wd}"])
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "holds no autoencoder run" in line, line
    pixel = tmp_path / "pixel"
    pixel.mkdir()
    (pixel / "config.json").write_text(json.dumps({"model": {}, "loss": {"weighting": "elbo"}}))
    for overrides, needle in (
        ({"model__decoder": "categorical"}, "decoder is 'gaussian'"),
        ({"latent__latents": "median"}, "latent.latents"),
        ({"latent__autoencoder_workdir": str(pixel)}, "not an autoencoder"),
    ):
        with pytest.raises(validation.ConfigError, match=needle):
            latent_task.train_and_evaluate(latent_config(ae_dir, **overrides), str(wd))
    assert not wd.exists() or not os.listdir(wd)


def test_bad_autoencoder_config_is_one_clear_line(tmp_path):
    """downsample 3 (not a power of 2; through the CLI: one line) and an unknown decoder are refused; nothing written."""
    proc = run_ae(AE_SMALL + ["--config.model.downsample=3", f"--workdir={tmp_path / 'ae'}"])
    assert proc.returncode == 1 and "power of 2" in proc.stderr.strip().splitlines()[-1], proc.stderr[-1500:]
    c = load_config("fashion_mnist_ae", "small")
    c.model.decoder = "logistic"
    with pytest.raises(validation.ConfigError, match="model.decoder"):
        train_autoencoder(c, str(tmp_path / "ae"))
    assert not (tmp_path / "ae").exists()


@pytest.mark.slow
def test_the_pixel_vs_latent_script_runs_end_to_end(tmp_path):
    """experiments/latent_vs_pixel.py --tiny: three runs through the CLI, a table with one finite row per model."""
    out = tmp_path / "table.csv"
    proc = subprocess.run(
        [sys.executable, "experiments/latent_vs_pixel.py", "--tiny", f"--root={tmp_path / 'runs'}", f"--out={out}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv

    rows = {r["model"]: r for r in csv.DictReader(open(out))}
    assert set(rows) == {"pixel", "latent"}
    for r in rows.values():
        assert np.isfinite(float(r["bpd"])) and float(r["sample_s_per_image"]) > 0 and float(r["train_s_per_image"]) > 0
