"""The training system: it learns, it is device-count invariant, it resumes exactly, its loss is the ELBO."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, run_cli, run_python, sigkill_past_checkpoint
from vdm import objectives
from vdm.data import pipeline
from vdm.evaluation import split_eval
from vdm.infra import parallel
from vdm.infra.checkpoint import Checkpointer
from vdm.tasks import diffusion_model as dm
from vdm.tasks import diffusion_task


def _toy_config(**training):
    """Small unlocked toy2d config (Gaussian data with a known NLL), dropout 0."""
    c = load_config("toy2d", "gaussian")
    c.data.dim = 2
    c.data.num_train, c.data.num_test = 4096, 2000
    c.model.width, c.model.num_layers = 64, 2
    c.optimizer.warmup_steps = 20
    c.training.update(batch_size=128, num_steps=300, **training)
    c.eval.batch_size = 400
    return c


def _train(trainer, mesh, state, num_steps, *, start=0, steps_per_call=1):
    c = trainer.config
    fn = parallel.data_parallel(lambda s, b: dm.train_step(trainer, s, b), mesh, steps_per_call=steps_per_call)
    batches = pipeline.train_iterator(c.data, c.training.batch_size, seed=c.seed, start_step=start)
    metrics = []
    for _ in range(num_steps // steps_per_call):
        group = [next(batches) for _ in range(steps_per_call)]
        stacked = {k: np.stack([b[k] for b in group]) for k in group[0]}
        state, m = fn(state, parallel.shard_batch(stacked, mesh, leading_axes=1))
        metrics.append(m)
    return state, metrics, fn


def _elbo(trainer, mesh, params):
    eval_fn = parallel.data_parallel_eval(lambda p, b, k: dm.eval_step(trainer, p, b, k), mesh)
    return diffusion_task.evaluate_elbo(eval_fn, params, trainer.config, trainer.info, mesh, jax.random.PRNGKey(5))


def test_training_lowers_the_elbo_toward_the_true_nll_on_gaussian_data():
    c = _toy_config()
    c.data.num_test = 8000  # bpd_se ~ 0.1
    trainer, mesh = dm.setup(c)
    state = parallel.replicate(trainer.init_state(jax.random.PRNGKey(0)), mesh)
    before = _elbo(trainer, mesh, state.ema_params)
    state, metrics, fn = _train(trainer, mesh, state, c.training.num_steps)
    after = _elbo(trainer, mesh, state.params)
    assert fn._cache_size() == 1  # one compilation for all 300 steps
    se = math.hypot(before["eval/bpd_se"], after["eval/bpd_se"])
    assert after["eval/bpd"] < before["eval/bpd"] - 5 * se, (before, after)
    # Independent truth: -ELBO >= model NLL, and cross-entropy >= the data's exact NLL (Gibbs).
    x_test, _ = pipeline.load_arrays(c.data, "test")
    exact = np.mean(pipeline.gaussian_nll(x_test, np.asarray(trainer.info.scales))) / (2 * math.log(2))
    assert after["eval/bpd"] > exact - 4 * after["eval/bpd_se"], (after, exact)
    assert after["eval/bpd"] < exact + 0.3 + 4 * after["eval/bpd_se"], (after, exact)  # and near it
    assert after["eval/num_examples"] == c.data.num_test
    assert int(state.step) == c.training.num_steps


def test_train_loss_with_elbo_weighting_is_the_eval_elbo_and_its_mean_is_the_negative_elbo():
    """One function for both: with the same noise the training terms (weighting 'elbo') equal the eval step's terms
    exactly, and over fresh noise the batch loss averages to E[-ELBO] of vdm.objectives.elbo's own draws."""
    c = _toy_config()
    c.training.batch_size = 1000
    c.loss.t_sampling = "uniform"
    trainer, mesh = dm.setup(c)
    params = trainer.init_state(jax.random.PRNGKey(1)).params
    # Give the net a non-trivial output first: perturb the zero-initialised last layer.
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    x = jnp.asarray(pipeline.load_arrays(c.data, "test")[0][:1000])
    batch = {"x": x, "label": jnp.zeros((1000,), jnp.int32), "index": jnp.arange(1000)}
    key = jax.random.PRNGKey(3)
    train_terms = jax.jit(lambda p, k: trainer.loss_terms(p, batch, k, train=True))(params, key)
    eval_terms = jax.jit(lambda p, k: trainer.loss_terms(p, batch, k, train=False))(params, key)
    for name in objectives.TERM_NAMES:
        np.testing.assert_array_equal(train_terms[name], eval_terms[name])

    keys = jax.random.split(jax.random.PRNGKey(3), 40)
    loss = jax.jit(lambda k: trainer.value_and_grad(params, batch, k)[0][0])
    ours = np.array([float(loss(k)) for k in keys])
    ref_fn = jax.jit(
        lambda k: jnp.mean(
            objectives.elbo(trainer.denoise_fn(params), x, k, schedule=trainer.fixed_schedule, decoder="gaussian")[
                "total"
            ]
        )
    )
    ref = np.array([float(ref_fn(k)) for k in jax.random.split(jax.random.PRNGKey(4), 40)])
    se = math.sqrt(ours.var(ddof=1) / len(ours) + ref.var(ddof=1) / len(ref))
    assert abs(ours.mean() - ref.mean()) < 4 * se, (ours.mean(), ref.mean(), se)


