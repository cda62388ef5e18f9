"""A small Fashion-MNIST classifier whose penultimate features measure sample quality (Inception-free FID).

Train once (cached; a second call with the same config returns the cached result):
    python experiments/feature_net.py --config=configs/feature_net.py --workdir=experiments/results/feature_net
Fréchet distance of samples (an .npz with 'samples' [N, 28, 28, 1] in [-1, 1], as written by
`python -m vdm.main --mode=sample`) to the test set, as JSON:
    python experiments/feature_net.py --mode=fd --workdir=experiments/results/feature_net \
        --samples=WORKDIR/samples/sample_*.npz --out=fd.json
(`python -m experiments.feature_net ...` is the same.)

It trains through the same loop as the diffusion model (vdm.tasks.loop.run, as a `FeatureNetTask`):
data parallel, orbax checkpoints with resume, metrics.jsonl and TensorBoard. The workdir holds
config.json, checkpoints/, metrics.jsonl, tb/, result.json (test accuracy and the train-vs-test
Fréchet floor at several N; written last, it marks a finished run) and test_stats.npz (mean and
covariance of the test set's features, the reference of every distance). Samples are quantised
to 8 bits first, like the images a PNG grid shows, so they meet the classifier in its training
distribution.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vdm.config import validation
from vdm.core import encoding
from vdm.data import pipeline as vdm_data
from vdm.evaluation import feature_metrics
from vdm.infra import parallel
from vdm.infra.checkpoint import Checkpointer
from vdm.infra.fileio import atomic_write
from vdm.infra.metrics import MetricWriter
from vdm.infra.optim import Optimizer, TrainState, step_keys
from vdm.models.convert import decay_mask
from vdm.tasks.loop import run

Array = jax.Array
DEFAULT_WORKDIR = "experiments/results/feature_net"
FLOOR_SIZES = (1000, 2000, 5000, 10000)  # N of the train-vs-test Fréchet floor in result.json
IMAGE_SHAPE = (28, 28, 1)  # the grey 28x28 images of config.data.dataset
DATASETS = ("fashion_mnist", "mnist")


class FeatureNet(nn.Module):
    """Conv classifier: per level two 3x3 convs (ReLU) and a 2x2 max-pool, Dense(feature_dim) ReLU, Dense(num_classes)."""

    num_classes: int
    widths: tuple[int, ...] = (32, 64)
    feature_dim: int = 128
    dropout: float = 0.3

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
        """x: [B, H, W, C] in [-1, 1] -> (logits [B, num_classes], features [B, feature_dim])."""
        if x.ndim != 4:
            raise ValueError(f"FeatureNet needs images [B, H, W, C], got shape {x.shape}.")
        h = x
        for i, width in enumerate(self.widths):
            h = nn.relu(nn.Conv(width, (3, 3), name=f"conv_{i}a")(h))
            h = nn.relu(nn.Conv(width, (3, 3), name=f"conv_{i}b")(h))
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
        features = nn.relu(nn.Dense(self.feature_dim, name="features")(h.reshape(h.shape[0], -1)))
        h = nn.Dropout(self.dropout, deterministic=not train)(features)
        return nn.Dense(self.num_classes, name="logits")(h), features


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raise ConfigError (a ValueError) naming the first invalid field of a feature_net config."""
    err = validation.ConfigError
    if config.data.dataset not in DATASETS:
        raise err(
            f"config.data.dataset={config.data.dataset!r}: the feature net is for 28x28 grey images; "
            "choose 'fashion_mnist' or 'mnist'."
        )
    if not config.model.widths or any(int(w) < 1 for w in config.model.widths):
        raise err(f"config.model.widths={tuple(config.model.widths)} must be positive channel counts.")
    for name, value in (
        ("seed", config.seed),
        ("model.feature_dim", config.model.feature_dim),
        ("eval.batch_size", config.eval.batch_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "seed" else 1):
            raise err(f"config.{name}={value!r} must be an integer >= {0 if name == 'seed' else 1}.")
    if not 0.0 <= config.model.dropout < 1.0:
        raise err(f"config.model.dropout={config.model.dropout} must be in [0, 1).")
    validation.validate_optimizer(config.optimizer)
    validation.validate_training(config.training, device_count)
    validation.divisible_by_devices("eval.batch_size", config.eval.batch_size, device_count)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> FeatureNet:
    """The FeatureNet of config.model with `num_classes` outputs."""
    m = config.model
    return FeatureNet(num_classes, tuple(int(w) for w in m.widths), int(m.feature_dim), float(m.dropout))


def to_model_input(x: np.ndarray) -> np.ndarray:
    """uint8 images -> k/127.5 - 1; float images in [-1, 1] -> quantised to the same 8-bit grid (clipped). [N, H, W, C]."""
    x = np.asarray(x)
    return encoding.encode(x if x.dtype == np.uint8 else encoding.decode(x.astype(np.float64)))


def extract(model: FeatureNet, params: Any, x: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, num_classes], features [N, feature_dim]) of images x [N, H, W, C] (uint8 or in [-1, 1])."""
    apply = jax.jit(lambda p, xb: model.apply({"params": p}, xb, train=False))
    x = to_model_input(x)
    outs = [apply(params, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return (np.concatenate([np.asarray(o[0]) for o in outs]), np.concatenate([np.asarray(o[1]) for o in outs]))


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num: int) -> np.ndarray:
    """The order of the train examples in `epoch`, a pure function of (seed, epoch)."""
    return np.random.default_rng((seed, epoch)).permutation(num)


@dataclasses.dataclass(eq=False)
class FeatureNetTask:
    """The feature net as a vdm.tasks.loop.Task: cross-entropy with dropout, test accuracy as its evaluation.

    data: {'train': (x uint8 [N, H, W, C], y int [N]), 'test': (...)}; None when only restoring.
    """

    config: ml_collections.ConfigDict
    model: FeatureNet
    optimizer: Optimizer
    data: dict | None
    cache: dict = dataclasses.field(default_factory=dict)
    display: tuple[str, ...] = ("eval/test_accuracy",)

    def init_state(self) -> TrainState:
        """Fresh params from config.seed."""
        k_init, k_run = jax.random.split(jax.random.PRNGKey(self.config.seed))
        params = self.model.init(k_init, jnp.zeros((1,) + IMAGE_SHAPE))["params"]
        return self.optimizer.init(params, k_run)

    def restore(self, ckpt: Any, like: TrainState, *, quarantine: bool = False):
        """Checkpointer.restore_latest (one parameter layout: nothing to migrate)."""
        return ckpt.restore_latest(like, quarantine=quarantine)

    def train_batches(self, start_step: int) -> Iterator[dict]:
        """This process's rows (parallel.host_slice) of the global batches {'x' in [-1, 1], 'label' int32}; batch k depends only on (seed, k)."""
        x_all, y_all = self.data["train"]
        num, size = len(y_all), self.config.training.batch_size
        step = start_step
        while True:
            epochs, offsets = np.divmod(step * size + np.arange(size, dtype=np.int64), num)
            idx = np.empty(size, np.int64)
            for epoch in np.unique(epochs).tolist():
                sel = epochs == epoch
                idx[sel] = _epoch_permutation(self.config.seed, epoch, num)[offsets[sel]]
            idx = parallel.host_slice(idx, size)
            yield {"x": encoding.encode(x_all[idx]), "label": np.asarray(y_all[idx], np.int32)}
            step += 1

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One step of the mean cross-entropy on this device's shard; dropout from step_keys' device key."""
        _, k_device = step_keys(state)

        def loss(params):
            """(mean cross-entropy, metrics) of this shard under dropout."""
            logits, _ = self.model.apply({"params": params}, batch["x"], train=True, rngs={"dropout": k_device})
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return ce, {"loss": ce, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

        grads, terms = jax.grad(loss, has_aux=True)(parallel.to_varying(state.params))
        return self.optimizer.update(state, grads, terms)

    def evaluate(self, state: TrainState, step: int, mesh: Any, workdir: str, writer: MetricWriter) -> dict:
        """Accuracy of the EMA params on the whole test split (data parallel)."""
        result = {"eval/test_accuracy": heldout_accuracy(self, state.ema_params, mesh)}
        writer.write(step, result)
        return result


def heldout_accuracy(task: FeatureNetTask, params: Any, mesh: Any) -> float:
    """Fraction of task.data['test'] classified correctly with `params`, in global batches of config.eval.batch_size."""
    if "accuracy_fn" not in task.cache:

        def per_device(params, batch, key):
            """Per-example correctness [B_local] on this device's shard."""
            logits, _ = task.model.apply({"params": params}, batch["x"], train=False)
            return jnp.argmax(logits, -1) == batch["label"]

        task.cache["accuracy_fn"] = parallel.data_parallel_eval(per_device, mesh)
    fn, size = task.cache["accuracy_fn"], task.config.eval.batch_size
    x_all, y_all = task.data["test"]
    hits = []
    for start in range(0, len(y_all), size):
        idx = np.arange(start, start + size)
        mask = idx < len(y_all)
        idx = np.where(mask, idx, idx % len(y_all))  # the last batch padded, masked out below
        batch = {"x": encoding.encode(x_all[idx]), "label": np.asarray(y_all[idx], np.int32)}
        batch = parallel.shard_batch(parallel.host_slice(batch, size), mesh)
        hits.append(np.asarray(parallel.gather(fn(params, batch, jax.random.PRNGKey(0))))[mask])
    return float(np.mean(np.concatenate(hits)))


