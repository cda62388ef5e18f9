"""The feature network's plumbing (the Fréchet distance itself: tests/test_fid_metrics.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, load_config
from experiments import feature_net
from vdm.config.validation import ConfigError
from vdm.infra.metrics import read_metrics


@pytest.fixture(scope="module")
def tiny_fashion_mnist():
    """2000 train / 1000 held-out images, disjoint, from Fashion-MNIST's test split (fast to load)."""
    from vdm.data import pipeline

    x, y = pipeline.load_arrays({"dataset": "fashion_mnist"}, "test")
    return {"train": (x[:2000], y[:2000].astype(np.int32)), "test": (x[2000:3000], y[2000:3000].astype(np.int32))}


def test_feature_net_learns_caches_resumes_and_measures(tiny_fashion_mnist, tmp_path):
    config = load_config("feature_net", "small")
    config.training.num_steps = 80
    workdir = str(tmp_path / "fn")
    result = feature_net.train_feature_net(config, workdir, data=tiny_fashion_mnist)
    # 80 steps on 2000 images: far above chance (0.1); binomial SE on 1000 held-out is < 0.016.
    assert result["test_accuracy"] > 0.5 and not result["cached"]
    again = feature_net.train_feature_net(config, workdir, data=tiny_fashion_mnist)
    assert again["cached"] and again["test_accuracy"] == result["test_accuracy"]

    # It ran through the shared loop: train metrics every log_every steps, the loop's test accuracy at the
    # end (data parallel, EMA = params since ema_decay=0) equal to result.json's (host extraction).
    records = read_metrics(workdir)
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == [50, 80]
    final = [r for r in records if "eval/test_accuracy" in r]
    assert [r["step"] for r in final] == [80] and final[0]["eval/test_accuracy"] == pytest.approx(
        result["test_accuracy"], abs=1e-9
    )
    assert os.listdir(os.path.join(workdir, "tb")) and os.listdir(os.path.join(workdir, "checkpoints"))

    # An unfinished run (no result.json) resumes from its checkpoint: no step is trained again.
    os.remove(os.path.join(workdir, "result.json"))
    resumed = feature_net.train_feature_net(config, workdir, data=tiny_fashion_mnist)
    assert not resumed["cached"] and resumed["test_accuracy"] == result["test_accuracy"]
    assert [r["step"] for r in read_metrics(workdir) if "train/loss" in r] == train_steps

    config.model.feature_dim = 16
    with pytest.raises(ValueError, match="another config"):
        feature_net.train_feature_net(config, workdir, data=tiny_fashion_mnist)

    model, params, _ = feature_net.load_feature_net(workdir)  # restored params give the stored accuracy
    x_test, y_test = tiny_fashion_mnist["test"]
    logits, _ = feature_net.extract(model, params, x_test)
    assert np.mean(np.argmax(logits, -1) == y_test) == pytest.approx(result["test_accuracy"], abs=1e-9)

    # Real images (train part, as floats in [-1, 1]) are much closer to the test set than noise is.
    real = tiny_fashion_mnist["train"][0][:1000].astype(np.float32) / 127.5 - 1.0
    noise = np.random.default_rng(0).uniform(-1, 1, real.shape).astype(np.float32)
    fd_real = feature_net.fd_to_test_set(real, workdir)["fd"]
    fd_noise = feature_net.fd_to_test_set(noise, workdir)["fd"]
    assert 0 <= fd_real < 0.1 * fd_noise, (fd_real, fd_noise)
    assert np.isnan(
        feature_net.fd_to_test_set(np.where(np.arange(1000)[:, None, None, None] == 0, np.nan, real), workdir)["fd"]
    )

    # The CLI the grid calls writes the same number.
    path = str(tmp_path / "s.npz")
    np.savez(path, samples=real)
    out = str(tmp_path / "fd.json")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "experiments", "feature_net.py"),
            "--mode=fd",
            f"--workdir={workdir}",
            f"--samples={path}",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        assert json.load(f)["fd"] == pytest.approx(fd_real, rel=1e-5)


def test_load_feature_net_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make feature-net"):
        feature_net.load_feature_net(str(tmp_path))


def test_train_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    config = load_config("feature_net", "small")
    config.training.batch_size = 7
    x = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 28, 28, 1), np.uint8)
    y = np.arange(20) % 10
    task = feature_net.build_task(config, 10, {"train": (x, y), "test": (x, y)})
    stream = task.train_batches(0)
    batches = [next(stream) for _ in range(6)]  # 42 examples: epochs 0, 1 and two of epoch 2
    seen = np.round((np.concatenate([b["x"][:, 0, 0, 0] for b in batches]) + 1) * 127.5).astype(int)
    assert sorted(seen[:20]) == list(range(20)) and sorted(seen[20:40]) == list(range(20))
    assert np.array_equal(np.concatenate([b["label"] for b in batches]), seen % 10)  # labels follow images
    later = next(task.train_batches(4))  # resuming at step 4 replays batch 4
    assert np.array_equal(later["x"], batches[4]["x"]) and later["x"].dtype == np.float32


def test_feature_net_config_is_validated_with_the_shared_rules():
    config = load_config("feature_net")
    feature_net.validate(config, device_count=8)  # the default config is valid
    for key, value, message in (
        ("optimizer.decay_mask", "kernels", "choose one of 'matrices'"),
        ("training.nan_policy", "ignore", "choose one of 'stop', 'skip'"),
        ("training.batch_size", 100, "divisible by the number of devices"),
        ("eval.batch_size", 1001, "divisible by the number of devices"),
        ("model.dropout", 1.0, r"in \[0, 1\)"),
        ("data.dataset", "cifar10", "28x28 grey images"),
    ):
        bad = load_config("feature_net")
        section, name = key.split(".")
        bad[section][name] = value
        with pytest.raises(ConfigError, match=message):
            feature_net.validate(bad, device_count=8)
