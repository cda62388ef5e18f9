"""Checkpoints: exact round trip, retention, corrupt-newest fallback, interrupted saves ignored."""

from __future__ import annotations

import glob
import logging
import os

import numpy as np
import pytest

from vdm.infra.checkpoint import CheckpointCorruptError, Checkpointer


def _state(step: int) -> dict:
    """A small train-state-like pytree whose values depend on the step."""
    rng = np.random.default_rng(step)
    return {
        "step": np.array(step, np.int32),
        "key": np.array([7, step], np.uint32),
        "params": {
            "w": rng.standard_normal((4, 3)).astype(np.float32),
            "b": rng.standard_normal((3,)).astype(np.float32),
        },
        "opt_state": (np.zeros((), np.int32), {"mu": rng.standard_normal((4, 3)).astype(np.float32)}),
    }


def _assert_equal(a: dict, b: dict) -> None:
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def _leaves(tree):
    import jax

    return [np.asarray(v) for v in jax.tree.leaves(tree)]


def _save_steps(directory: str, steps, keep: int = 5) -> None:
    with Checkpointer(directory, max_to_keep=keep) as ckpt:
        for s in steps:
            assert ckpt.save(s, _state(s))


def _step_files(directory: str, step: int) -> list[str]:
    return [f for f in glob.glob(os.path.join(directory, str(step), "**", "*"), recursive=True) if os.path.isfile(f)]


def test_round_trip_is_exact_and_keeps_only_the_newest(tmp_path):
    d = str(tmp_path / "ckpt")
    _save_steps(d, [1, 2, 3, 4], keep=2)
    with Checkpointer(d, max_to_keep=2) as ckpt:
        assert ckpt.all_steps() == [3, 4]
        state, step = ckpt.restore_latest(_state(0))
    assert step == 4
    _assert_equal(state, _state(4))


