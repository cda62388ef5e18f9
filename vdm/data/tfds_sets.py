"""TFDS image data sets: prepared once as array_record, read without TensorFlow.

Preparing (`prepare`) runs TFDS's own builders and needs TensorFlow (TFDS 4.9.10
encodes images with it): `pip install -r requirements-prepare.txt`. Reading
(`load_split`) goes through `tfds.data_source`, random access, no TensorFlow.

Array cache: the first read of a split also writes it as one compressed .npz under
DATA_DIR/NAME/vdm_arrays/ with its sha256 and the split sizes in info.json. Later reads
(and `split_info`, `is_prepared`) use that cache without importing TFDS at all, which
makes every process start faster and lets a host without TFDS (an accelerator machine)
read a data set by copying that one folder. A cache whose checksum fails is ignored
(with a warning) and rewritten from the TFDS files when they are there.

Fashion-MNIST offline: Debian's `dataset-fashion-mnist` ships the four IDX .gz
files in /usr/share/datasets/fashion-mnist, but recompressed, so TFDS's
registered checksums (of the upstream .gz) do not match. `prepare` registers the
local files explicitly: each file must match either TFDS's upstream checksum or
the Debian checksum recorded here (`DEBIAN_FASHION_MNIST`); TFDS then finds the
files through `DownloadConfig(manual_dir=...)` and validates them against that
registration. Nothing is downloaded: every file is checked to be present first.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping

import numpy as np

from vdm.infra.fileio import atomic_write

IMAGE_DATASETS = ("fashion_mnist", "mnist", "cifar10")
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_DIR_ENV = "VDM_FASHION_MNIST_DIR"

# (size in bytes, sha256) of the files of Debian's dataset-fashion-mnist
# 0.0~git20200523.55506a9-1 (recompressed; the IDX content is upstream's).
DEBIAN_FASHION_MNIST: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (26421856, "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    "train-labels-idx1-ubyte.gz": (29491, "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    "t10k-images-idx3-ubyte.gz": (4422079, "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    "t10k-labels-idx1-ubyte.gz": (5125, "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim


class DatasetNotFoundError(FileNotFoundError):
    """A data set is neither prepared nor preparable from local files; the message says how to get it."""


class ChecksumError(ValueError):
    """A local source file matches none of the checksums it is accepted under."""


def resolve_data_dir(data_dir: str | None = None) -> str:
    """The TFDS data_dir: the argument if non-empty, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    path = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(str(path)))


def fashion_mnist_source_dir(source_dir: str | None = None) -> str:
    """Folder with the Fashion-MNIST IDX .gz files: argument, else $VDM_FASHION_MNIST_DIR, else Debian's."""
    return source_dir or os.environ.get(FASHION_MNIST_DIR_ENV) or DEFAULT_FASHION_MNIST_DIR


def _check_name(name: str) -> None:
    if name not in IMAGE_DATASETS:
        raise ValueError(f"Unknown TFDS data set {name!r}; valid: {', '.join(IMAGE_DATASETS)}.")


def _builder_cls(name: str):
    import tensorflow_datasets as tfds  # imported lazily: it is slow to import

    return tfds.builder_cls(name)


def _dataset_dir(name: str, data_dir: str) -> str:
    return os.path.join(data_dir, name, str(_builder_cls(name).VERSION))


ARRAYS_SUBDIR = "vdm_arrays"


def arrays_dir(name: str, data_dir: str) -> str:
    """DATA_DIR/NAME/vdm_arrays: the .npz cache of the splits (see the module docstring)."""
    return os.path.join(data_dir, name, ARRAYS_SUBDIR)


def _cache_info(name: str, data_dir: str) -> dict | None:
    path = os.path.join(arrays_dir(name, data_dir), "info.json")
    try:
        with open(path) as f:
            info = json.load(f)
        return info if {"shape", "num_train", "num_test", "num_classes", "files"} <= set(info) else None
    except (OSError, ValueError):
        return None


