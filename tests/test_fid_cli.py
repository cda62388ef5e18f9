"""Where a user meets Inception FID: sources (.npz of samples, PNG folder, NAME:SPLIT), the cached reference
statistics, score_samples and `python -m vdm.tools.fid A B`, on a tiny Fashion-MNIST-shaped array cache in a
temporary data_dir (so nothing is written beside the real data set).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from vdm import fid
from vdm.core import encoding
from vdm.data import tfds_sets
from vdm.infra import parallel


@pytest.fixture(scope="module")
def net():
    """A cheap stand-in for the FID network with load_inception's interface: a fixed random projection of 8x8-pooled
    pixels to 64 features (not 2048: the Frechet distance's 2048 x 2048 eigen-decompositions would take most of this
    file's CPU). The cache, the decoding and the scoring below do not depend on which network makes the features nor
    on how many (tests/test_fid_network.py checks the real one; the CLI tests below run it)."""
    mesh = parallel.make_mesh(jax.local_devices())
    proj = jax.random.normal(jax.random.key(0), (8 * 8 * 3, 64)) / 14.0

    def per_device(p, images, _key):
        x = jax.image.resize(images.astype(jnp.float32) / 255.0, (images.shape[0], 8, 8, images.shape[-1]), "linear")
        x = jnp.broadcast_to(x, (*x.shape[:3], 3)).reshape(x.shape[0], -1)
        return jnp.tanh(x @ p)

    fn = parallel.data_parallel_eval(per_device, mesh)
    return fid.Inception(fn, parallel.replicate(proj, mesh), mesh, "tf1", "5a" * 32)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A data_dir holding 'fashion_mnist' with 12 train and 12 test images (shapes as the real one)."""
    folder = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(0)
    info = {"shape": (28, 28, 1), "num_train": 12, "num_test": 12, "num_classes": 10}
    images = {s: rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8) for s in ("train", "test")}
    for split, x in images.items():
        tfds_sets.write_array_cache("fashion_mnist", folder, split, x, np.zeros(12, np.int32), info)
    return folder, images


def test_reference_stats_are_cached_beside_the_data_keyed_by_weights_and_resize(tiny_data, net):
    folder, images = tiny_data
    stats = fid.reference_stats("fashion_mnist:test", num=10, net=net, data_dir=folder)
    files = os.listdir(os.path.join(folder, "fashion_mnist", "vdm_fid"))
    assert files == [f"test_n10_tf1_{net.weights_sha256[:16]}.npz"]
    feats = fid.inception_features(images["test"][:10], net=net)
    np.testing.assert_allclose(stats["features"], feats, atol=1e-6)
    assert int(stats["num"]) == 10 and stats["cov"].dtype == np.float64
    again = fid.reference_stats("fashion_mnist:test", num=10, net=net, data_dir=folder)  # from the file
    np.testing.assert_array_equal(again["mu"], stats["mu"])
    with pytest.raises(ValueError, match=r"num must be in \[2, 12\]"):
        fid.reference_stats("fashion_mnist:test", num=13, net=net, data_dir=folder)
    with pytest.raises(ValueError, match="not a data set split"):
        fid.reference_stats("fashion_mnist:validation", net=net, data_dir=folder)


def test_reference_stats_of_another_subset_size_are_their_own_cache_entry(tiny_data, net):
    """The first 8 and the first 10 examples: two files, each the statistics of its own rows; a file at one's path
    holding the other's statistics (its recorded key names the other size) is recomputed, not returned."""
    folder, images = tiny_data
    s10 = fid.reference_stats("fashion_mnist:train", num=10, net=net, data_dir=folder, progress=False)
    s8 = fid.reference_stats("fashion_mnist:train", num=8, net=net, data_dir=folder, progress=False)
    cache = os.path.join(folder, "fashion_mnist", "vdm_fid")
    names = {n for n in os.listdir(cache) if n.startswith("train_")}
    assert names == {f"train_n{n}_tf1_{net.weights_sha256[:16]}.npz" for n in (8, 10)}
    mu8, _ = fid.gaussian_stats(fid.inception_features(images["train"][:8], net=net))
    np.testing.assert_allclose(s8["mu"], mu8, rtol=1e-6)
    assert int(s8["num"]) == 8 and int(s10["num"]) == 10 and np.abs(s8["mu"] - s10["mu"]).max() > 1e-3
    path8 = os.path.join(cache, f"train_n8_tf1_{net.weights_sha256[:16]}.npz")
    shutil.copy(os.path.join(cache, f"train_n10_tf1_{net.weights_sha256[:16]}.npz"), path8)
    again = fid.reference_stats("fashion_mnist:train", num=8, net=net, data_dir=folder, progress=False)
    assert int(again["num"]) == 8
    np.testing.assert_allclose(again["mu"], mu8, rtol=1e-6)