def test_an_existing_step_is_never_overwritten(tmp_path):
    d = str(tmp_path / "ckpt")
    _save_steps(d, [1])
    with Checkpointer(d) as ckpt:
        assert not ckpt.save(1, _state(99))
        state, _ = ckpt.restore_latest(_state(0))
    _assert_equal(state, _state(1))


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_newest_checkpoint_falls_back_to_previous_and_deletes_nothing(tmp_path, caplog, damage):
    d = str(tmp_path / "ckpt")
    _save_steps(d, [1, 2, 3])
    # Damage every data file of the newest step (array chunks and metadata alike).
    files = [f for f in _step_files(d, 3) if os.path.getsize(f) > 0]
    assert files
    for f in files:
        raw = bytearray(open(f, "rb").read())
        if damage == "truncate":
            raw = raw[: len(raw) // 3]
        else:
            for i in range(len(raw) // 4, len(raw)):
                raw[i] ^= 0xA5
        open(f, "wb").write(bytes(raw))
    before = sorted(glob.glob(os.path.join(d, "**"), recursive=True))
    with caplog.at_level(logging.WARNING, logger="vdm.infra.checkpoint"):
        with Checkpointer(d) as ckpt:
            state, step = ckpt.restore_latest(_state(0))
    assert step == 2
    _assert_equal(state, _state(2))
    assert any("step 3" in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)
    assert sorted(glob.glob(os.path.join(d, "**"), recursive=True)) == before  # nothing deleted


def test_silent_bit_flip_in_array_data_is_caught_by_the_checksum(tmp_path, caplog):
    d = str(tmp_path / "ckpt")
    _save_steps(d, [1, 2])
    with Checkpointer(d) as ckpt:
        # Rewrite step 2's arrays with valid orbax files holding different values: only the
        # checksum in its metadata can tell.
        import orbax.checkpoint as ocp

        from vdm.infra.checkpoint import _flatten

        bad = _flatten(_state(2))
        bad["['params']['b']"] = bad["['params']['b']"] + np.float32(1e-3)
        meta = ckpt._manager.restore(2, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    import shutil

    shutil.rmtree(os.path.join(d, "2"))
    with ocp.CheckpointManager(d, item_names=("state", "meta")) as manager:
        manager.save(
            2, args=ocp.args.Composite(state=ocp.args.StandardSave(bad), meta=ocp.args.JsonSave(meta)), force=True
        )
    with caplog.at_level(logging.WARNING, logger="vdm.infra.checkpoint"):
        with Checkpointer(d) as ckpt:
            with pytest.raises(CheckpointCorruptError, match="checksum"):
                ckpt.restore(2, _state(0))
            _, step = ckpt.restore_latest(_state(0))
    assert step == 1


def test_an_interrupted_save_is_invisible(tmp_path):
    # orbax writes a step into '<step>.orbax-checkpoint-tmp-*' and renames it when complete;
    # a kill leaves only the tmp dir, which must not count as a checkpoint.
    d = str(tmp_path / "ckpt")
    _save_steps(d, [1])
    partial = os.path.join(d, "2.orbax-checkpoint-tmp-1234567")
    os.makedirs(os.path.join(partial, "state"))
    open(os.path.join(partial, "state", "garbage"), "wb").write(b"\x00" * 10)
    with Checkpointer(d) as ckpt:
        assert ckpt.all_steps() == [1]
        _, step = ckpt.restore_latest(_state(0))
    assert step == 1


def test_every_checkpoint_corrupt_raises_instead_of_starting_over(tmp_path):
    d = str(tmp_path / "ckpt")
    _save_steps(d, [1])
    for f in _step_files(d, 1):
        open(f, "wb").write(b"")
    with Checkpointer(d) as ckpt:
        with pytest.raises(CheckpointCorruptError, match="no intact checkpoint"):
            ckpt.restore_latest(_state(0))


def test_state_of_another_shape_is_a_mismatch_not_corruption(tmp_path):
    """Intact checkpoints of another config: CheckpointMismatchError naming the entry and both shapes; no
    fallback to an older step (they are all the other config's), nothing moved or deleted."""
    from vdm.infra.checkpoint import CheckpointMismatchError

    d = str(tmp_path / "ckpt")
    _save_steps(d, [1, 2])
    other = _state(0)
    other["params"]["w"] = np.zeros((5, 3), np.float32)
    with Checkpointer(d) as ckpt:
        with pytest.raises(CheckpointMismatchError, match=r"\['w'\].*\(4, 3\).*\(5, 3\)"):
            ckpt.restore(1, other)
        with pytest.raises(CheckpointMismatchError, match="step 2"):
            ckpt.restore_latest(other, quarantine=True)
        assert ckpt.all_steps() == [1, 2]
    assert sorted(os.listdir(d)) == ["1", "2"]


def test_unrolled_checkpoint_into_scanned_config_names_the_conversion(tmp_path):
    """A checkpoint with VDMUNet blocks down_0.. restored as scanned ('down' -> 'block'): a typed mismatch whose entry
    sets name both layouts (vdm.models.convert.block_layout), before any array is read."""
    from vdm.infra.checkpoint import CheckpointMismatchError
    from vdm.models.convert import block_layout, maybe_convert_params

    rng = np.random.default_rng(0)
    block = lambda: {"conv0": {"kernel": rng.standard_normal((3, 2)).astype(np.float32)}}
    unrolled = {
        "step": np.array(1, np.int32),
        "params": {
            "model": {
                "down_0": block(),
                "down_1": block(),
                "up_0": block(),
                "up_1": block(),
                "up_2": block(),
                "conv_out": {"bias": np.zeros(2, np.float32)},
            }
        },
    }
    d = str(tmp_path / "ckpt")
    with Checkpointer(d) as ckpt:
        assert ckpt.save(1, unrolled)
    scanned = maybe_convert_params(unrolled, scanned=True)
    assert scanned["params"]["model"]["down"]["block"]["conv0"]["kernel"].shape == (2, 3, 2)
    with Checkpointer(d) as ckpt:
        with pytest.raises(CheckpointMismatchError, match="step 1") as err:
            ckpt.restore_latest(scanned)
        assert (block_layout(err.value.saved_keys), block_layout(err.value.expected_keys)) == ("unrolled", "scanned")
        # Restoring in the saved layout, then converting, gives the same arrays.
        state, _ = ckpt.restore_latest(maybe_convert_params(scanned, scanned=False))
    back = maybe_convert_params(state, scanned=True)
    np.testing.assert_array_equal(
        back["params"]["model"]["up"]["block"]["conv0"]["kernel"],
        scanned["params"]["model"]["up"]["block"]["conv0"]["kernel"],
    )


def test_a_run_resumes_across_block_layouts_with_the_same_function(tmp_path):
    """An unrolled VDMUNet train state restores into a scanned config (and back): same step, same params up
    to the layout, and the same network output on a fixed input (float32 rounding of the two forms)."""
    import jax
    import jax.numpy as jnp

    from conftest import load_config
    from vdm.data import pipeline
    from vdm.infra import parallel
    from vdm.models.convert import unstack_blocks
    from vdm.tasks import diffusion_model as dm
    from vdm.tasks.diffusion_task import DiffusionTask
    from vdm.tasks.loop import restore_or_init

    def build(scan):
        c = load_config("fashion_mnist", "vdm,small")  # the VDM UNet, whose blocks scan
        c.model.update(num_layers=2, scan_blocks=scan)
        return dm.build(c, pipeline.get_dataset_info(c.data)), parallel.make_mesh()

    (unrolled, mesh), (scanned, _) = build(False), build(True)
    state = unrolled.init_state(jax.random.PRNGKey(3))
    state = state.replace(step=jnp.int32(7), params=jax.tree.map(lambda p: p + 0.01, state.params))
    d = str(tmp_path / "ckpt")
    with Checkpointer(d) as ckpt:
        ckpt.save(7, parallel.to_host(state))
    with Checkpointer(d) as ckpt:
        restored, step = restore_or_init(DiffusionTask(scanned), mesh, ckpt)
    assert step == 7 and "down" in restored.params["model"] and "down_0" not in restored.params["model"]
    back = unstack_blocks(parallel.to_host(restored.params))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(parallel.to_host(state.params))):
        np.testing.assert_array_equal(a, b)
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
    t = jnp.array([0.3, 0.7])
    out_scanned = scanned.denoise_fn(restored.params)(z, t)
    out_unrolled = unrolled.denoise_fn(state.params)(z, t)
    np.testing.assert_allclose(out_scanned, out_unrolled, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(out_unrolled))) > 1e-3  # a non-trivial output was compared