def _read_cached_split(name: str, data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached split, or None when absent or failing its checksum/shape check (then with a warning)."""
    info = _cache_info(name, data_dir)
    if info is None or split not in info["files"]:
        return None
    path = os.path.join(arrays_dir(name, data_dir), f"{split}.npz")
    try:
        if list(_sha256(path)) != list(info["files"][split]):
            raise ValueError("size/sha256 differ from info.json")
        with np.load(path) as f:
            images, labels = f["images"], f["labels"]
        n = info[f"num_{split}"] if f"num_{split}" in info else len(labels)
        if images.dtype != np.uint8 or images.shape != (n, *info["shape"]) or labels.shape != (n,):
            raise ValueError(
                f"arrays {images.dtype}{images.shape}, labels {labels.shape}; "
                f"info.json says uint8 {(n, *info['shape'])}"
            )
    except (OSError, ValueError, KeyError) as err:
        warnings.warn(
            stacklevel=2,
            message=f"ignoring the array cache {path}: {err}. Reading the TFDS files instead "
            f"(the cache is rewritten from them; delete {arrays_dir(name, data_dir)} to silence this).",
        )
        return None
    return images, labels.astype(np.int32, copy=False)


def _write_cached_split(
    name: str, data_dir: str, split: str, images: np.ndarray, labels: np.ndarray, info: dict
) -> None:
    """Write SPLIT.npz and update info.json, each atomically (tmp file + rename); best effort."""
    folder = arrays_dir(name, data_dir)
    try:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{split}.npz")
        atomic_write(path, lambda f: np.savez_compressed(f, images=images, labels=labels), binary=True)
        old = _cache_info(name, data_dir) or {}
        files = dict(old.get("files", {})) if old.get("shape") == list(info["shape"]) else {}
        files[split] = list(_sha256(path))
        record = {**{k: list(v) if k == "shape" else v for k, v in info.items()}, "files": files}
        atomic_write(os.path.join(folder, "info.json"), lambda f: json.dump(record, f, indent=1))
    except OSError as err:  # a read-only data_dir only loses the speed-up
        warnings.warn(f"could not write the array cache in {folder}: {err}", stacklevel=2)


def write_array_cache(name: str, data_dir: str, split: str, images: np.ndarray, labels: np.ndarray, info: dict) -> None:
    """Write a split as the array cache DATA_DIR/NAME/vdm_arrays (images uint8 [N, H, W, C], labels int [N]);
    info: {'shape', 'num_train', 'num_test', 'num_classes'}. Reads then need no TFDS (e.g. data made elsewhere)."""
    _check_name(name)
    _write_cached_split(name, data_dir, split, np.asarray(images, np.uint8), np.asarray(labels, np.int32), info)


def is_prepared(name: str, data_dir: str | None = None) -> bool:
    """True when `name` is prepared under data_dir in array_record format, or its array cache is there."""
    _check_name(name)
    data_dir = resolve_data_dir(data_dir)
    return _cache_info(name, data_dir) is not None or _tfds_prepared(name, data_dir)


def _tfds_prepared(name: str, data_dir: str) -> bool:
    """True when TFDS's dataset_info.json for `name` is in data_dir and says array_record."""
    info_path = os.path.join(_dataset_dir(name, data_dir), "dataset_info.json")
    if not os.path.exists(info_path):
        return False
    with open(info_path) as f:
        file_format = json.load(f).get("fileFormat", "tfrecord")
    if file_format != "array_record":
        raise ValueError(
            f"{name} in {os.path.dirname(info_path)} was prepared as {file_format!r}, but vdm reads "
            "'array_record'. Remove that folder and run: "
            f"python -m vdm.tools.prepare_data --dataset={name} --data_dir={data_dir}"
        )
    return True


def _upstream_files(name: str) -> dict[str, str]:
    """{filename: url} of the files TFDS's builder for `name` downloads (its registered checksums)."""
    return {info.filename: url for url, info in _builder_cls(name).url_infos.items()}


def _how_to_get(name: str, data_dir: str, source_dir: str, missing: list[str]) -> str:
    prepare_cmd = f"python -m vdm.tools.prepare_data --dataset={name} --data_dir={data_dir}"
    head = f"Data set {name!r} is not prepared in {data_dir}"
    if name == "fashion_mnist":
        return (
            f"{head}, and its source files are missing from {source_dir}: {', '.join(missing)}.\n"
            "To get it (offline, from Debian):\n"
            "  apt-get install dataset-fashion-mnist   # puts the 4 IDX .gz files in "
            f"{DEFAULT_FASHION_MNIST_DIR}\n"
            f"  make data   # or: pip install -r requirements-prepare.txt && {prepare_cmd}\n"
            f"(Set ${FASHION_MNIST_DIR_ENV} to use another folder holding those 4 files.)"
        )
    urls = "\n".join(f"  {f}  <- {u}" for f, u in sorted(_upstream_files(name).items()))
    return (
        f"{head}, and its original files are missing from the manual dir {source_dir}: "
        f"{', '.join(missing)}.\nNothing is downloaded. Put these files, unchanged, in {source_dir}:\n"
        f"{urls}\nthen run: pip install -r requirements-prepare.txt && {prepare_cmd} "
        f"--manual_dir={source_dir}"
    )


def not_prepared_error(name: str, data_dir: str | None = None, source_dir: str | None = None) -> DatasetNotFoundError:
    """The error raised when reading `name` before it is prepared; says how to prepare or get it."""
    data_dir = resolve_data_dir(data_dir)
    source_dir = _source_dir(name, data_dir, source_dir)
    missing = [f for f in _upstream_files(name) if not os.path.exists(os.path.join(source_dir, f))]
    if missing:
        return DatasetNotFoundError(_how_to_get(name, data_dir, source_dir, missing))
    cmd = f"python -m vdm.tools.prepare_data --dataset={name} --data_dir={data_dir} --manual_dir={source_dir}"
    make = "make data, or: " if name == "fashion_mnist" else ""
    return DatasetNotFoundError(
        f"Data set {name!r} is not prepared in {data_dir}; its source files are in {source_dir}. "
        f"Prepare it once: {make}pip install -r requirements-prepare.txt && {cmd}"
    )


def _source_dir(name: str, data_dir: str, source_dir: str | None) -> str:
    if name == "fashion_mnist":
        return fashion_mnist_source_dir(source_dir)
    return source_dir or os.path.join(data_dir, "downloads", "manual")


def _sha256(path: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def register_local_files(name: str, source_dir: str, accepted: Mapping[str, tuple[int, str]]) -> dict:
    """{url: UrlInfo} for the local files, each checked to match TFDS's upstream checksum or `accepted`[file]."""
    from tensorflow_datasets.core.download import checksums

    url_infos = {}
    for url, upstream in _builder_cls(name).url_infos.items():
        size, sha = _sha256(os.path.join(source_dir, upstream.filename))
        known = [(int(upstream.size), upstream.checksum)]
        if upstream.filename in accepted:
            known.append(tuple(accepted[upstream.filename]))
        if (size, sha) not in known:
            raise ChecksumError(
                f"{os.path.join(source_dir, upstream.filename)} has size {size}, sha256 {sha}; "
                f"accepted (size, sha256): {known} (TFDS upstream, then Debian's recorded one)."
            )
        url_infos[url] = checksums.UrlInfo(size=size, checksum=sha, filename=upstream.filename)
    return url_infos


def read_idx(path: str, magic: int) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format; .gz or raw): big-endian int32 magic and dims, then uint8 data."""
    raw = _read_maybe_gzip(path)
    ndim = magic & 0xFF
    header = np.frombuffer(raw, ">i4", count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(f"{path}: IDX magic {int(header[0])}, expected {magic}.")
    dims = tuple(int(d) for d in header[1:])
    offset = 4 * (1 + ndim)
    if len(raw) != offset + int(np.prod(dims)):
        raise ValueError(f"{path}: {len(raw) - offset} data bytes, header dims {dims} need {int(np.prod(dims))}.")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _read_maybe_gzip(path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def _local_fashion_mnist_cls(url_infos: dict):
    """TFDS's FashionMNIST builder, with `url_infos` registered and example counts read from the IDX headers."""
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    class LocalFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
        name = "fashion_mnist"  # same name and version: reads back as TFDS's fashion_mnist

        def _generate_examples(self, num_examples, data_path, label_path):
            del num_examples  # taken from the IDX header instead, so the file decides
            images = read_idx(os.fspath(data_path), _IDX_IMAGES_MAGIC)
            labels = read_idx(os.fspath(label_path), _IDX_LABELS_MAGIC)
            if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
                raise ValueError(f"IDX mismatch: images {images.shape}, labels {labels.shape}.")
            for i in range(images.shape[0]):
                yield i, {"image": images[i, :, :, None], "label": int(labels[i])}

    LocalFashionMNIST.url_infos = url_infos  # plain class attribute replaces TFDS's registered checksums
    return LocalFashionMNIST


def prepare(
    name: str,
    data_dir: str | None = None,
    *,
    source_dir: str | None = None,
    accepted: Mapping[str, tuple[int, str]] | None = None,
) -> str:
    """Prepare `name` once as array_record in data_dir from local files only; no-op if prepared. Returns its dir.

    accepted: {filename: (size, sha256)} accepted besides TFDS's upstream checksums; default
    DEBIAN_FASHION_MNIST for fashion_mnist, none for the others.
    """
    _check_name(name)
    data_dir = resolve_data_dir(data_dir)
    if _tfds_prepared(name, data_dir):
        return _dataset_dir(name, data_dir)
    source_dir = _source_dir(name, data_dir, source_dir)
    missing = [f for f in _upstream_files(name) if not os.path.exists(os.path.join(source_dir, f))]
    if missing:  # checked before TFDS runs: with a file absent it would try to download it
        raise DatasetNotFoundError(_how_to_get(name, data_dir, source_dir, missing))
    if accepted is None:
        accepted = DEBIAN_FASHION_MNIST if name == "fashion_mnist" else {}
    url_infos = register_local_files(name, source_dir, accepted)  # fails early, before TensorFlow loads
    if name == "fashion_mnist":
        builder_cls = _local_fashion_mnist_cls(url_infos)
    else:
        builder_cls = _builder_cls(name)  # upstream files only: TFDS's registered checksums apply
    try:
        import tensorflow  # noqa: F401  (TFDS 4.9.10 needs it to encode images while preparing)
    except ImportError as err:
        raise ImportError(
            "Preparing TFDS data needs TensorFlow: pip install -r requirements-prepare.txt "
            "(training and reading do not)."
        ) from err
    import tensorflow_datasets as tfds

    builder = builder_cls(data_dir=data_dir, file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=source_dir, try_download_gcs=False)
    with tempfile.TemporaryDirectory(prefix="vdm_tfds_dl_") as download_dir:  # extracted copies go away
        builder.download_and_prepare(download_dir=download_dir, download_config=config)
    shutil.rmtree(arrays_dir(name, data_dir), ignore_errors=True)  # a cache of older files is stale
    load_split.cache_clear()
    for split in ("train", "test"):
        load_split(name, data_dir, split)  # writes the array cache
    return _dataset_dir(name, data_dir)


@functools.lru_cache(maxsize=8)
def load_split(name: str, data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Whole split in memory: (images uint8 [N, H, W, C], labels int32 [N]); array cache, else tfds.data_source."""
    _check_name(name)
    cached = _read_cached_split(name, data_dir, split)
    if cached is None:
        if not _tfds_prepared(name, data_dir):
            raise not_prepared_error(name, data_dir)
        import tensorflow_datasets as tfds

        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        examples = source.__getitems__(range(len(source)))
        images = np.stack([e["image"] for e in examples]).astype(np.uint8, copy=False)
        labels = np.asarray([e["label"] for e in examples], np.int32)
        _write_cached_split(name, data_dir, split, images, labels, _tfds_split_info(name, data_dir))
    else:
        images, labels = cached
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _tfds_split_info(name: str, data_dir: str) -> dict:
    import tensorflow_datasets as tfds

    info = tfds.builder(name, data_dir=data_dir).info
    return {
        "shape": tuple(int(d) for d in info.features["image"].shape),
        "num_train": int(info.splits["train"].num_examples),
        "num_test": int(info.splits["test"].num_examples),
        "num_classes": int(info.features["label"].num_classes),
    }


def split_info(name: str, data_dir: str) -> dict:
    """{'shape', 'num_train', 'num_test', 'num_classes'} from the array cache or the prepared dataset_info."""
    if not is_prepared(name, data_dir):
        raise not_prepared_error(name, data_dir)
    cached = _cache_info(name, data_dir)
    if cached is not None:
        return {
            "shape": tuple(int(d) for d in cached["shape"]),
            **{k: int(cached[k]) for k in ("num_train", "num_test", "num_classes")},
        }
    return _tfds_split_info(name, data_dir)
