"""A run recorded by earlier code (tests/fixtures/run_recorded_4094cba: configs/toy2d.py:small, 4 steps, written by
commit 4094cba, before the package was laid out by layer) still evaluates to its own recorded figure and resumes.

The record's upgrade path (vdm.config.record.upgrade) fills what the code added since (config.task, keys that
moved), so --mode=eval returns bit for bit the bits/dim that run's final eval recorded, and a resume with more
steps is accepted as a change of the loop's bookkeeping only.
"""

from __future__ import annotations

import json
import os
import shutil

from conftest import REPO_ROOT, run_cli

FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures", "run_recorded_4094cba")


def _copy(tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(FIXTURE, workdir)
    return workdir


def test_the_recorded_run_evaluates_to_its_own_recorded_figure(tmp_path):
    workdir = _copy(tmp_path)
    with open(os.path.join(FIXTURE, "final_eval.json")) as f:
        recorded = json.load(f)["result"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:  # without its eval row: --mode=eval computes it again
        rows = [line for line in f if '"eval/bpd"' not in line]
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(rows)
    proc = run_cli([f"--workdir={workdir}", "--mode=eval"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for key in ("eval/bpd", "eval/bpd_recon", "eval/bpd_prior", "eval/bpd_diffusion", "eval/bpd_se"):
        assert result[key] == recorded[key], (key, result[key], recorded[key])  # the same estimate, bit for bit
    assert result["eval/num_examples"] == recorded["eval/num_examples"]


def test_the_recorded_run_resumes_with_more_steps(tmp_path):
    workdir = _copy(tmp_path)
    proc = run_cli(
        [
            "--config=configs/toy2d.py:small",
            f"--workdir={workdir}",
            "--config.training.num_steps=6",
            "--config.training.eval_every=6",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint step 4" in proc.stderr
    with open(os.path.join(workdir, "config_changes.jsonl")) as f:
        changes = [json.loads(line) for line in f]
    # The loop's bookkeeping, and two inference defaults changed since that run (configs/base.py: FID reference
    # statistics of 2,000 examples, sampler calls of 100), which a resume may change and records.
    assert changes == [
        {
            "step": 4,
            "changes": {
                "fid.reference_examples": [0, 2000],
                "sampling.batch_size": [500, 100],
                "training.eval_every": [4, 6],
                "training.num_steps": [4, 6],
            },
        }
    ], changes
    with open(os.path.join(workdir, "final_eval.json")) as f:
        assert json.load(f)["step"] == 6