def build_task(config: ml_collections.ConfigDict, num_classes: int, data: dict | None = None) -> FeatureNetTask:
    """The FeatureNetTask of a validated config: its model with `num_classes` outputs, Optimizer.from_config(config)."""
    optimizer = Optimizer.from_config(config, decay_mask)
    return FeatureNetTask(config, build_model(config, num_classes), optimizer, data)


def _load(config: ml_collections.ConfigDict) -> dict:
    """{'train': (x, y), 'test': (x, y)} of config.data (uint8 images, int labels)."""
    return {split: vdm_data.load_arrays(config.data, split) for split in ("train", "test")}


def _cached_result(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """result.json of `workdir` if it was trained with this very config; None if nothing finished there yet.

    A workdir holding another config raises (its checkpoints would be resumed under the wrong settings).
    """
    config_path, result_path = os.path.join(workdir, "config.json"), os.path.join(workdir, "result.json")
    if not os.path.exists(config_path):
        return None
    with open(config_path) as f:
        if json.load(f) != json.loads(config.to_json()):
            raise ValueError(
                f"{workdir} holds a feature net trained with another config; pass another "
                "--workdir or delete that folder."
            )
    if not os.path.exists(result_path):
        return None  # unfinished: run() resumes from its checkpoints
    with open(result_path) as f:
        return {**json.load(f), "cached": True}


def _restore(task: FeatureNetTask, workdir: str) -> Any:
    """EMA params of the newest checkpoint in workdir/checkpoints (FileNotFoundError if none)."""
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None, async_save=False) as ckpt:
        state, _ = ckpt.restore_latest(parallel.to_host(task.init_state()))
    if state is None:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint; delete {workdir} and retrain.")
    return state.ema_params


