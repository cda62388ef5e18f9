"""The command line's faults and first-hour paths: --help, a --workdir it cannot write (a file, read-only), results
computed but not written, --mode=eval reusing the training's own eval, sample file names, hints naming the command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, run_cli, run_python
from vdm.config import cli_errors

TINY = ["--config=configs/toy2d.py:small"]
PYTHON_BLOCK = "```python\n"


@pytest.fixture(scope="module")
def trained(toy_run) -> str:
    """A configs/toy2d.py:small run trained to step 4 (final eval at step 4; conftest's session run), shared: copy it
    before writing."""
    return toy_run


def _copy(trained: str, tmp_path) -> str:
    wd = str(tmp_path / "run")
    shutil.copytree(trained, wd)
    return wd


def _rows(wd: str) -> list[dict]:
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _error_line(proc) -> str:
    """The one line on stderr; fails if stderr holds more (a traceback, log lines of work begun)."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_help_prints_the_usage_and_exits_0(flag):
    proc = run_cli([flag])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Command line: python -m vdm.main" in proc.stdout and "--workdir" in proc.stdout


@pytest.mark.parametrize("mode", ["train", "eval", "sample"])
def test_a_workdir_that_is_a_file_is_one_line_and_the_file_is_kept(tmp_path, mode):
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    proc = run_cli(TINY + [f"--workdir={path}", f"--mode={mode}"])
    assert proc.returncode == 1
    line = _error_line(proc)
    assert f"--workdir={path} is a file, not a folder" in line and f"--mode={mode} writes" in line
    assert path.read_text() == "my notes\n"


def _read_only(wd: str, args: list[str]) -> subprocess.CompletedProcess:
    """python -m vdm.main ARGS with `wd` mounted read-only in a private mount namespace (read-only for root too);
    skips where this process may not mount (unshare --mount needs root with CAP_SYS_ADMIN)."""
    cmd = [sys.executable, "-m", "vdm.main", *args]
    script = f'mount --bind -o ro "{wd}" "{wd}" || exit 98; touch "{wd}/probe" 2>/dev/null && exit 99; exec "$@"'
    try:
        proc = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script, "sh", *cmd], cwd=REPO_ROOT, capture_output=True, text=True
        )
    except OSError:
        pytest.skip("no unshare here")
    if proc.returncode == 98 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot make a read-only mount here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode != 99, "the read-only mount is writable"
    return proc


@pytest.mark.parametrize("mode", ["train", "eval", "sample"])
def test_a_read_only_workdir_is_one_line_before_any_work(trained, tmp_path, mode):
    """Truly read-only, for root too: a read-only bind mount. The line comes before the checkpoint is opened."""
    wd = _copy(trained, tmp_path)
    before = _rows(wd)
    proc = _read_only(wd, [f"--workdir={wd}", f"--mode={mode}"])
    assert proc.returncode == 1
    line = _error_line(proc)  # no "resuming from checkpoint step" line: nothing was restored, drawn or evaluated
    assert f"--workdir={wd} is not writable (Read-only file system)" in line and f"--mode={mode} writes" in line
    assert proc.stdout == "" and _rows(wd) == before


def test_check_workdir_names_the_part_it_cannot_write(tmp_path, monkeypatch):
    """The check itself, for what a mount cannot show: a part of the wrong kind, a file without write permission
    (os.access monkeypatched: root may write any file), a missing folder that train creates (nothing made yet)."""
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "samples").write_text("")
    with pytest.raises(cli_errors.WorkdirError, match=r"samples is a file, but --mode=sample writes a folder there"):
        cli_errors.check_workdir(str(wd), "sample")
    cli_errors.check_workdir(str(wd), "eval")  # eval writes no samples/
    (wd / "metrics.jsonl").write_text("")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("metrics.jsonl") else real_access(p, m))
    with pytest.raises(cli_errors.WorkdirError, match=r"metrics.jsonl is not writable \(permission denied\)"):
        cli_errors.check_workdir(str(wd), "eval")
    new = tmp_path / "a" / "b"
    cli_errors.check_workdir(str(new), "train")
    assert not (tmp_path / "a").exists()
    with pytest.raises(cli_errors.WorkdirError, match=r"does not exist; --mode=eval needs a trained run's folder"):
        cli_errors.check_workdir(str(new), "eval")
    with pytest.raises(cli_errors.WorkdirError, match=r"--workdir is empty"):
        cli_errors.check_workdir("", "train")


