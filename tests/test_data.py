"""Tests of vdm.data.pipeline: toy sets against closed forms, iterator exactness, TFDS preparation and reading."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats

from vdm.data import pipeline, tfds_sets, toy_sets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Installed before python runs anything: any connection attempt fails loudly.
NO_NETWORK = textwrap.dedent("""
    import socket
    def _no_network(*args, **kwargs):
        raise RuntimeError(f"network access attempted: {args}")
    socket.socket.connect = _no_network
    socket.socket.connect_ex = _no_network
""")


def toy_config(name: str, **overrides) -> dict:
    cfg = {"dataset": name, "num_train": 50, "num_test": 50, "data_seed": 0, "dim": 3}
    cfg.update(overrides)
    return cfg


def run_python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-c", NO_NETWORK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


# ----------------------------------------------------------------------------- toy data


@pytest.mark.parametrize("name", toy_sets.TOY_DATASETS)
def test_toy_sets_are_a_function_of_the_seed(name):
    x1, y1 = toy_sets.generate(name, 100, seed=7, split="train", dim=3)
    x2, y2 = toy_sets.generate(name, 100, seed=7, split="train", dim=3)
    x3, _ = toy_sets.generate(name, 100, seed=8, split="train", dim=3)
    x4, _ = toy_sets.generate(name, 100, seed=7, split="test", dim=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.dtype == np.float32 and y1.dtype == np.int32
    assert not np.array_equal(x1, x3) and not np.array_equal(x1, x4)


def test_mixture2d_moments_match_the_analytic_mixture():
    n = 200_000
    x, label = toy_sets.mixture2d(n, seed=0)
    x = x.astype(np.float64)
    r, s, k = toy_sets.MIXTURE_RADIUS, toy_sets.MIXTURE_STD, toy_sets.MIXTURE_MODES
    # Equal weights on K >= 3 points of a circle: E[x] = 0 and Cov[x] = (r^2/2 + s^2) I.
    mean_se = x.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(x.mean(axis=0)) < 4 * mean_se)
    var = r**2 / 2 + s**2
    for i, j, truth in ((0, 0, var), (1, 1, var), (0, 1, 0.0)):
        prod = x[:, i] * x[:, j]
        assert abs(prod.mean() - truth) < 4 * prod.std() / np.sqrt(n), (i, j)
    # Components: weight 1/K each, centred at r (cos 2 pi c/K, sin 2 pi c/K) with std s.
    freq = np.bincount(label, minlength=k) / n
    assert np.all(np.abs(freq - 1 / k) < 4 * np.sqrt((1 / k) * (1 - 1 / k) / n))
    angle = 2 * np.pi * label / k
    resid = x - r * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    assert np.all(np.abs(resid.mean(axis=0)) < 4 * s / np.sqrt(n))
    assert np.all(np.abs((resid**2).mean(axis=0) - s**2) < 4 * s**2 * np.sqrt(2 / n))


def test_gaussian_variance_matches_the_scales():
    n, dim = 100_000, 5
    x, label = toy_sets.gaussian(n, seed=1, dim=dim)
    scales = toy_sets.gaussian_scales(dim)
    assert np.isclose(scales[0], 1.0) and np.isclose(scales[-1], 0.1) and np.all(np.diff(scales) < 0)
    second_moment = (x.astype(np.float64) ** 2).mean(axis=0)  # mean is 0: this estimates s^2
    se = scales**2 * np.sqrt(2 / n)  # Var[x^2] = 2 s^4 for x ~ N(0, s^2)
    assert np.all(np.abs(second_moment - scales**2) < 4 * se)
    assert np.all(np.abs(x.mean(axis=0)) < 4 * scales / np.sqrt(n))
    assert np.all(label == 0)


def test_gaussian_nll_matches_scipy():
    rng = np.random.default_rng(0)
    scales = np.array([2.0, 0.5, 0.01])
    x = rng.normal(size=(7, 3)) * scales * 3
    expected = -stats.norm.logpdf(x, loc=0.0, scale=scales).sum(axis=-1)
    np.testing.assert_allclose(pipeline.gaussian_nll(x, scales), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="dims"):
        pipeline.gaussian_nll(x, scales[:2])


def test_grid8bit2d_lies_on_8bit_values_uniformly():
    n = 64_000
    x, label = toy_sets.grid8bit2d(n, seed=2)
    k = np.round((x.astype(np.float64) + 1) * 127.5)
    assert np.all((k >= 0) & (k <= 255))
    np.testing.assert_allclose(x, k / 127.5 - 1, rtol=0, atol=2**-23)  # exact up to float32 rounding
    levels = len(toy_sets.GRID_LEVELS)
    assert set(np.unique(k).astype(int)) == set(toy_sets.GRID_LEVELS)
    freq = np.bincount(label, minlength=levels**2) / n  # uniform over the L^2 cells
    p = 1 / levels**2
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n))
    np.testing.assert_array_equal(k[:, 0], np.asarray(toy_sets.GRID_LEVELS)[label // levels])
    info = pipeline.get_dataset_info(toy_config("grid8bit2d"))
    assert info.discrete and info.shape == (2,) and info.num_classes == levels**2


def test_dataset_info_of_toy_sets():
    info = pipeline.get_dataset_info(toy_config("gaussian", dim=4, num_train=30, num_test=20))
    assert (info.shape, info.num_train, info.num_test, info.discrete) == ((4,), 30, 20, False)
    np.testing.assert_allclose(info.scales, np.geomspace(1, 0.1, 4))
    info = pipeline.get_dataset_info(toy_config("mixture2d"))
    assert (info.shape, info.num_classes, info.discrete, info.num_dims) == ((2,), 8, False, 2)


# ----------------------------------------------------------------------------- config validation


def test_bad_config_fails_naming_the_valid_choices():
    with pytest.raises(ValueError, match="valid: fashion_mnist, mnist, cifar10, mixture2d"):
        pipeline.get_dataset_info({"dataset": "imagenet"})
    with pytest.raises(ValueError, match="images only"):
        pipeline.train_iterator(toy_config("mixture2d", random_flip=True), 4, seed=0)
    with pytest.raises(ValueError, match="num_train"):
        pipeline.get_dataset_info(toy_config("mixture2d", num_train=0))
    with pytest.raises(ValueError, match="split"):
        pipeline.eval_iterator(toy_config("mixture2d"), 4, split="validation")
    with pytest.raises(ValueError, match="seed"):
        pipeline.train_iterator(toy_config("mixture2d"), 4, seed=-1)


# ----------------------------------------------------------------------------- iterators


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_resume_at_start_step_equals_the_fresh_iterator():
    cfg = toy_config("mixture2d")  # 50 examples, batch 16: batches straddle epoch ends
    fresh = take(pipeline.train_iterator(cfg, 16, seed=5), 14)
    for k in (0, 3, 6, 13):
        resumed = next(pipeline.train_iterator(cfg, 16, seed=5, start_step=k))
        np.testing.assert_array_equal(resumed["x"], fresh[k]["x"])
        np.testing.assert_array_equal(resumed["label"], fresh[k]["label"])
    other = take(pipeline.train_iterator(cfg, 16, seed=6), 14)
    assert not all(np.array_equal(a["x"], b["x"]) for a, b in zip(fresh, other))


def test_each_epoch_is_a_permutation_of_the_train_split():
    cfg = toy_config("gaussian")
    x_train, _ = pipeline.load_arrays(cfg, "train")
    row_of = {row.tobytes(): i for i, row in enumerate(x_train)}
    assert len(row_of) == 50  # continuous data: rows identify examples
    batches = take(pipeline.train_iterator(cfg, 16, seed=0), 13)  # 208 >= 4 epochs of 50
    x = np.concatenate([b["x"] for b in batches])
    assert batches[0]["x"].shape == (16, 3) and batches[0]["x"].dtype == np.float32
    assert batches[0]["label"].dtype == np.int32
    orders = []
    for epoch in range(4):
        order = [row_of[row.tobytes()] for row in x[50 * epoch : 50 * (epoch + 1)]]
        assert sorted(order) == list(range(50)), epoch  # every example exactly once
        orders.append(order)
    assert len({tuple(o) for o in orders}) == 4  # a fresh permutation each epoch


def test_eval_iterator_covers_the_split_once_with_masks():
    cfg = toy_config("mixture2d", num_test=50)
    x_test, y_test = pipeline.load_arrays(cfg, "test")
    batches = list(pipeline.eval_iterator(cfg, 16))
    assert len(batches) == 4
    for b in batches:
        assert b["x"].shape == (16, 2) and b["label"].shape == (16,) and b["mask"].dtype == np.bool_
    assert [int(b["mask"].sum()) for b in batches] == [16, 16, 16, 2]
    assert not batches[-1]["mask"][2:].any()
    x = np.concatenate([b["x"][b["mask"]] for b in batches])
    y = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(x, x_test)
    np.testing.assert_array_equal(y, y_test)
    assert len(list(pipeline.eval_iterator(cfg, 25))) == 2  # exact multiple: no padded batch


# ----------------------------------------------------------------------------- TFDS: missing data


@pytest.fixture
def no_fashion_source(tmp_path, monkeypatch):
    empty = tmp_path / "no_debian_files"
    empty.mkdir()
    monkeypatch.setenv(tfds_sets.FASHION_MNIST_DIR_ENV, str(empty))
    return tmp_path / "tfds"


def test_missing_fashion_mnist_says_how_to_get_it(no_fashion_source):
    cfg = {"dataset": "fashion_mnist", "data_dir": str(no_fashion_source)}
    for call in (
        lambda: pipeline.get_dataset_info(cfg),
        lambda: pipeline.train_iterator(cfg, 8, seed=0),
        lambda: tfds_sets.prepare("fashion_mnist", str(no_fashion_source)),
    ):
        with pytest.raises(pipeline.DatasetNotFoundError) as err:
            call()
        message = str(err.value)
        assert "apt-get install dataset-fashion-mnist" in message
        assert "make data" in message
        assert f"python -m vdm.tools.prepare_data --dataset=fashion_mnist --data_dir={no_fashion_source}" in message
        assert "train-images-idx3-ubyte.gz" in message


def test_prepare_cli_fails_at_once_with_the_how_to(no_fashion_source):
    proc = subprocess.run(
        [sys.executable, "-m", "vdm.tools.prepare_data", "--dataset=fashion_mnist", f"--data_dir={no_fashion_source}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "apt-get install dataset-fashion-mnist" in proc.stderr
    assert not no_fashion_source.exists()  # nothing written, nothing downloaded


@pytest.mark.parametrize(
    "name, files",
    [("mnist", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]), ("cifar10", ["cifar-10-binary.tar.gz"])],
)
def test_missing_mnist_and_cifar10_say_where_to_put_the_files(tmp_path, name, files):
    with pytest.raises(pipeline.DatasetNotFoundError) as err:
        tfds_sets.prepare(name, str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "downloads" / "manual") in message
    assert all(f in message for f in files)
    assert f"--dataset={name}" in message and "Nothing is downloaded" in message


def test_manual_dir_files_are_checked_against_tfds_checksums(tmp_path):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    for f in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (manual / f).write_bytes(b"not mnist")
    with pytest.raises(tfds_sets.ChecksumError, match=str(manual)):
        tfds_sets.prepare("mnist", str(tmp_path))
    assert not (tmp_path / "mnist").exists()


# ----------------------------------------------------------------------------- TFDS: preparation


def write_idx_gz(path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


def file_checksums(folder) -> dict:
    return {
        f: (os.path.getsize(folder / f), hashlib.sha256((folder / f).read_bytes()).hexdigest()) for f in FASHION_FILES
    }


@pytest.fixture(scope="module")
def synthetic_fashion(tmp_path_factory):
    """Tiny IDX .gz files (12 train, 5 test), prepared through the checksum-registration path."""
    root = tmp_path_factory.mktemp("synthetic_fashion")
    source, data_dir = root / "source", root / "tfds"
    source.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, split, n in (("train", "train", 12), ("t10k", "test", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx_gz(source / f"{prefix}-images-idx3-ubyte.gz", 2051, images)
        write_idx_gz(source / f"{prefix}-labels-idx1-ubyte.gz", 2049, labels)
        arrays[split] = (images, labels)
    proc = run_python(f"""
        from vdm.data import tfds_sets
        tfds_sets.prepare("fashion_mnist", {str(data_dir)!r}, source_dir={str(source)!r},
                          accepted={file_checksums(source)!r})
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"source": source, "data_dir": data_dir, "arrays": arrays}


