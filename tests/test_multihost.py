"""Multi-process runs on JAX's distributed runtime: 2 CPU processes x 2 devices against 1 process x 4.

Each job is real `python -m vdm.main` processes joined through jax.distributed (gloo CPU
collectives, a free local port as coordinator); the reference is the same command as one
process with 4 devices and the same global batch, so both see the same mesh of 4 devices.
Every comparison reads what the runs leave in their workdirs (metrics.jsonl, checkpoints,
sample .npz), so it holds whatever the library's layout. Failure tests state their bounds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT
from vdm.data import pipeline

TOY = ["--config=configs/toy2d.py:small"]
ONE_STEP = [
    "--config.training.num_steps=1",
    "--config.training.checkpoint_every=1",
    "--config.training.eval_every=1",
    "--config.sampling.num_samples=8",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_", "TPU_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT + os.pathsep + env.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)  # --local_device_count sets the device count
    return env


class Job:
    """n `python -m vdm.main` processes of one job (n = 1: a plain single-process run), logs in files."""

    def __init__(
        self,
        args: list[str],
        logdir,
        *,
        num_processes: int,
        local_devices: int,
        start: tuple[int, ...] | None = None,
        timeout_flags: tuple[int, int] = (60, 20),
        via_env: bool = False,
    ):
        os.makedirs(logdir, exist_ok=True)
        self.logdir, self.procs, self.t0 = str(logdir), {}, time.monotonic()
        extra = [f"--local_device_count={local_devices}"]
        address = f"127.0.0.1:{_free_port()}"
        if num_processes > 1:
            extra += [f"--init_timeout={timeout_flags[0]}", f"--heartbeat_timeout={timeout_flags[1]}"]
            if not via_env:
                extra += [f"--coordinator_address={address}", f"--num_processes={num_processes}"]
        for i in range(num_processes) if start is None else start:
            env = _env()
            pid_flag = []
            if num_processes > 1 and via_env:  # the standard variables instead of the flags
                env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
            elif num_processes > 1:
                pid_flag = [f"--process_id={i}"]
            out = open(os.path.join(self.logdir, f"out{i}"), "w")
            err = open(os.path.join(self.logdir, f"err{i}"), "w")
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "vdm.main", *args, *extra, *pid_flag],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=err,
            )

    def wait(self, timeout: float = 300) -> dict[int, int]:
        """{process id: exit status}; kills whatever still runs after `timeout` seconds (then fails)."""
        deadline = time.monotonic() + timeout
        codes = {}
        for i, p in self.procs.items():
            try:
                codes[i] = p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                for q in self.procs.values():
                    if q.poll() is None:
                        q.kill()
                pytest.fail(f"process {i} still running after {timeout} s:\n{self.stderr(i)[-3000:]}")
        return codes

    def stderr(self, i: int) -> str:
        with open(os.path.join(self.logdir, f"err{i}")) as f:
            return f.read()

    def stdout(self, i: int) -> str:
        with open(os.path.join(self.logdir, f"out{i}")) as f:
            return f.read()

    def check(self, timeout: float = 300) -> None:
        """Wait and assert every process exited 0."""
        codes = self.wait(timeout)
        for i, c in codes.items():
            assert c == 0, f"process {i} exit {c}:\n{self.stderr(i)[-4000:]}"


def _run(args, logdir, *, num_processes, local_devices, timeout=300, via_env=False):
    job = Job(args, logdir, num_processes=num_processes, local_devices=local_devices, via_env=via_env)
    job.check(timeout)
    return job


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _state(workdir, step: int) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
    return {k: np.asarray(v) for k, v in ocp.StandardCheckpointer().restore(path).items()}


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)


def _result(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])


# ----------------------------------------------------------------------------- data sharding


@pytest.mark.parametrize("process_count", [2, 4])
def test_each_process_reads_a_disjoint_block_and_together_they_cover_the_train_batch(process_count):
    cfg = {"dataset": "mixture2d", "num_train": 100, "num_test": 50}
    whole = pipeline.train_iterator(cfg, 32, seed=3, start_step=2)
    parts = [
        pipeline.train_iterator(cfg, 32, seed=3, start_step=2, process_index=i, process_count=process_count)
        for i in range(process_count)
    ]
    for _ in range(8):  # 8 steps of 32 cross epochs of 100 examples
        full = next(whole)
        shards = [next(p) for p in parts]
        assert all(s["x"].shape == (32 // process_count, 2) for s in shards)
        np.testing.assert_array_equal(np.concatenate([s["x"] for s in shards]), full["x"])
        np.testing.assert_array_equal(np.concatenate([s["label"] for s in shards]), full["label"])
        rows = [{tuple(r) for r in s["x"].tolist()} for s in shards]
        if len({tuple(r) for r in full["x"].tolist()}) == 32:  # (a batch across epochs may repeat one)
            assert sum(map(len, rows)) == len(set().union(*rows)) == 32  # disjoint blocks


def test_train_shards_keep_the_random_flips_of_the_global_batch():
    from vdm.data.tfds_sets import is_prepared

    if not is_prepared("fashion_mnist"):
        pytest.skip("fashion_mnist not prepared (make data)")
    cfg = {"dataset": "fashion_mnist", "random_flip": True}
    full = next(pipeline.train_iterator(cfg, 16, seed=0, start_step=5))
    shards = [
        next(pipeline.train_iterator(cfg, 16, seed=0, start_step=5, process_index=i, process_count=2)) for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([s["x"] for s in shards]), full["x"])


def test_eval_shards_cover_the_split_exactly_once_with_the_padding_masked():
    cfg = {"dataset": "mixture2d", "num_train": 100, "num_test": 90}
    x_test, _ = pipeline.load_arrays(cfg, "test")
    whole = list(pipeline.eval_iterator(cfg, 40))
    parts = [list(pipeline.eval_iterator(cfg, 40, process_index=i, process_count=2)) for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 3  # every process runs every batch
    seen = []
    for b, s0, s1 in zip(whole, *parts):
        for k in ("x", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([s0[k], s1[k]]), b[k])
        seen += [s["x"][s["mask"]] for s in (s0, s1)]
    np.testing.assert_array_equal(np.concatenate(seen), x_test)  # each example once, in order


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        pipeline.eval_iterator({"dataset": "mixture2d"}, 32, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        pipeline.train_iterator({"dataset": "mixture2d"}, 32, seed=0, process_index=2, process_count=2)


# ----------------------------------------------------------------------------- 2 processes vs 1


def test_one_train_step_on_two_processes_equals_one_process_with_four_devices(tmp_path):
    """Params after one step, its loss, and the full-split eval: 2 procs x 2 devices == 1 proc x 4."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = TOY + ONE_STEP + ["--config.data.num_test=500"]  # 500 = 256 + 244: a padded last batch
    _run(common + [f"--workdir={one}"], tmp_path / "log1", num_processes=1, local_devices=4)
    job = _run(common + [f"--workdir={two}"], tmp_path / "log2", num_processes=2, local_devices=2)
    d_state = _max_diff(_state(one, 1), _state(two, 1))  # params, opt state, EMA after step 1
    r1, r2 = _records(one), _records(two)
    loss1 = [r["train/loss"] for r in r1 if "train/loss" in r]
    loss2 = [r["train/loss"] for r in r2 if "train/loss" in r]
    e1 = [r for r in r1 if "eval/bpd" in r][-1]
    e2 = [r for r in r2 if "eval/bpd" in r][-1]
    print(
        f"max |state diff| = {d_state:.3g}, |loss diff| = {abs(loss1[0] - loss2[0]):.3g}, "
        f"|bpd diff| = {abs(e1['eval/bpd'] - e2['eval/bpd']):.3g}"
    )
    assert d_state <= 1e-6  # float32 reduction order over 4 shards: ~1e-8
    assert len(loss1) == len(loss2) == 1 and abs(loss1[0] - loss2[0]) <= 1e-5 * abs(loss1[0])
    assert e1["eval/num_examples"] == e2["eval/num_examples"] == 500
    for k in ("eval/bpd", "eval/bpd_recon", "eval/bpd_prior", "eval/bpd_diffusion"):
        assert abs(e1[k] - e2[k]) <= 1e-5 * abs(e1[k]) + 1e-7, k
    # Written once: one metrics line per step and kind, one config; both processes logged as such.
    assert len(r2) == len(r1)
    assert "[process 1/2] I" in job.stderr(1) and "[process 0/2] I" in job.stderr(0)
    assert "test bits/dim" in job.stderr(0) and "test bits/dim" not in job.stderr(1)