def test_eval_right_after_training_returns_the_trainings_own_eval(trained, tmp_path):
    """A plain --mode=eval of the final checkpoint reuses the loop's eval row (no new row), and that row is what a
    fresh --mode=eval computes, bit for bit (the row removed, it is computed again)."""
    wd = _copy(trained, tmp_path)
    before = _rows(wd)
    final = [r for r in before if "eval/bpd" in r][-1]
    proc = run_cli([f"--workdir={wd}", "--mode=eval"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    reused = json.loads(proc.stdout)
    assert _rows(wd) == before  # nothing recomputed, nothing appended
    assert reused["step"] == 4 and reused["eval/num_examples"] == 512
    for key in ("eval/bpd", "eval/bpd_recon", "eval/bpd_prior", "eval/bpd_diffusion", "eval/bpd_se"):
        assert reused[key] == final[key], key
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith("checkpoint step 4: test -ELBO") and "elbo, continuous time" in summary
    assert "over 512 test examples (the whole split)" in summary and f"{final['eval/bpd']:.4f}" in summary
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in before if "eval/bpd" not in r)
    proc = run_cli([f"--workdir={wd}", "--mode=eval"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout)
    assert {k: fresh[k] for k in reused} == reused
    assert [r.get("mode") for r in _rows(wd)][-1] == "eval"  # this time it was computed and recorded


def test_a_recorded_max_examples_applies_to_eval_and_the_summary_says_so(tmp_path):
    wd = str(tmp_path / "run")
    assert run_cli(TINY + [f"--workdir={wd}", "--config.eval.max_examples=256"]).returncode == 0
    proc = run_cli([f"--workdir={wd}", "--mode=eval"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["eval/num_examples"] == 256
    assert "over the first 256 test examples (config.eval.max_examples=256; 0: the whole split)" in proc.stderr
    proc = run_cli([f"--workdir={wd}", "--mode=eval", "--max_examples=0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["eval/num_examples"] == 512
    assert "over 512 test examples (the whole split)" in proc.stderr


def test_the_trainings_eval_is_reused_only_where_its_settings_are_known_and_equal(trained, tmp_path):
    from vdm.cli import modes
    from vdm.config import record

    wd = _copy(trained, tmp_path)
    config = record.load_recorded(wd)
    settings = modes.eval_settings(config)
    assert modes.recorded_eval(wd, 4, settings)["eval/num_examples"] == 512
    assert modes.recorded_eval(wd, 2, settings) is None  # no eval at step 2
    config.eval.num_steps = 10
    assert modes.recorded_eval(wd, 4, modes.eval_settings(config)) is None
    config.eval.num_steps, config.eval.method = 0, "ode"
    assert modes.recorded_eval(wd, 4, modes.eval_settings(config)) is None  # the loop's eval is the ELBO
    with open(os.path.join(wd, "config_changes.jsonl"), "w") as f:  # a restart at step 2, before the eval at 4
        f.write(json.dumps({"step": 2, "changes": {"eval.batch_size": [128, 256]}}) + "\n")
    assert modes.recorded_eval(wd, 4, settings) is not None
    with open(os.path.join(wd, "config_changes.jsonl"), "a") as f:  # at step 4: before or after the row? unknown
        f.write(json.dumps({"step": 4, "changes": {"eval.batch_size": [128, 256]}}) + "\n")
    assert modes.recorded_eval(wd, 4, settings) is None


def _sampling(num_samples: int, fid_samples: int = 0, **fid):
    config = load_config("toy2d", "small")
    config.sampling.num_samples, config.fid.samples = num_samples, fid_samples
    for k, v in fid.items():
        config.fid[k] = v
    return config


def test_sample_names_differ_exactly_when_the_drawn_set_does():
    from vdm.cli.modes import num_drawn, sample_name

    name = lambda c: sample_name(c, 4)
    assert num_drawn(_sampling(100, 500)) == 500
    assert name(_sampling(100, 500)) != name(_sampling(100, 0))  # 500 drawn, not 100: another file
    assert name(_sampling(100, 500)) == name(_sampling(500, 0))  # the same 500 draws
    assert name(_sampling(100, 50)) == name(_sampling(100, 0))  # fid.samples <= num_samples: the same draws, name
    assert name(_sampling(100, 50, reference="test")) == name(_sampling(100, 50))  # scored otherwise, drawn alike
    other = _sampling(100)
    other.eval.max_examples = 7
    assert name(other) == name(_sampling(100))
    other.sampling.batch_size = 30  # chunk i draws with fold_in(key, i): other draws
    assert name(other) != name(_sampling(100))


def test_samples_that_cannot_be_written_are_kept_in_the_temp_folder(trained, tmp_path):
    """samples/NAME.png is a folder (a write that fails after the check, for root too): the samples are drawn, the
    error says what could not be written and where they are kept; the exit status is 1."""
    from vdm.cli.modes import sample_name
    from vdm.config import record

    wd = _copy(trained, tmp_path)
    name = sample_name(record.load_recorded(wd), 4)
    os.makedirs(os.path.join(wd, "samples", name + ".png"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = run_cli([f"--workdir={wd}", "--mode=sample"], env={"TMPDIR": str(tmp)})
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    kept = str(tmp / (name + ".npz"))
    assert line.startswith("error: 64 samples were drawn, but ") and f"{name}.png/.npz could not be written" in line
    assert f"they are kept in {kept} instead" in line and proc.stdout.strip() == kept
    samples = np.load(kept)["samples"]
    assert samples.shape == (64, 2) and np.all(np.isfinite(samples))


def test_an_eval_that_cannot_be_written_is_printed_first(trained, tmp_path):
    """config_eval.json is a folder: the row goes to metrics.jsonl, the figures are printed, the error says what
    was not written."""
    wd = _copy(trained, tmp_path)
    os.makedirs(os.path.join(wd, "config_eval.json"))
    proc = run_cli([f"--workdir={wd}", "--mode=eval", "--max_examples=64"])
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["eval/num_examples"] == 64 and np.isfinite(result["eval/bpd"])
    summary, error = proc.stderr.strip().splitlines()[-2:]
    assert summary.startswith("checkpoint step 4: test -ELBO") and "first 64 test examples" in summary
    assert error.startswith("error: the eval above was computed but could not be written to ")
    assert error.split(" (")[0].endswith("config_eval.json")
    assert _rows(wd)[-1]["eval/bpd"] == result["eval/bpd"]


def test_an_untrained_autoencoder_workdir_names_the_command_that_trains_it(tmp_path):
    from vdm.config import validation
    from vdm.tasks.autoencoder_task import load_autoencoder

    ae = str(tmp_path / "ae")
    validation.save_config(load_config("fashion_mnist_ae", "small"), ae)  # a start that saved no checkpoint
    with pytest.raises(FileNotFoundError) as e:
        load_autoencoder(ae)
    message = str(e.value)
    assert f"--config.latent.autoencoder_workdir={ae} holds no checkpoint yet" in message
    assert f"python -m vdm.main --config=configs/fashion_mnist_ae.py --workdir={ae}" in message
    assert "--mode=train" not in message


def test_the_readme_python_example_runs_on_a_trained_run(trained, tmp_path):
    """README.md's Python block, on the tiny run (its workdir and sizes swapped in), prints finite figures."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    start = readme.index(PYTHON_BLOCK) + len(PYTHON_BLOCK)
    code = readme[start : readme.index("```", start)]
    assert 'workdir = "workdir/quick"' in code
    code = code.replace('workdir = "workdir/quick"', f"workdir = {_copy(trained, tmp_path)!r}")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
    assert figures["samples"] == "(16, 2)"
    assert np.isfinite(float(figures["-ELBO bits/dim"].split()[0]))