def as_multiset(images: np.ndarray, labels: np.ndarray) -> list:
    return sorted(im.tobytes() + bytes([int(lb)]) for im, lb in zip(images, labels))


def test_prepare_from_local_idx_files_round_trips(synthetic_fashion):
    cfg = {"dataset": "fashion_mnist", "data_dir": str(synthetic_fashion["data_dir"])}
    info = pipeline.get_dataset_info(cfg)
    assert (info.shape, info.num_train, info.num_test, info.num_classes, info.discrete) == (
        (28, 28, 1),
        12,
        5,
        10,
        True,
    )
    with open(synthetic_fashion["data_dir"] / "fashion_mnist" / "3.0.1" / "dataset_info.json") as f:
        assert json.load(f)["fileFormat"] == "array_record"
    for split in ("train", "test"):
        images, labels = synthetic_fashion["arrays"][split]
        batches = list(pipeline.eval_iterator(cfg, 4, split=split))
        x = np.concatenate([b["x"][b["mask"]] for b in batches])
        y = np.concatenate([b["label"][b["mask"]] for b in batches])
        assert x.shape == (len(labels), 28, 28, 1) and x.dtype == np.float32
        k = np.round((x.astype(np.float64) + 1) * 127.5)
        np.testing.assert_allclose(x, k / 127.5 - 1, rtol=0, atol=2**-23)
        assert as_multiset(k.astype(np.uint8)[..., 0], y) == as_multiset(images, labels)