@pytest.mark.slow
def test_two_process_checkpoints_restore_on_one_and_two_processes_for_eval_and_sample(tmp_path):
    """A 2-process run (joined through JAX_COORDINATOR_ADDRESS etc.): its checkpoint gives the same
    eval (ELBO and ODE) and samples on 1 and 2 processes, and training continues on 1."""
    wd = str(tmp_path / "wd")
    base = TOY + ["--config.data.num_test=500", f"--workdir={wd}"]
    job = _run(base, tmp_path / "train", num_processes=2, local_devices=2, via_env=True)  # JAX_* variables
    assert "jax.distributed: process 1 of 2, 2 local / 4 global devices" in job.stderr(1)
    evals = {}
    for n, dev in ((1, 4), (2, 2)):
        job = _run(base + ["--mode=eval"], tmp_path / f"eval{n}", num_processes=n, local_devices=dev)
        evals[n] = _result(job.stdout(0))
    print("eval 1 proc vs 2:", evals[1]["eval/bpd"], evals[2]["eval/bpd"])
    assert evals[1]["eval/num_examples"] == evals[2]["eval/num_examples"] == 500
    assert abs(evals[1]["eval/bpd"] - evals[2]["eval/bpd"]) <= 1e-5 * abs(evals[1]["eval/bpd"])
    ode = {}
    for n, dev in ((1, 4), (2, 2)):  # the ODE likelihood runs whole on each process
        job = _run(
            base + ["--mode=eval", "--eval_method=ode", "--ode_steps=4", "--max_examples=64"],
            tmp_path / f"ode{n}",
            num_processes=n,
            local_devices=dev,
        )
        ode[n] = _result(job.stdout(0))
    print("ode bpd 1 proc vs 2:", ode[1]["eval/ode_bpd"], ode[2]["eval/ode_bpd"])
    assert ode[1]["eval/ode_num_examples"] == ode[2]["eval/ode_num_examples"] == 64
    assert abs(ode[1]["eval/ode_bpd"] - ode[2]["eval/ode_bpd"]) <= 1e-5 * abs(ode[1]["eval/ode_bpd"])
    samples = {}
    for n, dev in ((1, 4), (2, 2)):
        job = _run(
            base + ["--mode=sample", "--config.sampling.num_samples=24"],
            tmp_path / f"sample{n}",
            num_processes=n,
            local_devices=dev,
        )
        png = job.stdout(0).strip().splitlines()[-1]
        samples[n] = np.load(png[:-4] + ".npz")["samples"]
        os.rename(png[:-4] + ".npz", png[:-4] + f"_{n}.npz")  # the second run would overwrite it
    d = float(np.max(np.abs(samples[1] - samples[2])))
    print(f"sample max |diff| 1 proc vs 2: {d:.3g}")
    assert samples[1].shape == (24, 2) and np.all(np.isfinite(samples[1]))
    assert d <= 1e-5
    # Training resumes from the 2-process checkpoint on 1 process (step 4 -> 6).
    job = _run(base + ["--config.training.num_steps=6"], tmp_path / "more", num_processes=1, local_devices=4)
    assert "resuming from checkpoint step 4" in job.stderr(0)
    assert [r["step"] for r in _records(wd) if "train/loss" in r] == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- failures