def _measure(task: FeatureNetTask, params: Any, workdir: str) -> dict:
    """Test accuracy (with its binomial SE) and the train-vs-test Fréchet floor; writes workdir/test_stats.npz."""
    (x_train, _), (x_test, y_test) = task.data["train"], task.data["test"]
    batch_size = task.config.eval.batch_size
    logits, feats = extract(task.model, params, x_test, batch_size)
    correct = np.argmax(logits, -1) == y_test
    mu, cov = feature_metrics.gaussian_stats(feats)
    if jax.process_index() == 0:
        atomic_write(
            os.path.join(workdir, "test_stats.npz"), lambda f: np.savez(f, mu=mu, cov=cov, num=len(feats)), binary=True
        )
    _, train_feats = extract(task.model, params, x_train[: max(FLOOR_SIZES)], batch_size)
    floor = {
        str(n): feature_metrics.frechet_distance(*feature_metrics.gaussian_stats(train_feats[:n]), mu, cov)
        for n in FLOOR_SIZES
        if 1 < n <= len(train_feats)
    }
    acc = float(correct.mean())
    return {
        "test_accuracy": acc,
        "test_accuracy_se": float(np.sqrt(acc * (1 - acc) / len(correct))),
        "num_test": int(len(correct)),
        "fd_train_vs_test": floor,
    }