def test_score_samples_decodes_float_samples_and_scores_them_against_the_reference(tiny_data, net):
    folder, images = tiny_data
    x = encoding.encode(images["train"][:8])  # as --mode=sample returns them, in [-1, 1]
    out = fid.score_samples(
        x, "fashion_mnist:test", num_reference=10, data_dir=folder, net=net, kid_subsets=4, kid_subset_size=4
    )
    assert set(out) == {"fid", "kid", "kid_se", "kid_subsets", "kid_subset_size", "num_samples", "num_reference"}
    assert (out["kid_subsets"], out["kid_subset_size"]) == (4, 2)  # 4 disjoint subsets of 8 samples: 2 rows each
    assert out["num_samples"] == 8 and out["num_reference"] == 10 and out["fid"] > 0
    same = fid.score_samples(
        images["train"][:8],
        "fashion_mnist:test",
        num_reference=10,
        data_dir=folder,
        net=net,
        kid_subsets=4,
        kid_subset_size=4,
    )
    assert same["fid"] == pytest.approx(out["fid"], rel=1e-6)  # the decoding is exact
    with pytest.raises(ValueError, match="uint8 or floats"):
        fid.score_samples(np.zeros((4, 28, 28, 1), np.int32), "fashion_mnist:test", net=net, data_dir=folder)


def test_sources_npz_png_folder_and_split_give_the_same_images(tiny_data, tmp_path):
    folder, images = tiny_data
    x = images["test"][:5]
    np.savez(tmp_path / "s.npz", samples=encoding.encode(x, "bin_centres"), labels=np.zeros(5))
    (tmp_path / "s.json").write_text(json.dumps({"data": {"encoding": "bin_centres"}}))  # the config beside it
    np.testing.assert_array_equal(fid.load_source(str(tmp_path / "s.npz")), x)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, im in enumerate(x):
        Image.fromarray(im[..., 0]).save(pngs / f"{i:03d}.png")
    np.testing.assert_array_equal(fid.load_source(str(pngs)), x)
    np.testing.assert_array_equal(fid.load_source("fashion_mnist:test", data_dir=folder), images["test"])
    with pytest.raises(ValueError, match="is not a source"):
        fid.load_source("nothing_here")


def test_cli_prints_fid_and_kid_between_two_sources(tiny_data, tmp_path):
    folder, images = tiny_data
    np.savez(tmp_path / "a.npz", samples=images["train"][:6])
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vdm.tools.fid",
            str(tmp_path / "a.npz"),
            "fashion_mnist:train",
            "--num_b=6",
            "--batch_size=8",  # 6 images padded to 8: tests/test_fid_network.py's 8-image program (compiled once)
            f"--data_dir={folder}",
            "--kid_subsets=3",
            "--kid_subset_size=3",
            f"--json={out}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FID " in proc.stdout and "KID " in proc.stdout and "(N = 6, 6; resize tf1)" in proc.stdout
    assert "standard error over 3 disjoint subsets of 2" in proc.stdout
    r = json.loads(out.read_text())
    assert abs(r["fid"]) < 1e-2 and r["num_a"] == 6  # the same six images: FID 0 up to rounding
    bad = subprocess.run(
        [sys.executable, "-m", "vdm.tools.fid", "x.npz", "fashion_mnist:train"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VDM_FID_DIR": str(tmp_path / "none")},
    )
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "make fid-weights" in bad.stderr


@pytest.mark.slow
def test_sample_mode_scores_what_it_drew_into_metrics(tiny_data, tmp_path):
    """--mode=sample with config.fid.samples writes the Inception FID/KID of its first samples against the
    split's reference to metrics.jsonl; the same figures come from `python -m vdm.tools.fid`'s path on the saved .npz."""
    from conftest import run_cli

    folder, _ = tiny_data
    wd = str(tmp_path / "run")
    small = ["--config=configs/fashion_mnist.py:small", f"--workdir={wd}"]
    proc = run_cli(
        small
        + [
            "--config.training.num_steps=2",
            "--config.training.eval_every=2",
            "--config.training.checkpoint_every=2",
            "--config.training.log_every=1",
            "--config.eval.max_examples=20",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(
        small
        + [
            "--mode=sample",
            "--config.sampling.num_steps=4",
            "--config.sampling.num_samples=6",
            "--config.fid.samples=8",
            "--config.fid.reference=test",
            "--config.fid.reference_examples=10",
            f"--config.data.data_dir={folder}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    npz = proc.stdout.strip().splitlines()[-1][:-4] + ".npz"
    assert np.load(npz)["samples"].shape == (8, 28, 28, 1)  # max(num_samples, fid.samples) drawn
    row = [json.loads(r) for r in open(os.path.join(wd, "metrics.jsonl")) if '"sample/fid"' in r][-1]
    assert row["mode"] == "sample" and row["sample/num_samples"] == 8 and row["sample/num_reference"] == 10
    again = fid.compare(npz, "fashion_mnist:test", num=8, num_b=10, data_dir=folder, kid_subset_size=8)
    assert row["sample/fid"] == pytest.approx(again["fid"], rel=1e-9)
    assert row["sample/kid"] == pytest.approx(again["kid"], rel=1e-9, abs=1e-12)


def test_fid_samples_on_toy_data_is_one_line_naming_image_data(tmp_path):
    from conftest import run_cli

    proc = run_cli(["--config=configs/toy2d.py:small", f"--workdir={tmp_path}", "--config.fid.samples=8"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "needs image data" in lines[0], proc.stderr[-2000:]