def test_the_loss_is_a_pure_function_of_the_batch_whatever_the_device_split():
    """Per-example terms computed outside shard_map on the whole batch equal those of any contiguous split of it
    (each part with its rows' global indices): the noise is drawn by (key, global example index)."""
    c = _toy_config()
    trainer, _ = dm.setup(c)
    params = jax.tree.map(
        lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
        trainer.init_state(jax.random.PRNGKey(0)).params,
    )
    b = next(pipeline.train_iterator(c.data, 128, seed=0))
    key = jax.random.PRNGKey(7)
    terms = jax.jit(lambda bb: trainer.loss_terms(params, bb, key))
    whole = terms(b)
    for parts in (2, 8):
        pieces = [terms({k: v[i * 128 // parts : (i + 1) * 128 // parts] for k, v in b.items()}) for i in range(parts)]
        for name in objectives.TERM_NAMES:
            np.testing.assert_allclose(np.concatenate([p[name] for p in pieces]), whole[name], rtol=2e-6, atol=2e-5)
    shuffled = {k: v[::-1] for k, v in b.items()}  # the same rows in another order
    np.testing.assert_allclose(terms(shuffled)["total"][::-1], whole["total"], rtol=2e-6, atol=2e-5)


_MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from test_train import _toy_config, _train
    from vdm.infra import parallel
    from vdm.tasks import diffusion_model as dm
    from vdm.infra.checkpoint import Checkpointer
    assert jax.device_count() == 8, jax.devices()
    c = _toy_config(steps_per_call={spc})
    trainer, mesh = dm.setup(c)
    state = parallel.replicate(trainer.init_state(jax.random.PRNGKey(0)), mesh)
    state, metrics, _ = _train(trainer, mesh, state, 2, steps_per_call={spc})
    with Checkpointer({out!r}) as ckpt:
        ckpt.save(int(state.step), parallel.to_host(state))
    print(json.dumps([float(v) for m in metrics for v in np.asarray(m["loss"])]))
""")


def test_two_steps_on_eight_devices_equal_one_device_and_restore_across_counts(tmp_path):
    # 8 fake CPU devices, both steps in one call (lax.scan), vs 1 device, one step per call.
    out = str(tmp_path / "ckpt8")
    script = _MULTI_DEVICE_SCRIPT.format(out=out, spc=2)
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), REPO_ROOT]),
    }  # test_train, conftest, vdm
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses8 = json.loads(proc.stdout.strip().splitlines()[-1])

    c = _toy_config()
    trainer, mesh = dm.setup(c)
    assert jax.device_count() == 1
    state = parallel.replicate(trainer.init_state(jax.random.PRNGKey(0)), mesh)
    state, metrics, _ = _train(trainer, mesh, state, 2)
    losses1 = [float(m["loss"][0]) for m in metrics]
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    mine = parallel.to_host(state)
    with Checkpointer(out) as ckpt:  # written by 8 devices, read by 1
        theirs, step = ckpt.restore_latest(mine)
    assert step == 2
    for a, b in zip(jax.tree.leaves(theirs), jax.tree.leaves(mine)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _losses_by_step(workdir):
    """{step: train/loss}; for a step logged twice (before a kill and after resuming) the last line wins."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "train/loss" in rec:
                out[rec["step"]] = rec["train/loss"]
    return out


def _logged_steps(workdir):
    try:
        return _losses_by_step(workdir)
    except (OSError, ValueError):  # not written yet, or a line half-written
        return {}


def test_resume_after_sigkill_continues_bit_identically(tmp_path):
    """Kill -9 a run a few steps after a checkpoint; the rerun replays those steps with identical losses.

    The learning rate is constant, so num_steps does not change the trajectory: the first run is
    long (it is killed anyway) and the rerun stops just past the kill point.
    """
    args = [
        "--config=configs/toy2d.py:small",
        "--config.optimizer.decay=constant",
        "--config.training.checkpoint_every=10",
        "--config.training.eval_every=10000",
        "--config.training.log_every=1",
        "--config.training.keep_checkpoints=2",
        f"--workdir={tmp_path}",
    ]
    ckpt_dir = os.path.join(tmp_path, "checkpoints")
    sigkill_past_checkpoint(
        ["-m", "vdm.main", *args, "--config.training.num_steps=10000"], str(tmp_path), _logged_steps
    )
    before = _losses_by_step(tmp_path)  # the uninterrupted run, up to the kill
    with Checkpointer(ckpt_dir) as ckpt:
        resume_from = ckpt.latest_step()
    overlap = [s for s in before if s > resume_from]
    assert resume_from is not None and len(overlap) >= 1, (resume_from, max(before))

    end = max(before) + 2
    proc = run_cli(args + [f"--config.training.num_steps={end}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from checkpoint step {resume_from}" in proc.stderr
    after = _losses_by_step(tmp_path)  # last line per step: the resumed run's
    assert [after[s] for s in overlap] == [before[s] for s in overlap]  # bit-identical floats
    assert sorted(after) == list(range(1, end + 1))


def test_learned_schedule_grads_are_grad_of_second_moment_for_shape_and_mean_loss_for_endpoints():
    """Against central finite differences: shape <- d E[L_diff^2], endpoints <- d E[loss] (VDM sec. 5.2)."""
    c = _toy_config()
    c.model.schedule, c.model.learn_endpoints = "learned", True
    trainer, mesh = dm.setup(c)
    params = trainer.init_state(jax.random.PRNGKey(0)).params
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    x = jnp.asarray(pipeline.load_arrays(c.data, "train")[0][:256])
    batch = {"x": x, "label": jnp.zeros((256,), jnp.int32), "index": jnp.arange(256)}
    keys = jax.random.split(jax.random.PRNGKey(3))

    @jax.jit
    def run(p, b):
        (_, terms), grads = trainer.value_and_grad(p, b, *keys)
        return grads, objectives.batch_means(terms)

    grads, _ = run(params, batch)

    def second_moment(terms):
        return float(terms["diffusion_var"]) + float(terms["diffusion"]) ** 2

    def central(path, f, h):
        def at(delta):
            p = jax.tree_util.tree_map_with_path(
                lambda kp, v: v + delta if jax.tree_util.keystr(kp) == path else v, params
            )
            return f(run(p, batch)[1])

        return (at(h) - at(-h)) / (2 * h)

    leaves = {jax.tree_util.keystr(kp): v for kp, v in jax.tree_util.tree_flatten_with_path(grads)[0]}
    for path, f, h in [
        ("['schedule']['endpoints']['gamma_min']", lambda t: float(t["loss"]), 2e-3),
        ("['schedule']['endpoints']['gap_raw']", lambda t: float(t["loss"]), 2e-3),
        ("['schedule']['shape']['l1']['bias']", second_moment, 2e-3),
    ]:
        ours = float(np.sum(leaves[path]))
        fd = central(path, f, h)
        assert abs(ours - fd) <= 0.03 * abs(fd) + 1e-2, (path, ours, fd)


def test_bfloat16_training_loss_and_grads_match_float32_with_float32_params():
    c32 = _toy_config()
    c16 = _toy_config(dtype="bfloat16")
    info = pipeline.get_dataset_info(c32.data)
    t32, t16 = dm.build(c32, info), dm.build(c16, info)
    params = t32.init_params(jax.random.PRNGKey(0))
    # Away from the zero-initialised output layer, so the network's output is not exactly 0.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: p + jnp.asarray(0.05 * rng.standard_normal(p.shape), p.dtype), params)
    batch = next(pipeline.train_iterator(c32.data, 128, seed=0))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss_grads(trainer):
        f = lambda p, b: trainer.value_and_grad(p, b, jax.random.PRNGKey(1), jax.random.PRNGKey(2))
        (loss, _), grads = jax.jit(f)(params, batch)
        return loss, grads

    loss32, g32 = loss_grads(t32)
    loss16, g16 = loss_grads(t16)
    assert abs(float(loss16) / float(loss32) - 1) < 0.05, (float(loss16), float(loss32))
    assert {str(g.dtype) for g in jax.tree.leaves(g16)} == {"float32"}
    flat32 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g32)])
    flat16 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g16)])
    cos = float(flat16 @ flat32 / (jnp.linalg.norm(flat16) * jnp.linalg.norm(flat32)))
    assert cos > 0.99, cos  # the same descent direction, to bf16 rounding