def test_a_process_that_never_starts_makes_the_other_exit_with_a_message_in_time(tmp_path):
    """Process 1 of 2 never starts: process 0 exits (status 3) within init_timeout + 15 s, saying why."""
    job = Job(
        TOY + [f"--workdir={tmp_path / 'wd'}"],
        tmp_path / "log",
        num_processes=2,
        local_devices=2,
        start=(0,),
        timeout_flags=(8, 10),
    )
    codes = job.wait(timeout=60)
    elapsed = time.monotonic() - job.t0
    print(f"process 0 exited {codes[0]} after {elapsed:.1f} s (init_timeout 8 s)")
    assert codes[0] == 3
    assert "did not form within 8 s" in job.stderr(0)
    assert elapsed <= 8 + 15  # the timeout plus python/jax start-up


def _wait_for_step(workdir, step: int, job: Job, timeout: float = 120) -> int:
    """Poll metrics.jsonl until a train record at >= step appears; returns the newest train step seen."""
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in job.procs.values()):
            pytest.fail("a process ended early:\n" + job.stderr(0)[-3000:])
        if os.path.exists(path):
            steps = [r["step"] for r in _records(workdir) if "train/loss" in r]
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.05)
    pytest.fail(f"step {step} not reached in {timeout} s")


LONG = TOY + [
    "--config.training.num_steps=150",
    "--config.training.checkpoint_every=10",
    "--config.training.log_every=1",
    "--config.training.eval_every=150",
    "--config.training.keep_checkpoints=2",
    "--config.model.width=256",
    "--config.model.num_layers=3",
]
HEARTBEAT = 10


