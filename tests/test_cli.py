"""The command line end to end: train/eval/sample on toy data, error messages, the NaN guard."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import copy_run, load_config, run_cli
from vdm.infra.checkpoint import Checkpointer

TINY = ["--config=configs/toy2d.py:small"]


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# eps end to end in `make test`; the other three read the same network output another way (tests/test_parameterization.py,
# test_likelihood.py check that in closed form), so their whole runs are in `make test-all`.
@pytest.mark.parametrize(
    "parameterization", ["eps", *(pytest.param(k, marks=pytest.mark.slow) for k in ("x0", "score", "v"))]
)
def test_train_end_to_end_with_each_parameterization(tmp_path, parameterization, request):
    if parameterization == "eps":  # TINY's own: conftest's session run (toy_run) is this very training command
        wd = copy_run(request.getfixturevalue("toy_run"), tmp_path)
    else:
        wd = str(tmp_path)
        proc = run_cli(TINY + [f"--workdir={wd}", f"--config.model.parameterization={parameterization}"])
        assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(wd)
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/bpd" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(np.isfinite(r["train/loss"]) for r in train)
    assert evals and evals[-1]["step"] == 4
    for key in ("eval/bpd", "eval/bpd_recon", "eval/bpd_prior", "eval/bpd_diffusion", "eval/bpd_se"):
        assert np.isfinite(evals[-1][key]), key
    total = sum(evals[-1][f"eval/bpd{s}"] for s in ("_recon", "_prior", "_diffusion"))
    assert abs(total - evals[-1]["eval/bpd"]) <= 1e-6 * abs(total) + 1e-6  # the terms add up (float32)
    assert evals[-1]["eval/num_examples"] == 512  # the whole toy test split
    png = os.path.join(wd, "samples", "step_0000004.png")
    assert Image.open(png).size[0] > 0
    assert Image.open(os.path.join(wd, "bpd.png")).size[0] > 0  # the bits/dim figure
    config = json.load(open(os.path.join(wd, "config.json")))
    assert config["model"]["parameterization"] == parameterization
    assert os.path.exists(os.path.join(wd, "config.yaml"))
    assert os.listdir(os.path.join(wd, "tb"))
    with Checkpointer(os.path.join(wd, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [2, 4]


def test_eval_and_sample_modes_use_the_latest_checkpoint(toy_run, tmp_path):
    wd = copy_run(toy_run, tmp_path)  # TINY trained (conftest's session run)
    proc = run_cli(TINY + [f"--workdir={wd}", "--mode=eval", "--config.eval.num_steps=10"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert np.isfinite(result["eval/bpd"]) and result["eval/num_steps"] == 10
    proc = run_cli(
        TINY
        + [
            f"--workdir={wd}",
            "--mode=sample",
            "--config.sampling.method=ddim",
            "--config.sampling.num_steps=5",
            "--config.sampling.num_samples=20",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = proc.stdout.strip().splitlines()[-1]
    assert png.endswith(".png") and "ddim5" in png and os.path.exists(png)
    samples = np.load(png[:-4] + ".npz")["samples"]
    assert samples.shape == (20, 2) and np.all(np.isfinite(samples))
    # ODE bits/dim of the same checkpoint (its accuracy is tested in tests/test_likelihood.py).
    proc = run_cli(
        TINY + [f"--workdir={wd}", "--mode=eval", "--eval_method=ode", "--ode_steps=16", "--max_examples=256"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ode = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert ode["eval/ode_num_examples"] == 256 and np.isfinite(ode["eval/ode_bpd"])


def test_sample_mode_runs_every_method_on_a_trained_checkpoint(toy_run, tmp_path):
    from vdm import sampling
    from vdm.cli import modes

    wd = copy_run(toy_run, tmp_path)  # TINY trained (conftest's session run)
    for method in sampling.METHODS:
        config = load_config("toy2d", "small")
        config.sampling.method, config.sampling.num_steps, config.sampling.num_samples = method, 4, 16
        png = modes.sample(config, wd)
        samples = np.load(png[:-4] + ".npz")["samples"]
        assert samples.shape == (16, 2) and np.all(np.isfinite(samples)), method
    # Chunked sampling (sampling.batch_size): chunk i is the one-shot sampler's draw with key fold_in(key, i).
    import jax

    from vdm.tasks.diffusion_model import derived_key
    from vdm.tasks.diffusion_task import make_sampler

    config = load_config("toy2d", "small")
    config.sampling.method, config.sampling.num_steps, config.sampling.num_samples = "ddim", 4, 10
    config.sampling.batch_size = 4  # chunks of 4, 4, 4 (the last cut to 2)
    chunked = np.load(modes.sample(config, wd)[:-4] + ".npz")["samples"]
    task, _, state, step = modes.restore_for_inference(config, wd)
    trainer = task.model
    key = derived_key(config, 2, step)
    one = make_sampler(trainer, 4)
    expect = np.concatenate([np.asarray(one(state.ema_params, jax.random.fold_in(key, i))) for i in range(3)])
    assert chunked.shape == (10, 2)
    np.testing.assert_allclose(chunked, expect[:10], rtol=1e-5, atol=1e-6)
    assert len({tuple(np.round(r, 6)) for r in chunked}) == 10  # no chunk repeats another's draws


def test_sample_chunk_size_rounds_to_whole_class_cycles():
    from vdm.cli.modes import sample_chunk_size

    assert sample_chunk_size(2000, 500) == 500
    assert sample_chunk_size(2000, 0) == 2000 and sample_chunk_size(300, 500) == 300
    assert sample_chunk_size(2000, 505, num_classes=10) == 500  # each chunk restarts arange % 10
    assert sample_chunk_size(2000, 7, num_classes=10) == 10


def test_bad_choice_fails_at_once_naming_the_valid_ones(tmp_path):
    proc = run_cli(TINY + [f"--workdir={tmp_path}", "--config.model.parameterization=epsilon"])
    assert proc.returncode == 1
    assert (
        "config.model.parameterization='epsilon' is not valid; choose one of 'eps', 'x0', 'score', 'v'"
    ) in proc.stderr
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_unknown_override_key_fails(tmp_path):
    proc = run_cli(TINY + [f"--workdir={tmp_path}", "--config.model.paramterization=x0"])
    assert proc.returncode != 0
    assert "paramterization" in proc.stderr


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    empty = str(tmp_path / "no_data")
    proc = run_cli(
        ["--config=configs/fashion_mnist.py:small", f"--workdir={tmp_path / 'wd'}", f"--config.data.data_dir={empty}"]
    )
    assert proc.returncode == 1
    assert "error: " in proc.stderr and "'fashion_mnist' is not prepared" in proc.stderr
    assert "python -m vdm.tools.prepare_data --dataset=fashion_mnist" in proc.stderr


def test_eval_without_a_checkpoint_names_the_command_that_trains_the_run(tmp_path):
    proc = run_cli(TINY + [f"--workdir={tmp_path}", "--mode=eval"])  # no config.json: no run at all
    assert proc.returncode == 1
    assert f"train one first, e.g. python -m vdm.main --config=configs/fashion_mnist.py --workdir={tmp_path}" in (
        proc.stderr
    )
    from vdm.config import validation

    validation.save_config(load_config("toy2d", "small"), str(tmp_path))  # a start that saved no checkpoint yet
    proc = run_cli([f"--workdir={tmp_path}", "--mode=sample"])
    assert proc.returncode == 1 and "--mode=train" not in proc.stderr
    assert f"--workdir={tmp_path} holds no checkpoint yet; train that diffusion run first: " in proc.stderr
    assert f"python -m vdm.main --workdir={tmp_path} (trains what its config.json records" in proc.stderr


# A learning rate of 1e30 from step 0 sends the params to ~1e30 after one step, so every
# later loss overflows: a realistic divergence.
DIVERGE = [
    "--config.optimizer.learning_rate=1e30",
    "--config.optimizer.warmup_steps=0",
    "--config.optimizer.decay=constant",
    "--config.optimizer.grad_clip=0.0",
]


def test_nan_policy_stop_raises_naming_the_step_and_saves_nothing_after_it(tmp_path):
    wd = str(tmp_path)
    proc = run_cli(TINY + [f"--workdir={wd}", "--config.training.nan_policy=stop"] + DIVERGE)
    assert proc.returncode != 0
    assert "non-finite loss or gradient at step 2" in proc.stderr
    with Checkpointer(os.path.join(wd, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == []  # the first save was due at step 2


def test_nan_policy_skip_discards_updates_and_counts_them(tmp_path):
    wd = str(tmp_path)
    proc = run_cli(TINY + [f"--workdir={wd}", "--config.training.nan_policy=skip"] + DIVERGE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [r for r in _records(wd) if "train/loss" in r]
    assert [r["train/skipped"] for r in train] == [0, 1, 1, 1]
    assert train[-1]["train/skipped_total"] == 3
    with Checkpointer(os.path.join(wd, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [2, 4]


@pytest.mark.slow  # ~3.5 min on 2 CPU cores (most of it the full-test-set eval); the toy run below is in `make test`
def test_flow_config_trains_evaluates_and_samples(tmp_path):
    """configs/fashion_mnist.py:flow,small (rectified flow: OT path, velocity net on z_OT, logit-normal t) end to end:
    it trains on the FM loss, is evaluated as the true ELBO in bits/dim, and samples with Euler on the flow ODE."""
    wd = str(tmp_path)
    flow = ["--config=configs/fashion_mnist.py:flow,small", f"--workdir={wd}"]
    proc = run_cli(flow)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.load(open(os.path.join(wd, "config.json")))
    assert (config["model"]["schedule"], config["model"]["parameterization"], config["model"]["input_scaling"]) == (
        "ot",
        "flow",
        "ot",
    )
    assert (config["loss"]["weighting"], config["loss"]["t_sampling"]) == ("flow", "logit_normal")
    records = _records(wd)
    assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
    evals = [r for r in records if "eval/bpd" in r]
    assert evals and 0 < evals[-1]["eval/bpd"] < 50  # the true ELBO in bits/dim, whatever the training loss
    proc = run_cli(flow + ["--mode=eval", "--max_examples=200"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.isfinite(json.loads(proc.stdout[proc.stdout.index("{") :])["eval/bpd"])
    proc = run_cli(flow + ["--mode=sample", "--config.sampling.num_steps=4", "--config.sampling.num_samples=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = proc.stdout.strip().splitlines()[-1]
    assert "ddim4" in png
    samples = np.load(png[:-4] + ".npz")["samples"]
    assert samples.shape[0] == 4 and np.all(np.isfinite(samples))


def test_flow_keys_train_and_sample_on_toy_data(tmp_path):
    """The :flow recipe's keys on toy2d:small: schedule ot, velocity net on z_OT, FM loss at logit-normal t, Euler."""
    wd = str(tmp_path)
    keys = {
        "model.schedule": "ot",
        "model.gamma_max": 10.0,
        "model.parameterization": "flow",
        "model.input_scaling": "ot",
        "loss.weighting": "flow",
        "loss.t_sampling": "logit_normal",
    }
    proc = run_cli(TINY + [f"--workdir={wd}"] + [f"--config.{k}={v}" for k, v in keys.items()])
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [r for r in _records(wd) if "eval/bpd" in r]
    assert evals and np.isfinite(evals[-1]["eval/bpd"])
    sample = ["--mode=sample", "--config.sampling.method=ode", "--config.sampling.space=ot"]
    proc = run_cli(TINY + [f"--workdir={wd}", *sample, "--config.sampling.grid=uniform_ot"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.all(np.isfinite(np.load(proc.stdout.strip().splitlines()[-1][:-4] + ".npz")["samples"]))