_SIGINT_SCRIPT = textwrap.dedent("""
    import os, signal, threading, time
    import jax, jax.numpy as jnp
    from conftest import load_config
    from vdm.infra import parallel
    from vdm.tasks import diffusion_task, loop
    from vdm.tasks import diffusion_model as dm

    N, WORKDIR = {n}, {workdir!r}
    c = load_config("toy2d", "small")
    c.training.update(num_steps=100000, log_every=100000, checkpoint_every=100000, eval_every=100000)
    model, mesh = dm.setup(c)
    task = diffusion_task.DiffusionTask(model)
    inner = task.train_step

    def train_step(state, batch):  # a slow device step (no host callback: those make dispatch synchronous)
        state, metrics = inner(state, batch)
        busy = jax.lax.fori_loop(0, 60, lambda i, a: jnp.tanh(a @ a), jnp.full((192, 192), 0.01))
        return state, {{**metrics, "busy": busy[0, 0]}}

    task.train_step = train_step
    outs, seen = [], {{}}  # every call's metrics as dispatched; what the watcher saw
    make = parallel.data_parallel

    def watched(*args, **kwargs):  # the loop's train fn, recording its outputs (it does not wait on them)
        fn = make(*args, **kwargs)

        def call(state, batch):
            state, metrics = fn(state, batch)
            outs.append(metrics["loss"])
            return state, metrics

        return call

    def finished():  # steps whose results are ready, in order
        return next((i for i, m in enumerate(list(outs)) if not m.is_ready()), len(outs))

    def watch():  # SIGINT once step N has finished; then count the finished steps
        while finished() < N:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)
        seen["finished"] = finished()

    parallel.data_parallel = watched
    threading.Thread(target=watch, daemon=True).start()
    try:
        loop.run(task, mesh, WORKDIR)
    except loop.Interrupted as e:
        print("STOPPED", e.step, seen["finished"])
""")


