"""The noisy classifier for classifier guidance: trained on z_t, it is accurate at low noise,
uninformative at high noise, and its guidance moves a trained model's samples toward the class."""

from __future__ import annotations

import json

import numpy as np

from conftest import copy_run, load_config, run_cli
from vdm.data import toy_sets
from vdm.tasks import classifier_task


def test_noisy_classifier_trains_and_guides_sampling_toward_the_class(toy_run, tmp_path):
    config = load_config("noisy_classifier", "toy2d")
    config.training.num_steps = 300
    cls_dir = str(tmp_path / "classifier")
    acc = classifier_task.train_classifier(config, cls_dir)
    # 8 well separated modes (gap / std ~ 5): near-perfect at low noise, near chance (1/8) at high noise.
    assert acc["classifier/test_acc_t0.1"] > 0.9, acc
    assert acc["classifier/test_acc_t0.9"] < acc["classifier/test_acc_t0.1"] - 0.3, acc

    wd = copy_run(toy_run, tmp_path)  # configs/toy2d.py:small trained (conftest's session run)
    means = np.asarray(toy_sets.mixture2d_params()[0])

    def fraction_in_class(scale):
        proc = run_cli(
            [
                "--config=configs/toy2d.py:small",
                f"--workdir={wd}",
                "--mode=sample",
                "--config.sampling.num_samples=400",
                "--classifier_label=3",
                f"--classifier_workdir={cls_dir}",
                f"--classifier_scale={scale}",
            ]
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        npz = np.load(proc.stdout.strip().splitlines()[-1][:-4] + ".npz")
        assert np.all(npz["labels"] == 3)
        nearest = np.argmin(((npz["samples"][:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        return float(np.mean(nearest == 3))

    unguided, guided = fraction_in_class(0.0), fraction_in_class(4.0)
    # The toy2d:small model is barely trained, so guidance is the visible force: the fraction must
    # rise by more than 4 standard errors of the difference of two binomial proportions (n = 400).
    se = np.sqrt(unguided * (1 - unguided) / 400 + guided * (1 - guided) / 400)
    assert guided - unguided > 4 * se, (unguided, guided, se)
    assert json.load(open(f"{cls_dir}/metrics.json"))["classifier/test_acc_t0.1"] > 0.9