def _stop_one(tmp_path, wd: str, victim: int, sig: int) -> int:
    """Run LONG on 2 processes, send `sig` to `victim` after step 37; assert the survivor aborts in time. Returns the last logged step."""
    job = Job(
        LONG + [f"--workdir={wd}"], tmp_path / "run", num_processes=2, local_devices=2, timeout_flags=(60, HEARTBEAT)
    )
    _wait_for_step(wd, 37, job)
    job.procs[victim].send_signal(sig)
    t_sig = time.monotonic()
    survivor = 1 - victim
    try:
        code = job.procs[survivor].wait(timeout=HEARTBEAT + 60)
    finally:
        exit_s = time.monotonic() - t_sig
        job.procs[victim].kill()  # (a stopped process is killed now)
        job.procs[victim].wait()
    reached = max(r["step"] for r in _records(wd) if "train/loss" in r)
    print(
        f"survivor (process {survivor}) exited {code} {exit_s:.1f} s after {signal.Signals(sig).name} "
        f"of process {victim} (heartbeat_timeout {HEARTBEAT} s); last logged step {reached}"
    )
    assert code != 0
    assert "distributed service detected fatal errors" in job.stderr(survivor)
    assert exit_s <= HEARTBEAT + 10
    return reached


@pytest.mark.slow
@pytest.mark.parametrize("victim,sig", [(0, signal.SIGKILL), (1, signal.SIGSTOP)])
def test_a_dead_or_frozen_process_stops_the_other_within_the_heartbeat_timeout(tmp_path, victim, sig):
    """SIGKILL of the coordinator, or SIGSTOP (frozen, no heartbeats) of process 1: the other
    process aborts with jax's 'detected fatal errors' message within heartbeat_timeout + 10 s."""
    _stop_one(tmp_path, str(tmp_path / "wd"), victim, sig)


@pytest.mark.slow
def test_after_sigkill_of_one_process_the_job_resumes_losing_at_most_one_interval(tmp_path):
    """SIGKILL process 1 mid-run: the survivor aborts in time; a restart resumes losing at most one
    checkpoint interval and ends with the params of an uninterrupted 1-process run."""
    wd = str(tmp_path / "wd")
    reached = _stop_one(tmp_path, wd, 1, signal.SIGKILL)
    restart = Job(LONG + [f"--workdir={wd}"], tmp_path / "restart", num_processes=2, local_devices=2)
    restart.check(timeout=300)
    resumed = int(restart.stderr(0).split("resuming from checkpoint step ")[1].split()[0])
    print(f"resumed at step {resumed}: {reached - resumed} steps lost (checkpoint interval 10)")
    assert reached - 10 <= resumed <= reached
    steps = [r["step"] for r in _records(wd) if "train/loss" in r]
    assert steps[-1] == 150 and set(steps) == set(range(1, 151))
    ref = str(tmp_path / "ref")
    _run(LONG + [f"--workdir={ref}"], tmp_path / "ref_log", num_processes=1, local_devices=4)
    d = _max_diff(_state(ref, 150), _state(wd, 150))
    print(f"final state max |diff| resumed 2-proc vs uninterrupted 1-proc: {d:.3g}")
    assert d <= 1e-4


@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_the_same_saved_step(tmp_path):
    """SIGTERM to process 1 alone: both processes agree at the next log_every boundary, save that step together
    and exit 128 + SIGTERM with the one-line message; the checkpoint is complete (readable)."""
    wd = str(tmp_path / "run")
    args = TOY + [
        f"--workdir={wd}",
        "--config.training.num_steps=100000",
        "--config.training.log_every=5",
        "--config.training.checkpoint_every=100000",
        "--config.training.eval_every=100000",
        "--config.optimizer.decay=constant",
    ]
    job = Job(args, tmp_path / "log", num_processes=2, local_devices=2)
    deadline = time.monotonic() + 180
    metrics = os.path.join(wd, "metrics.jsonl")
    while time.monotonic() < deadline and all(p.poll() is None for p in job.procs.values()):
        if os.path.exists(metrics) and any(r.get("step", 0) >= 10 for r in _records(wd)):
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p in job.procs.values()), job.stderr(0)[-3000:] + job.stderr(1)[-3000:]
    job.procs[1].send_signal(signal.SIGTERM)
    codes = job.wait(120)
    assert codes == {0: 128 + signal.SIGTERM, 1: 128 + signal.SIGTERM}, job.stderr(0)[-3000:]
    steps = [int(n) for n in os.listdir(os.path.join(wd, "checkpoints")) if n.isdigit()]
    assert len(steps) == 1 and steps[0] % 5 == 0 and steps[0] >= 10, steps
    for i in (0, 1):
        assert f"stopped by SIGTERM at step {steps[0]}" in job.stderr(i) and "Traceback" not in job.stderr(i)
    assert _state(wd, steps[0])  # a complete, readable checkpoint