def test_prepare_is_idempotent_and_reading_needs_no_tensorflow(synthetic_fashion):
    info_json = synthetic_fashion["data_dir"] / "fashion_mnist" / "3.0.1" / "dataset_info.json"
    before = info_json.stat().st_mtime_ns
    # Source files gone: a prepared data set is reused, not rebuilt, and never downloaded.
    proc = run_python(
        f"""
        import sys
        from vdm.data import pipeline
        from vdm.tools import prepare_data
        assert prepare_data.prepare_command("fashion_mnist", "{synthetic_fashion["data_dir"]}") == 0
        cfg = {{"dataset": "fashion_mnist", "data_dir": {str(synthetic_fashion["data_dir"])!r}}}
        batch = next(pipeline.train_iterator(cfg, 8, seed=0))
        assert batch["x"].shape == (8, 28, 28, 1)
        print("tensorflow imported:", "tensorflow" in sys.modules)
    """,
        {tfds_sets.FASHION_MNIST_DIR_ENV: "/nonexistent"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorflow imported: False" in proc.stdout
    assert info_json.stat().st_mtime_ns == before


def test_array_cache_alone_reads_the_same_arrays_without_tfds(synthetic_fashion, tmp_path):
    import shutil

    cache = synthetic_fashion["data_dir"] / "fashion_mnist" / tfds_sets.ARRAYS_SUBDIR
    assert sorted(os.listdir(cache)) == ["info.json", "test.npz", "train.npz"]  # written by prepare
    only_cache = tmp_path / "tfds"
    shutil.copytree(cache, only_cache / "fashion_mnist" / tfds_sets.ARRAYS_SUBDIR)
    proc = run_python(
        f"""
        import sys
        import numpy as np
        from vdm.data import pipeline
        cfg = {{"dataset": "fashion_mnist", "data_dir": {str(only_cache)!r}}}
        info = pipeline.get_dataset_info(cfg)
        x, y = pipeline.load_arrays(cfg, "train")
        np.savez({str(tmp_path / "out.npz")!r}, x=x, y=y)
        print(info.shape, info.num_train, info.num_test, info.num_classes)
        print("tfds imported:", "tensorflow_datasets" in sys.modules)
    """,
        {tfds_sets.FASHION_MNIST_DIR_ENV: "/nonexistent"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(28, 28, 1) 12 5 10" in proc.stdout and "tfds imported: False" in proc.stdout
    import tensorflow_datasets as tfds

    source = tfds.data_source(
        "fashion_mnist", split="train", data_dir=str(synthetic_fashion["data_dir"]), download=False
    )
    direct = source.__getitems__(range(len(source)))
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(out["x"], np.stack([e["image"] for e in direct]))  # same order too
    np.testing.assert_array_equal(out["y"], [e["label"] for e in direct])


def test_corrupt_array_cache_is_ignored_and_rewritten(synthetic_fashion, tmp_path):
    import shutil

    data_dir = tmp_path / "tfds"
    shutil.copytree(synthetic_fashion["data_dir"], data_dir)
    cache = data_dir / "fashion_mnist" / tfds_sets.ARRAYS_SUBDIR
    good = (cache / "test.npz").read_bytes()
    (cache / "test.npz").write_bytes(good[: len(good) // 2])  # truncated
    tfds_sets.load_split.cache_clear()
    with pytest.warns(UserWarning, match="ignoring the array cache"):
        images, labels = tfds_sets.load_split("fashion_mnist", str(data_dir), "test")
    assert as_multiset(images[..., 0], labels) == as_multiset(*synthetic_fashion["arrays"]["test"])
    assert (cache / "test.npz").read_bytes() == good  # rewritten from the TFDS files
    info = json.loads((cache / "info.json").read_text())
    assert set(info["files"]) == {"train", "test"}


def test_unprepared_data_with_sources_present_says_to_prepare(synthetic_fashion, tmp_path, monkeypatch):
    monkeypatch.setenv(tfds_sets.FASHION_MNIST_DIR_ENV, str(synthetic_fashion["source"]))
    with pytest.raises(pipeline.DatasetNotFoundError) as err:
        pipeline.get_dataset_info({"dataset": "fashion_mnist", "data_dir": str(tmp_path)})
    assert "make data" in str(err.value)
    assert f"python -m vdm.tools.prepare_data --dataset=fashion_mnist --data_dir={tmp_path}" in str(err.value)


def test_prepare_rejects_files_with_unknown_checksums(synthetic_fashion, tmp_path):
    with pytest.raises(tfds_sets.ChecksumError, match="sha256"):  # synthetic files are not Debian's
        tfds_sets.prepare("fashion_mnist", str(tmp_path), source_dir=str(synthetic_fashion["source"]))
    assert not (tmp_path / "fashion_mnist").exists()


def test_random_flips_mirror_images_and_resume_exactly(synthetic_fashion):
    cfg = {"dataset": "fashion_mnist", "data_dir": str(synthetic_fashion["data_dir"])}
    flip_cfg = dict(cfg, random_flip=True)
    plain = take(pipeline.train_iterator(cfg, 10, seed=3), 20)
    flipped = take(pipeline.train_iterator(flip_cfg, 10, seed=3), 20)
    n_flipped = 0
    for a, b in zip(plain, flipped):
        np.testing.assert_array_equal(a["label"], b["label"])  # flips do not change the order
        same = np.all(a["x"] == b["x"], axis=(1, 2, 3))
        mirrored = np.all(a["x"][:, :, ::-1] == b["x"], axis=(1, 2, 3))
        assert np.all(same | mirrored)
        n_flipped += int(np.sum(mirrored & ~same))
    assert abs(n_flipped - 100) < 4 * np.sqrt(200 * 0.25)  # Binomial(200, 1/2)
    resumed = next(pipeline.train_iterator(flip_cfg, 10, seed=3, start_step=17))
    np.testing.assert_array_equal(resumed["x"], flipped[17]["x"])


# ----------------------------------------------------------------------------- real Fashion-MNIST


def read_idx_independently(path) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def test_real_fashion_mnist_is_prepared_and_matches_the_debian_files():
    """Uses the shared data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets); prepares it once (~20 s) if needed."""
    data_dir = tfds_sets.resolve_data_dir(None)
    source = tfds_sets.fashion_mnist_source_dir()
    if not tfds_sets.is_prepared("fashion_mnist", data_dir):
        if not all(os.path.exists(os.path.join(source, f)) for f in FASHION_FILES):
            pytest.fail(str(tfds_sets.not_prepared_error("fashion_mnist", data_dir)))
        proc = run_python(f"""
            from vdm.tools import prepare_data
            raise SystemExit(prepare_data.prepare_command("fashion_mnist", "{data_dir}"))
        """)
        assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = {"dataset": "fashion_mnist", "data_dir": data_dir}
    info = pipeline.get_dataset_info(cfg)
    assert (info.shape, info.num_train, info.num_test, info.num_classes) == ((28, 28, 1), 60000, 10000, 10)
    for split, n, prefix in (("train", 60000, "train"), ("test", 10000, "t10k")):
        images, labels = pipeline.load_arrays(cfg, split)
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        assert labels.dtype == np.int32 and labels.min() == 0 and labels.max() == 9
        np.testing.assert_array_equal(np.bincount(labels), np.full(10, n // 10))  # balanced classes
        if all(os.path.exists(os.path.join(source, f)) for f in FASHION_FILES):
            src_images = read_idx_independently(f"{source}/{prefix}-images-idx3-ubyte.gz")
            src_labels = read_idx_independently(f"{source}/{prefix}-labels-idx1-ubyte.gz")
            assert as_multiset(images[..., 0], labels) == as_multiset(src_images, src_labels)
    batch = next(pipeline.train_iterator(cfg, 128, seed=0))
    assert batch["x"].shape == (128, 28, 28, 1) and batch["x"].min() >= -1 and batch["x"].max() <= 1