def train_feature_net(config: ml_collections.ConfigDict, workdir: str, *, data: dict | None = None) -> dict:
    """Train the classifier through vdm.tasks.loop.run in `workdir` (resuming), save the test-feature stats; return result.json.

    data: optional {'train': (x, y), 'test': (x, y)} with x [N, H, W, C] uint8 and y int [N]
    (default: config.data's splits). Cached: if `workdir` already holds a result for this very
    config, nothing is trained; a workdir of another config raises (use another workdir).
    """
    parallel.initialize_distributed()
    validate(config, jax.device_count())
    cached = _cached_result(config, workdir)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    data = data if data is not None else _load(config)
    num_classes = int(max(np.max(data["train"][1]), np.max(data["test"][1]))) + 1
    task = build_task(config, num_classes, data)
    run(task, parallel.make_mesh(), workdir)
    result = _measure(task, _restore(task, workdir), workdir)
    result.update(
        {
            "num_train": int(len(data["train"][1])),
            "num_classes": num_classes,
            "num_steps": int(config.training.num_steps),
            "feature_dim": int(config.model.feature_dim),
            "train_seconds": time.perf_counter() - t0,
            "backend": jax.default_backend(),
        }
    )
    if jax.process_index() == 0:  # result.json last: its presence marks a finished run
        atomic_write(os.path.join(workdir, "result.json"), lambda f: json.dump(result, f, indent=2, sort_keys=True))
    return {**result, "cached": False}


def load_feature_net(workdir: str) -> tuple[FeatureNet, Any, ml_collections.ConfigDict]:
    """(model, params, config) of the feature net trained in `workdir`; FileNotFoundError says how to train it."""
    result_path = os.path.join(workdir, "result.json")
    if not os.path.exists(result_path):
        raise FileNotFoundError(
            f"no trained feature net in {workdir}; train it once with `make feature-net` or "
            f"python experiments/feature_net.py --config=configs/feature_net.py --workdir={workdir}"
        )
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(result_path) as f:
        result = json.load(f)
    task = build_task(config, result["num_classes"])
    return task.model, _restore(task, workdir), config


def fd_to_test_set(samples: np.ndarray, workdir: str) -> dict:
    """Squared Fréchet distance between feature Gaussians of samples [N, H, W, C] (in [-1, 1]) and of the test set.

    Returns {'fd', 'num_samples', 'nonfinite_frac', 'feature_dim'}; 'fd' is NaN when any sample
    is non-finite (a diverged sampler is reported, not hidden).
    """
    samples = np.asarray(samples)
    if samples.ndim != 4 or samples.shape[0] < 2:
        raise ValueError(f"samples must be images [N >= 2, H, W, C], got shape {samples.shape}.")
    model, params, config = load_feature_net(workdir)
    stats = np.load(os.path.join(workdir, "test_stats.npz"))
    bad = float(np.mean(~np.isfinite(samples)))
    out = {"num_samples": int(len(samples)), "nonfinite_frac": bad, "feature_dim": int(config.model.feature_dim)}
    if bad > 0:
        return {**out, "fd": float("nan")}
    _, feats = extract(model, params, samples, config.eval.batch_size)
    mu, cov = feature_metrics.gaussian_stats(feats)
    return {**out, "fd": feature_metrics.frechet_distance(mu, cov, stats["mu"], stats["cov"])}


def main(argv: list[str]) -> int:
    """CLI: --mode=train (cached) prints result.json; --mode=fd writes the distance of --samples to --out."""
    from absl import flags
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's info lines are noise here
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.mode == "train":
        if FLAGS.config is None:
            raise ValueError("--mode=train needs --config=configs/feature_net.py")
        result = train_feature_net(FLAGS.config, FLAGS.workdir)
        print(json.dumps(result, indent=1, sort_keys=True))
        if not result["cached"]:
            print(
                f"feature net: test accuracy {100 * result['test_accuracy']:.2f}% "
                f"(+- {100 * result['test_accuracy_se']:.2f}) in {result['train_seconds']:.0f} s"
            )
        return 0
    if not FLAGS.samples or not FLAGS.out:
        raise ValueError("--mode=fd needs --samples=FILE.npz and --out=FILE.json")
    with np.load(FLAGS.samples) as f:
        result = fd_to_test_set(f["samples"], FLAGS.workdir)
    result["samples"] = os.path.abspath(FLAGS.samples)
    with open(FLAGS.out, "w") as f:
        json.dump(
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()},
            f,
            indent=1,
            sort_keys=True,
        )
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "feature net config (configs/feature_net.py[:small])", lock_config=True
    )
    flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "where the trained feature net lives (cache)")
    flags.DEFINE_enum("mode", "train", ("train", "fd"), "train (cached) or fd (distance of --samples)")
    flags.DEFINE_string("samples", None, "fd: .npz with 'samples' [N, H, W, C] in [-1, 1]")
    flags.DEFINE_string("out", None, "fd: output JSON")
    app.run(main)