def test_sigint_saves_within_three_steps_of_the_last_finished_step(tmp_path):
    """SIGINT on a slow device saves a step <= F + 3, F the steps finished when it lands (counted just after): the
    loop dispatches step k only once step k - 2 has finished (loop.MAX_IN_FLIGHT = 2), so at most F + 2 are dispatched
    when the handler runs, and the stop is checked after at most one more dispatch. Unbounded asynchronous dispatch
    would save tens of steps later (it runs ahead of the device until the runtime's queue fills)."""
    n, workdir = 20, str(tmp_path / "run")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), REPO_ROOT])}
    proc = run_python(_SIGINT_SCRIPT.format(n=n, workdir=workdir), env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stopped, finished = map(int, proc.stdout.split("STOPPED")[-1].split())
    with Checkpointer(os.path.join(workdir, "checkpoints"), create=False) as ckpt:
        assert ckpt.all_steps() == [stopped]
    assert n <= finished <= stopped <= finished + 3, (n, finished, stopped)


def test_chunk_rows_fits_the_budget_in_the_fewest_even_calls():
    """Against a direct search: the fewest calls whose rows fit the budget (temporaries linear in the rows), evenly."""
    for rows in (1, 7, 100, 1000):
        for temp in (None, 10, 999, 10**6):
            for budget in (1, 50, 1000, 10**7):
                got = split_eval.chunk_rows(rows, temp, budget)
                if temp is None or temp <= budget:
                    assert got == rows
                    continue
                fits = lambda r: r * temp <= budget * rows  # noqa: E731
                calls = next((c for c in range(1, rows + 1) if fits(-(-rows // c))), rows)
                assert got == -(-rows // calls), (rows, temp, budget, got, calls)


def test_eval_in_memory_sized_calls_gives_each_example_the_same_noise_and_result():
    """A batch split into calls by a small memory budget (4 calls, the last padded) gives per-example terms equal to
    the one-call batch: the noise-only terms (reconstruction, prior) bit for bit, the total to float32 rounding of the
    network's output (XLA picks its matmul kernels by the batch shape: ~2e-6 of the diffusion term, which the total
    cancels against the reconstruction). So a config's eval figure does not depend on the memory it runs in."""
    c = _toy_config()
    trainer, mesh = dm.setup(c)
    params = jax.tree.map(
        lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
        trainer.init_state(jax.random.PRNGKey(0)).params,
    )
    eval_fn = parallel.data_parallel_eval(lambda p, b, k: dm.eval_step(trainer, p, b, k), mesh)
    key, batch = jax.random.PRNGKey(5), 250
    first = next(pipeline.eval_iterator(c.data, batch))
    inputs = parallel.shard_batch({k: v for k, v in first.items() if k != "mask"}, mesh)
    temp = split_eval.call_temp_bytes(eval_fn, params, inputs, key)
    assert temp and split_eval.chunk_rows(batch, temp, temp // 3) == 63  # 4 calls, 2 padded rows
    whole = split_eval.over_split(eval_fn, params, c.data, batch, mesh, key)
    parts = split_eval.over_split(eval_fn, params, c.data, batch, mesh, key, budget=temp // 3)
    assert len(whole["total"]) == len(parts["total"]) == c.data.num_test
    for name in ("reconstruction", "prior"):
        np.testing.assert_array_equal(parts[name], whole[name])
    scale = np.max(np.abs(whole["total"] - whole["reconstruction"]))  # the diffusion (and prior) term's size
    np.testing.assert_allclose(parts["total"], whole["total"], rtol=0, atol=1e-5 * scale)
    assert np.std(whole["total"]) > 1000 * np.max(np.abs(parts["total"] - whole["total"]))  # other keys: far off


def test_a_png_grid_is_the_native_grid_with_each_pixel_a_scale_by_scale_block(tmp_path):
    """save_samples_png: 36 images -> 6 x 6 cells of 28 + 2 px, every pixel 4 x 4 (the default) or 1 x 1 (scale=1)."""
    from PIL import Image

    from vdm.infra.metrics import image_grid, save_samples_png

    x = np.random.default_rng(0).uniform(-1, 1, (36, 28, 28, 1))
    native = image_grid(x)
    assert native.shape == (6 * 30 + 2, 6 * 30 + 2, 1)
    save_samples_png(str(tmp_path / "g1.png"), x, scale=1)
    save_samples_png(str(tmp_path / "g4.png"), x)  # the default scale
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g1.png")), native[..., 0])
    big = np.asarray(Image.open(tmp_path / "g4.png"))
    np.testing.assert_array_equal(big, np.kron(native[..., 0], np.ones((4, 4), np.uint8)))


def test_a_conditional_grid_puts_one_class_in_each_row(tmp_path):
    """save_samples_png(labels=arange(N) % K): row r of the grid holds exactly the samples of class r, in drawing order;
    unequal counts per class fall back to a near-square grid, sorted by class."""
    from PIL import Image

    from vdm.infra.metrics import class_rows, image_grid, save_samples_png

    k, per = 10, 4
    labels = np.arange(k * per) % k
    x = labels[:, None, None, None] * np.ones((1, 3, 3, 1)) / k * 2 - 1 + np.arange(k * per)[:, None, None, None] * 1e-3
    save_samples_png(str(tmp_path / "c.png"), x, scale=1, labels=labels)
    grid = np.asarray(Image.open(tmp_path / "c.png"))
    assert grid.shape == (k * 5 + 2, per * 5 + 2)  # K rows of `per` cells, 3 px + 2 px padding each
    for r in range(k):
        for q in range(per):
            cell = grid[2 + 5 * r : 5 + 5 * r, 2 + 5 * q : 5 + 5 * q]
            np.testing.assert_array_equal(cell, image_grid(x[[r + k * q]], pad=0)[..., 0])  # class r, its q-th draw
    ordered, cols = class_rows(x[:-1], labels[:-1])  # class 9 drawn 3 times, the others 4
    assert cols is None and np.array_equal(ordered[:4], x[[0, 10, 20, 30]])
    with pytest.raises(ValueError, match="one label per sample"):
        class_rows(x, labels[:-1])


@pytest.mark.slow
def test_the_autoencoders_grids_are_square_and_their_pngs_4x_nearest_neighbour(tmp_path):
    """config.eval.num_images = 32: the prior grid draws 36 (6 x 6, no empty cell), the reconstructions 32 + 32 (8 x 8);
    each PNG is the native grid (28 px + 2 px padding a cell) with every pixel a 4 x 4 block."""
    from PIL import Image

    from vdm.infra.metrics import MetricWriter
    from vdm.tasks import autoencoder_task

    c = load_config("fashion_mnist_ae", "small")
    c.eval.max_examples, c.eval.batch_size = 8, 8
    task = autoencoder_task.build(c)
    mesh = parallel.make_mesh()
    state = parallel.replicate(task.init_state(), mesh)
    writer = MetricWriter(str(tmp_path), tensorboard=False)
    task.evaluate(state, 0, mesh, str(tmp_path), writer)
    writer.close()
    for name, cells in (("prior", 6), ("recon", 8)):
        png = np.asarray(Image.open(tmp_path / "samples" / f"{name}_0000000.png"))
        side = 4 * (cells * (28 + 2) + 2)
        assert png.shape == (side, side), (name, png.shape)
        blocks = png.reshape(side // 4, 4, side // 4, 4)
        assert (blocks == blocks[:, :1, :, :1]).all()  # nearest neighbour: constant 4 x 4 blocks
        native = blocks[:, 0, :, 0]
        assert (native[:2] == 255).all() and (native[-2:] == 255).all()  # the padding frames every row of cells
    assert [autoencoder_task.square_count(n) for n in (1, 2, 4, 5, 32, 36, 37)] == [1, 4, 4, 9, 36, 36, 49]
