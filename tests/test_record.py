"""The run's record is the truth: eval/sample use the trained config, resume never rewrites it, no
checkpoint is lost, interrupts save, bounds bound, and every user error is one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, run_cli
from vdm.config import record
from vdm.config.validation import ConfigError
from vdm.infra.checkpoint import Checkpointer

TINY = ["--config=configs/toy2d.py:small"]
V_SIGMOID = ["--config.model.parameterization=v", "--config.loss.weighting=sigmoid"]


def _json_out(proc) -> dict:
    return json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.rindex("}") + 1])


def _tree_digest(path: str) -> dict[str, str]:
    """{relative path: sha256} of every file under `path`."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def v_run(tmp_path_factory) -> str:
    """A finished toy2d:small run trained with v-prediction and the sigmoid weighting."""
    wd = str(tmp_path_factory.mktemp("v_run"))
    proc = run_cli(TINY + V_SIGMOID + [f"--workdir={wd}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


def test_eval_with_the_readme_line_uses_the_recorded_parameterization(v_run):
    """--mode=eval with the plain config file (eps, elbo) on a v/sigmoid run gives the training's final bpd."""
    final = [r for r in map(json.loads, open(os.path.join(v_run, "metrics.jsonl"))) if "eval/bpd" in r][-1]
    proc = run_cli(TINY + [f"--workdir={v_run}", "--mode=eval"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _json_out(proc)["eval/bpd"] == pytest.approx(final["eval/bpd"], rel=1e-12, abs=0)
    assert "model.parameterization" in proc.stderr  # says which keys of the file it did not use
    proc = run_cli([f"--workdir={v_run}", "--mode=eval"])  # no --config: the recorded one
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _json_out(proc)["eval/bpd"] == pytest.approx(final["eval/bpd"], rel=1e-12, abs=0)
    evals = [r for r in map(json.loads, open(os.path.join(v_run, "metrics.jsonl"))) if r.get("mode") == "eval"]
    assert evals == []  # the training's final eval has this checkpoint and these settings: its row, no new one


def test_a_model_key_override_at_eval_is_refused_naming_key_and_values(v_run):
    before = _tree_digest(v_run)
    line = _one_error_line(
        run_cli(TINY + [f"--workdir={v_run}", "--mode=sample", "--config.model.parameterization=eps"])
    )
    assert "model.parameterization" in line and "'v'" in line and "'eps'" in line
    assert _tree_digest(v_run) == before


def test_rerun_with_a_changed_width_is_one_line_and_touches_nothing(v_run):
    before = _tree_digest(v_run)
    line = _one_error_line(run_cli(TINY + V_SIGMOID + [f"--workdir={v_run}", "--config.model.width=16"]))
    assert "model.width: 32 -> 16" in line and "new --workdir" in line
    assert _tree_digest(v_run) == before  # config.json and checkpoints byte-identical


def test_a_finished_run_is_not_reevaluated(v_run):
    rows = open(os.path.join(v_run, "metrics.jsonl")).read()
    proc = run_cli(TINY + V_SIGMOID + [f"--workdir={v_run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert open(os.path.join(v_run, "metrics.jsonl")).read() == rows
    final = [json.loads(r) for r in rows.splitlines() if "eval/bpd" in r and '"mode"' not in r][-1]
    assert _json_out(proc)["eval/bpd"] == final["eval/bpd"]


def test_sample_runs_that_differ_in_an_option_write_different_files(v_run):
    args = TINY + [
        f"--workdir={v_run}",
        "--mode=sample",
        "--config.sampling.method=ddim",
        "--config.sampling.num_steps=4",
        "--config.sampling.num_samples=8",
    ]
    paths = []
    for eta in ("0", "1"):
        proc = run_cli(args + [f"--config.sampling.eta={eta}"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        paths.append(proc.stdout.strip().splitlines()[-1])
    assert paths[0] != paths[1] and all(os.path.exists(p) for p in paths)
    with open(paths[1][:-4] + ".json") as f:
        assert json.load(f)["sampling"]["eta"] == 1.0


def test_max_examples_bounds_both_evals(v_run):
    for method, key in (("elbo", "eval/num_examples"), ("ode", "eval/ode_num_examples")):
        proc = run_cli(
            TINY
            + [f"--workdir={v_run}", "--mode=eval", f"--eval_method={method}", "--ode_steps=4", "--max_examples=20"]
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _json_out(proc)[key] == 20


def test_max_examples_reads_only_that_many_in_a_small_batch():
    """A 1000-row eval batch capped at 20 examples holds 20 rows (24 over 8 devices, 4 masked)."""
    from vdm.config import validation
    from vdm.data import pipeline

    config = load_config("toy2d", "small")
    config.eval.batch_size, config.eval.max_examples = 1000, 20
    for devices, rows in ((1, 20), (8, 24)):
        size = validation.eval_batch_size(config.eval, devices)
        batches = list(pipeline.eval_iterator(config.data, size, max_examples=20))
        assert size == rows and [b["x"].shape[0] for b in batches] == [rows]
        assert int(sum(b["mask"].sum() for b in batches)) == 20


def test_corrupt_newest_checkpoint_is_moved_aside_and_the_step_saved_again(v_run, tmp_path):
    wd = str(tmp_path / "run")
    shutil.copytree(v_run, wd)
    data_dir = os.path.join(wd, "checkpoints", "4", "state", "ocdbt.process_0", "d")
    for name in os.listdir(data_dir):
        path = os.path.join(data_dir, name)
        os.truncate(path, os.path.getsize(path) // 2)
    proc = run_cli(TINY + V_SIGMOID + [f"--workdir={wd}", "--config.training.num_steps=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("\n") < 20, proc.stderr  # the log (stdout holds the result's JSON)
    assert "Event loop is closed" not in proc.stderr and "restored checkpoint step 2" in proc.stderr
    assert os.path.isdir(os.path.join(wd, "checkpoints", "corrupt", "4"))
    with Checkpointer(os.path.join(wd, "checkpoints"), create=False) as ckpt:
        assert ckpt.all_steps() == [2, 4]
    np.testing.assert_array_equal(_restore(v_run, 4), _restore(wd, 4))  # the retrained step: a deterministic replay


def _restore(wd: str, step: int) -> np.ndarray:
    """Every leaf of the train state checkpointed at `step` in workdir `wd`, flattened (its recorded config's shapes)."""
    import jax

    from vdm.infra import parallel
    from vdm.tasks.diffusion_model import setup

    model, _ = setup(record.load_recorded(wd))
    like = parallel.to_host(model.init_state(jax.random.PRNGKey(0)))
    with Checkpointer(os.path.join(wd, "checkpoints"), create=False) as ckpt:
        state = ckpt.restore(step, like)
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(state)])


def _logged_steps(wd: str) -> int:
    path = os.path.join(wd, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max([json.loads(ln)["step"] for ln in f if "train/loss" in ln] or [0])


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_the_resumed_run_ends_bit_identical(tmp_path):
    args = TINY + [
        "--config.optimizer.decay=constant",
        "--config.training.num_steps=300",
        "--config.training.checkpoint_every=1000",
        "--config.training.eval_every=1000",
        "--config.training.log_every=1",
    ]
    ref = str(tmp_path / "ref")
    assert run_cli(args + [f"--workdir={ref}"]).returncode == 0
    wd = str(tmp_path / "run")
    p = subprocess.Popen(
        [sys.executable, "-m", "vdm.main", *args, f"--workdir={wd}"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and p.poll() is None and _logged_steps(wd) < 5:
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before it could be signalled"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    with Checkpointer(os.path.join(wd, "checkpoints"), create=False) as ckpt:
        stopped = ckpt.latest_step()
    assert 5 <= stopped < 300 and f"stopped by SIGTERM at step {stopped}" in err
    proc = run_cli(args + [f"--workdir={wd}"])
    assert proc.returncode == 0 and f"resuming from checkpoint step {stopped}" in proc.stderr, proc.stderr[-3000:]
    np.testing.assert_array_equal(_restore(ref, 300), _restore(wd, 300))


def test_allowed_changes_on_resume_are_recorded(v_run, tmp_path):
    wd = str(tmp_path / "run")
    shutil.copytree(v_run, wd)
    proc = run_cli(
        TINY + V_SIGMOID + [f"--workdir={wd}", "--config.training.num_steps=6", "--config.training.eval_every=6"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(wd, "config_changes.jsonl")) as f:
        change = json.loads(f.readline())
    assert change["step"] == 4 and change["changes"]["training.num_steps"] == [4, 6]
    # config.json holds the resolved sampler options, the command line their unset markers: no change.
    assert set(change["changes"]) == {"training.num_steps", "training.eval_every"}, change
    assert json.load(open(os.path.join(wd, "config.json")))["training"]["num_steps"] == 6


@pytest.mark.parametrize(
    "args, names",
    [
        (
            TINY + ["--config.model.parametrization=v"],
            ["--config.model.parametrization", "Did you mean", "parameterization"],
        ),
        (["--config=configs/nope.py"], ["configs/nope.py", "toy2d.py"]),
        (["--config=configs/toy2d.py:tiny"], ["tiny", "small"]),
        (TINY + ["--config.model.width=abc"], ["--config.model.width", "abc"]),
        (TINY + ["--mode=eval"], ["does not exist"]),
        (["--mode=sample"], ["does not exist"]),
        (TINY + ["--config.model.parameterization=eta"], ["'eta'", "'eps'", "'v'"]),
    ],
)
def test_each_bad_input_is_one_line_naming_it_and_writes_nothing(tmp_path, args, names):
    wd = str(tmp_path / "nowhere")
    line = _one_error_line(run_cli(args + [f"--workdir={wd}"]))
    assert all(n in line for n in names), line
    assert not os.path.exists(wd) or not os.listdir(wd)


def test_each_mode_checks_only_the_batch_sizes_it_uses(v_run):
    """On 3 devices the training batch (32) does not split, yet sampling and a capped eval run."""
    proc = run_cli([f"--workdir={v_run}", "--mode=sample", "--local_device_count=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli([f"--workdir={v_run}", "--mode=eval", "--local_device_count=3", "--max_examples=30"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _json_out(proc)["eval/num_examples"] == 30


def test_inference_config_takes_eval_keys_from_the_given_and_the_rest_from_the_record(tmp_path):
    recorded = load_config("toy2d", "small")
    recorded.model.parameterization, recorded.model.width = "v", 48
    os.makedirs(tmp_path, exist_ok=True)
    with open(tmp_path / "config.json", "w") as f:
        f.write(recorded.to_json())
    given = load_config("toy2d", "small")
    given.eval.num_steps, given.sampling.method = 7, "ddim"
    config, ignored = record.inference_config(str(tmp_path), ml_collections.ConfigDict(given))
    assert (config.model.parameterization, config.model.width) == ("v", 48)
    assert (config.eval.num_steps, config.sampling.method) == (7, "ddim")
    assert set(ignored) == {"model.parameterization", "model.width"}
    with pytest.raises(record.ConfigError, match="model.width=32 .* trained with model.width=48"):
        record.inference_config(str(tmp_path), given, overridden=["model.width"])
    assert record.inference_config(str(tmp_path), given, overridden=["eval.num_steps"])[0].eval.num_steps == 7


@pytest.mark.parametrize(
    "config_arg,decoder",
    [("toy2d.py:small", "gaussian"), ("toy2d.py:grid", "categorical"), ("fashion_mnist.py:small", "categorical")],
)
def test_a_run_recorded_before_a_key_existed_reads_as_what_it_ran(tmp_path, config_arg, decoder):
    """A config.json without the keys added later (record.ADDED_KEYS) loads with the values the run used, so its
    resume check and eval see no change."""
    name, arg = config_arg.split(":")
    config = load_config(name[:-3], arg)
    assert config.model.decoder == decoder
    old = json.loads(config.to_json())
    for key in record.ADDED_KEYS:
        section, leaf = key.split(".")
        old.get(section, {}).pop(leaf, None)  # (a pixel model has no latent section)
    old["loss"]["antithetic"] = old["loss"].pop("t_sampling") == "antithetic"  # before loss.t_sampling existed
    del old["task"], old["fid"]  # before config.task and config.fid
    old["latent"] = {"autoencoder_workdir": "", "scale": 0.0}  # a pixel run's unused latent section
    (tmp_path / "config.json").write_text(json.dumps(old))
    recorded = record.load_recorded(str(tmp_path))
    # What the run used: the differences are inference defaults changed since (FID's reference subset, 0: the
    # whole split, then; the images' importance-sampled ELBO, uniform t then), which eval and sample may change.
    changed = {"fid.reference_examples": (0, config.fid.reference_examples)}
    if config.eval.t_sampling != "uniform":
        changed["eval.t_sampling"] = ("uniform", config.eval.t_sampling)
    assert record.config_diff(recorded, config) == changed
    assert "eval" in record.INFERENCE_SECTIONS
    assert "fid" in record.INFERENCE_SECTIONS
    assert recorded.model.decoder == decoder
    assert recorded.loss.t_sampling == "antithetic" and "antithetic" not in recorded.loss
    old["loss"]["antithetic"] = False
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert record.config_diff(record.load_recorded(str(tmp_path)), config) == {
        "loss.t_sampling": ("uniform", "antithetic"),
        **changed,
    }


def test_unset_sampler_options_against_their_recorded_resolved_values_are_no_change(tmp_path):
    """A run records resolved options (config.json); resuming with the file's unset (None) options is no change,
    an option set to another value is one (recorded by value), and so is a new method's defaults."""
    from vdm.config import validation

    config = load_config("toy2d", "small")
    validation.save_config(config, str(tmp_path))
    assert json.load(open(tmp_path / "config.json"))["sampling"]["variance"] == "small"
    assert record.check_resume(load_config("toy2d", "small"), str(tmp_path)) == {}
    given = load_config("toy2d", "small")
    given.sampling.variance = "large"
    assert record.check_resume(given, str(tmp_path)) == {"sampling.variance": ("small", "large")}
    given.sampling.variance = "small"  # set to its default: still no change
    assert record.check_resume(given, str(tmp_path)) == {}
    given = load_config("toy2d", "small")
    given.sampling.method = "ddim"
    assert record.check_resume(given, str(tmp_path)) == {
        "sampling.method": ("ancestral", "ddim"),
        "sampling.eta": (None, 0.0),
    }


def test_a_hybrid_run_recorded_before_the_units_fix_reads_as_lambda_on_nats(tmp_path):
    """loss.hybrid_units came with issue 25's fix (lambda on L_vlb in bits, improved DDPM's): an older hybrid record
    reads as 'nats', what it trained, so resuming it under the new default is a change to the objective, named;
    a non-hybrid record reads as the default (the key does not touch its loss)."""
    config = load_config("fashion_mnist", "hybrid,small")
    old = json.loads(config.to_json())
    del old["loss"]["hybrid_units"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    recorded = record.load_recorded(str(tmp_path))
    assert recorded.loss.hybrid_units == "nats"
    with pytest.raises(ConfigError, match="loss.hybrid_units"):
        record.check_resume(config, str(tmp_path))
    config.loss.hybrid_units = "nats"
    assert "loss.hybrid_units" not in record.config_diff(recorded, config)
    plain = json.loads(load_config("fashion_mnist", "small").to_json())
    del plain["loss"]["hybrid_units"]
    (tmp_path / "config.json").write_text(json.dumps(plain))
    assert record.load_recorded(str(tmp_path)).loss.hybrid_units == "bits"
