"""Input pipeline: one API over TFDS image sets and numpy toy sets; host numpy batches.

    info = get_dataset_info(config.data)
    for batch in train_iterator(config.data, 128, seed=0, start_step=step): ...
    for batch in eval_iterator(config.data, 256): ...   # batch['mask'] marks padding
    # multi-process: each process reads only its rows of every global batch
    train_iterator(..., process_index=jax.process_index(), process_count=jax.process_count())

Batches are dicts of numpy arrays: 'x' float32 [B, *info.shape] (8-bit values k
as config.data.encoding says: k/127.5 - 1 or (k + 0.5)/128 - 1, vdm.core.encoding), 'label' int32 [B],
'index' int32 [B] (each row's place in the global batch), 'example' int32 [B] (each row's example in its split:
what `load_captions` and cached caption embeddings are looked up by), and the data set's per-example extras
(`load_extras`; 'shapes': 'attributes' int32 [B, 2, 5]); eval batches add 'mask' bool [B]. The train
batch at step k is a pure function of (seed, k): epoch e is the permutation
np.random.default_rng((seed, e)).permutation(N) and the stream of examples is
the concatenation of epochs, so `start_step` resumes exactly. Device sharding is
the trainer's job (vdm/infra/parallel.py).

CLI (needs TensorFlow, see requirements-prepare.txt):
    python -m vdm.tools.prepare_data --dataset=fashion_mnist [--data_dir=DIR] [--manual_dir=DIR]
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np

from vdm.core.encoding import ENCODINGS, encode
from vdm.data import captions, shapes, tfds_sets, toy_sets
from vdm.data.tfds_sets import DatasetNotFoundError  # noqa: F401  (public re-export)
from vdm.data.toy_sets import gaussian_nll, gaussian_scales  # noqa: F401  (public re-exports)

DATASETS = tfds_sets.IMAGE_DATASETS + toy_sets.TOY_DATASETS + (shapes.NAME,)
CAPTIONED_DATASETS = ("fashion_mnist", shapes.NAME)  # the sets `load_captions` writes captions for

_FLIP_STREAM = 1  # seeds flips with (seed, step, 1): never equal to an epoch's 2-tuple (seed, e)


def default_config() -> ml_collections.ConfigDict:
    """config.data with every key this module reads, at its default value: the one place data defaults live.

    A config.data (or plain dict) may leave out the toy-set keys of an image set, and any key
    equal to its default; `parse_config` fills exactly these values.
    """
    return ml_collections.ConfigDict(
        {
            "dataset": "fashion_mnist",  # one of DATASETS
            "data_dir": None,  # TFDS data_dir; None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
            "random_flip": False,  # random horizontal flips of training images (images only)
            "num_train": 10_000,  # toy sets and 'shapes': train split size
            "num_test": 2_000,  # toy sets and 'shapes': test split size
            "dim": 2,  # 'gaussian': number of dimensions
            "data_seed": 0,  # toy sets and 'shapes': seed of the generated data
            "encoding": "endpoints",  # 8-bit k -> k/127.5 - 1 ('endpoints') or (k + 0.5)/128 - 1 ('bin_centres')
        }
    )


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts of a data set: per-example shape, split sizes, classes, 8-bit or not, gaussian scales."""

    name: str
    shape: tuple[int, ...]
    num_train: int
    num_test: int
    num_classes: int
    discrete: bool  # True for 8-bit data (grid of `encoding`): use the discrete decoder
    scales: tuple[float, ...] | None = None  # 'gaussian' only: per-dim std s of x ~ N(0, diag(s^2))
    encoding: str = "endpoints"  # where 8-bit k sits in [-1, 1] (vdm.core.encoding); the decoder grid must match

    @property
    def num_dims(self) -> int:
        """D = prod(shape), the per-example dimensionality (for bits/dim)."""
        return int(np.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    data_dir: str | None
    random_flip: bool
    num_train: int
    num_test: int
    dim: int
    data_seed: int
    encoding: str


def _get(cfg: Any, key: str) -> Any:
    """cfg[key], or its value in default_config() when cfg does not have it."""
    try:
        return cfg[key]
    except (KeyError, AttributeError):
        return default_config()[key]


def _check_int(what: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def parse_config(data_config: Mapping | ml_collections.ConfigDict) -> _Spec:
    """Read and validate config.data (the data rules, written once; validation.validate calls this)."""
    try:
        name = data_config["dataset"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"config.data.dataset is required; valid: {', '.join(DATASETS)}.") from err
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid: {', '.join(DATASETS)}.")
    random_flip = _get(data_config, "random_flip")
    if not isinstance(random_flip, bool):
        raise ValueError(f"config.data.random_flip must be a bool, got {random_flip!r}.")
    if random_flip and name in toy_sets.TOY_DATASETS:
        raise ValueError(f"config.data.random_flip applies to images only; {name!r} is a toy set.")
    if random_flip and name == shapes.NAME:
        raise ValueError(
            f"config.data.random_flip would swap left and right in the captions of {name!r}; leave it off."
        )
    data_dir = _get(data_config, "data_dir")
    encoding = _get(data_config, "encoding")
    if encoding not in ENCODINGS:
        raise ValueError(f"Unknown config.data.encoding {encoding!r}; valid: {', '.join(ENCODINGS)}.")
    return _Spec(
        name=name,
        data_dir=tfds_sets.resolve_data_dir(data_dir) if name in tfds_sets.IMAGE_DATASETS else None,
        random_flip=random_flip,
        num_train=_check_int("config.data.num_train", _get(data_config, "num_train"), 1),
        num_test=_check_int("config.data.num_test", _get(data_config, "num_test"), 1),
        dim=_check_int("config.data.dim", _get(data_config, "dim"), 1),
        data_seed=_check_int("config.data.data_seed", _get(data_config, "data_seed"), 0),
        encoding=encoding,
    )


def get_dataset_info(data_config: Mapping | ml_collections.ConfigDict) -> DatasetInfo:
    """DatasetInfo of config.data.dataset; an image set must already be prepared (else says how)."""
    spec = parse_config(data_config)
    if spec.name in tfds_sets.IMAGE_DATASETS:
        s = tfds_sets.split_info(spec.name, spec.data_dir)
        return DatasetInfo(
            spec.name, s["shape"], s["num_train"], s["num_test"], s["num_classes"], True, encoding=spec.encoding
        )
    common = dict(name=spec.name, num_train=spec.num_train, num_test=spec.num_test)
    if spec.name == shapes.NAME:
        shape = (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)
        return DatasetInfo(shape=shape, num_classes=shapes.NUM_CLASSES, discrete=True, encoding=spec.encoding, **common)
    if spec.name == "mixture2d":
        return DatasetInfo(shape=(2,), num_classes=toy_sets.MIXTURE_MODES, discrete=False, **common)
    if spec.name == "grid8bit2d":
        return DatasetInfo(
            shape=(2,), num_classes=len(toy_sets.GRID_LEVELS) ** 2, discrete=True, encoding=spec.encoding, **common
        )
    scales = tuple(float(s) for s in gaussian_scales(spec.dim))
    return DatasetInfo(shape=(spec.dim,), num_classes=1, discrete=False, scales=scales, **common)


@functools.lru_cache(maxsize=8)
def _toy_split(name: str, num: int, seed: int, split: str, dim: int, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = toy_sets.generate(name, num, seed, split, dim=dim, encoding=encoding)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.lru_cache(maxsize=4)
def _shapes_split(num: int, seed: int, split: str) -> tuple[np.ndarray, ...]:
    arrays = shapes.generate(num, seed, split)
    for a in arrays:
        a.flags.writeable = False
    return arrays


def load_arrays(data_config: Mapping | ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Whole split in memory, read-only: (x [N, *shape] uint8 for images / float32 for toys, label int32 [N])."""
    spec = parse_config(data_config)
    if split not in toy_sets.SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid: {', '.join(toy_sets.SPLITS)}.")
    if spec.name in tfds_sets.IMAGE_DATASETS:
        return tfds_sets.load_split(spec.name, spec.data_dir, split)
    num = spec.num_train if split == "train" else spec.num_test
    if spec.name == shapes.NAME:
        return _shapes_split(num, spec.data_seed, split)[:2]
    return _toy_split(spec.name, num, spec.data_seed, split, spec.dim, spec.encoding)


def load_extras(data_config: Mapping | ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
    """The data set's per-example arrays beside x and label, each [N, ...], read-only: 'shapes' gives
    {'attributes': int32 [N, 2, 5]} (vdm.data.shapes.OBJECT_FIELDS per object, -1 when absent); others {}."""
    spec = parse_config(data_config)
    if spec.name != shapes.NAME:
        return {}
    load_arrays(data_config, split)  # checks the split
    num = spec.num_train if split == "train" else spec.num_test
    return {"attributes": _shapes_split(num, spec.data_seed, split)[2]}


def load_captions(data_config: Mapping | ml_collections.ConfigDict, split: str) -> list[str]:
    """The caption of every example of the split, in example order (a batch's 'example' indexes it):
    'shapes' from each image's attributes, 'fashion_mnist' from its class name (captions.fashion_mnist_caption)."""
    spec = parse_config(data_config)
    if spec.name not in CAPTIONED_DATASETS:
        raise ValueError(f"{spec.name!r} has no captions; captioned data sets: {', '.join(CAPTIONED_DATASETS)}.")
    if spec.name == shapes.NAME:
        return [shapes.caption(o) for o in load_extras(data_config, split)["attributes"]]
    return captions.fashion_mnist_captions(load_arrays(data_config, split)[1])


def _to_float(x: np.ndarray, encoding: str) -> np.ndarray:
    """uint8 k -> x_k of `encoding` (float32, vdm.core.encoding); float data passes through as a float32 copy."""
    if x.dtype == np.uint8:
        return encode(x, encoding)
    return np.array(x, np.float32)


def _process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that process `process_index` of `process_count` reads: one consecutive block."""
    process_count = _check_int("process_count", process_count, 1)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}.")
    if batch_size % process_count:
        raise ValueError(
            f"batch size {batch_size} does not split over {process_count} processes; "
            "choose a multiple of the process count."
        )
    n = batch_size // process_count
    return slice(process_index * n, (process_index + 1) * n)


def train_iterator(
    data_config: Mapping | ml_collections.ConfigDict,
    batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite batches {'x': float32 [B, *shape], 'label', 'index', 'example': int32 [B], extras}; batch k depends only on (seed, k).

    batch_size is the global batch B; with process_count > 1 each batch holds only this
    process's rows of it, block `process_index` of B / process_count consecutive rows; 'index' is
    each row's place in the global batch (what per-example noise is drawn by).
    """
    spec = parse_config(data_config)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    start_step = _check_int("start_step", start_step, 0)
    rows = _process_rows(batch_size, process_index, process_count)
    x_all, labels = load_arrays(data_config, "train")  # loaded now, so a missing data set fails at once
    extras = load_extras(data_config, "train")
    num = len(labels)

    index = np.arange(batch_size, dtype=np.int32)[rows]  # each row's place in the global batch

    def batches() -> Iterator[dict[str, np.ndarray]]:
        perms: dict[int, np.ndarray] = {}  # the (at most few) epochs the current batch touches
        step = start_step
        while True:
            pos = step * batch_size + np.arange(batch_size, dtype=np.int64)  # stream positions
            epochs, offsets = np.divmod(pos, num)
            perms = {e: perms.get(e) for e in np.unique(epochs).tolist()}
            idx = np.empty(batch_size, np.int64)
            for epoch in perms:
                if perms[epoch] is None:
                    perms[epoch] = np.random.default_rng((seed, epoch)).permutation(num)
                sel = epochs == epoch
                idx[sel] = perms[epoch][offsets[sel]]
            idx = idx[rows]  # only this process's rows are read and converted
            x = _to_float(x_all[idx], spec.encoding)
            if spec.random_flip:
                flip = np.random.default_rng((seed, step, _FLIP_STREAM)).random(batch_size)[rows] < 0.5
                x[flip] = x[flip, :, ::-1]  # [B, H, W, C]: reverse W
            yield {
                "x": x,
                "label": labels[idx].astype(np.int32),
                "index": index,
                "example": idx.astype(np.int32),
                **{k: v[idx] for k, v in extras.items()},
            }
            step += 1

    return batches()


def eval_iterator(
    data_config: Mapping | ml_collections.ConfigDict,
    batch_size: int,
    split: str = "test",
    *,
    process_index: int = 0,
    process_count: int = 1,
    max_examples: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """The whole split in order (or its first max_examples > 0), batches of B; the last is padded
    (with the first examples), mask False there; 'index' is each row's place in the global batch.

    With process_count > 1 each batch holds only this process's block of B / process_count rows
    (every process yields the same number of batches; together they cover the split once).
    """
    spec = parse_config(data_config)
    batch_size = _check_int("batch_size", batch_size, 1)
    max_examples = _check_int("max_examples", max_examples, 0)
    rows = _process_rows(batch_size, process_index, process_count)
    x_all, labels = load_arrays(data_config, split)
    extras = load_extras(data_config, split)
    num = min(len(labels), max_examples) if max_examples else len(labels)

    index = np.arange(batch_size, dtype=np.int32)[rows]  # each row's place in the global batch

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, num, batch_size):
            idx = np.arange(start, start + batch_size)[rows]
            mask = idx < num
            idx = np.where(mask, idx, idx % num)
            yield {
                "x": _to_float(x_all[idx], spec.encoding),
                "label": labels[idx].astype(np.int32),
                "mask": mask,
                "index": index,
                "example": idx.astype(np.int32),
                **{k: v[idx] for k, v in extras.items()},
            }

    return batches()
