"""A small Fashion-MNIST classifier whose penultimate features measure sample quality (Inception-free FID).

Train once (cached; a second call with the same config returns the cached result):
    python experiments/feature_net.py --config=configs/feature_net.py --workdir=experiments/results/feature_net
Fréchet distance of samples (an .npz with 'samples' [N, 28, 28, 1] in [-1, 1], as written by
`python -m vdm.main --mode=sample`) to the test set, as JSON:
    python experiments/feature_net.py --mode=fd --workdir=experiments/results/feature_net \
        --samples=WORKDIR/samples/sample_*.npz --out=fd.json

The workdir holds config.json, checkpoints/ (orbax, vdm.checkpoint), result.json (test accuracy
and the train-vs-test Fréchet floor at several N) and test_stats.npz (mean and covariance of the
test set's features, the reference of every distance). Samples are quantised to 8 bits first,
like the images a PNG grid shows, so they meet the classifier in its training distribution.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fid  # noqa: E402  (experiments/fid.py, next to this file)

from vdm import data as vdm_data  # noqa: E402
from vdm.checkpoint import Checkpointer  # noqa: E402
from vdm.data_toy import from_8bit  # noqa: E402

Array = jax.Array
DEFAULT_WORKDIR = "experiments/results/feature_net"
FLOOR_SIZES = (1000, 2000, 5000, 10000)   # N of the train-vs-test Fréchet floor in result.json


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


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the first invalid field of a feature_net config."""
    if config.data.dataset not in ("fashion_mnist", "mnist"):
        raise ValueError(f"config.data.dataset={config.data.dataset!r}: the feature net is for 28x28 "
                         "grey images; choose 'fashion_mnist' or 'mnist'.")
    if not config.model.widths or any(int(w) < 1 for w in config.model.widths):
        raise ValueError(f"config.model.widths={tuple(config.model.widths)} must be positive channel counts.")
    for name, value in (("model.feature_dim", config.model.feature_dim), ("training.num_steps",
                        config.training.num_steps), ("training.batch_size", config.training.batch_size),
                        ("eval.batch_size", config.eval.batch_size), ("training.log_every",
                        config.training.log_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{name}={value!r} must be an integer >= 1.")
    if not 0.0 <= config.model.dropout < 1.0:
        raise ValueError(f"config.model.dropout={config.model.dropout} must be in [0, 1).")
    if config.training.learning_rate <= 0:
        raise ValueError(f"config.training.learning_rate={config.training.learning_rate} must be > 0.")


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> FeatureNet:
    """The FeatureNet of config.model with `num_classes` outputs."""
    m = config.model
    return FeatureNet(num_classes, tuple(int(w) for w in m.widths), int(m.feature_dim), float(m.dropout))


def to_model_input(x: np.ndarray) -> np.ndarray:
    """uint8 images -> k/127.5 - 1; float images in [-1, 1] -> quantised to the same 8-bit grid (clipped). [N, H, W, C]."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return from_8bit(x)
    return from_8bit(np.clip(np.round((x.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8))


def extract(model: FeatureNet, params: Any, x: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, num_classes], features [N, feature_dim]) of images x [N, H, W, C] (uint8 or in [-1, 1])."""
    apply = jax.jit(lambda p, xb: model.apply({"params": p}, xb, train=False))
    x = to_model_input(x)
    outs = [apply(params, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return (np.concatenate([np.asarray(o[0]) for o in outs]),
            np.concatenate([np.asarray(o[1]) for o in outs]))


def _load(config: ml_collections.ConfigDict) -> dict:
    return {split: vdm_data.load_arrays(config.data, split) for split in ("train", "test")}


def train_feature_net(config: ml_collections.ConfigDict, workdir: str, *,
                      data: dict | None = None) -> dict:
    """Train the classifier with AdamW + cross-entropy, save it and the test-feature stats to `workdir`; return result.json.

    data: optional {'train': (x, y), 'test': (x, y)} with x [N, H, W, C] uint8 and y int [N]
    (default: config.data's splits). Cached: if `workdir` already holds a result for this very
    config, nothing is trained; a result for another config raises (use another workdir).
    """
    validate(config)
    result_path = os.path.join(workdir, "result.json")
    config_json = json.loads(config.to_json())
    if os.path.exists(result_path):
        with open(os.path.join(workdir, "config.json")) as f:
            if json.load(f) != config_json:
                raise ValueError(f"{workdir} holds a feature net trained with another config; pass another "
                                 "--workdir or delete that folder.")
        with open(result_path) as f:
            return {**json.load(f), "cached": True}
    t0 = time.perf_counter()
    data = data if data is not None else _load(config)
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    model = build_model(config, num_classes)
    t = config.training
    lr = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps,
                                            max(t.num_steps, t.warmup_steps + 1))
    tx = optax.adamw(lr, weight_decay=t.weight_decay)
    key = jax.random.PRNGKey(config.seed)
    params = model.init(jax.random.fold_in(key, 0), jnp.zeros((1,) + x_train.shape[1:]))["params"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y, k):
        def loss_fn(p):
            logits, _ = model.apply({"params": p}, x, train=True, rngs={"dropout": k})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    n, bs = len(y_train), t.batch_size
    perm, epoch = None, -1
    for i in range(t.num_steps):
        if (i * bs) // n != epoch:          # new epoch: a fresh permutation from (seed, epoch)
            epoch = (i * bs) // n
            perm = np.random.default_rng((config.seed, epoch)).permutation(n)
        idx = perm[np.arange(i * bs, (i + 1) * bs) % n]
        params, opt_state, loss = step(params, opt_state, from_8bit(x_train[idx]), y_train[idx],
                                       jax.random.fold_in(key, i + 1))
        if (i + 1) % t.log_every == 0:
            print(f"feature_net step {i + 1}/{t.num_steps}: train loss {float(loss):.4f}", flush=True)

    logits, feats = extract(model, params, x_test, config.eval.batch_size)
    correct = np.argmax(logits, -1) == y_test
    mu, cov = fid.gaussian_stats(feats)
    os.makedirs(workdir, exist_ok=True)
    np.savez(os.path.join(workdir, "test_stats.npz"), mu=mu, cov=cov, num=len(feats))
    floor = {}
    _, train_feats = extract(model, params, x_train[:max(FLOOR_SIZES)], config.eval.batch_size)
    for size in FLOOR_SIZES:
        if size <= len(train_feats) and size > 1:
            floor[str(size)] = fid.frechet_distance(*fid.gaussian_stats(train_feats[:size]), mu, cov)
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, async_save=False) as ckpt:
        ckpt.save(t.num_steps, params, info={"config": config.to_json()})
    result = {"test_accuracy": float(correct.mean()),
              "test_accuracy_se": float(np.sqrt(correct.mean() * (1 - correct.mean()) / len(correct))),
              "num_test": int(len(correct)), "num_train": int(n), "num_classes": num_classes,
              "num_steps": int(t.num_steps), "feature_dim": int(config.model.feature_dim),
              "fd_train_vs_test": floor, "train_seconds": time.perf_counter() - t0,
              "backend": jax.default_backend()}
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config_json, f, indent=2, sort_keys=True)
    with open(result_path, "w") as f:          # written last: its presence marks a finished run
        json.dump(result, f, indent=2, sort_keys=True)
    return {**result, "cached": False}


def load_feature_net(workdir: str) -> tuple[FeatureNet, Any, ml_collections.ConfigDict]:
    """(model, params, config) of the feature net trained in `workdir`; FileNotFoundError says how to train it."""
    result_path = os.path.join(workdir, "result.json")
    if not os.path.exists(result_path):
        raise FileNotFoundError(f"no trained feature net in {workdir}; train it once with `make feature-net` or "
                                f"python experiments/feature_net.py --config=configs/feature_net.py --workdir={workdir}")
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(result_path) as f:
        result = json.load(f)
    model = build_model(config, result["num_classes"])
    like = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None, async_save=False) as ckpt:
        params, _ = ckpt.restore_latest(like)
    if params is None:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint; delete {workdir} and retrain.")
    return model, params, config


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
    return {**out, "fd": fid.frechet_distance(*fid.gaussian_stats(feats), stats["mu"], stats["cov"])}


def main(argv: list[str]) -> int:
    """CLI: --mode=train (cached) prints result.json; --mode=fd writes the distance of --samples to --out."""
    from absl import flags
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)   # orbax's info lines are noise here
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.mode == "train":
        if FLAGS.config is None:
            raise ValueError("--mode=train needs --config=configs/feature_net.py")
        result = train_feature_net(FLAGS.config, FLAGS.workdir)
        print(json.dumps(result, indent=1, sort_keys=True))
        if not result["cached"]:
            print(f"feature net: test accuracy {100 * result['test_accuracy']:.2f}% "
                  f"(+- {100 * result['test_accuracy_se']:.2f}) in {result['train_seconds']:.0f} s")
        return 0
    if not FLAGS.samples or not FLAGS.out:
        raise ValueError("--mode=fd needs --samples=FILE.npz and --out=FILE.json")
    with np.load(FLAGS.samples) as f:
        result = fd_to_test_set(f["samples"], FLAGS.workdir)
    result["samples"] = os.path.abspath(FLAGS.samples)
    with open(FLAGS.out, "w") as f:
        json.dump({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                   for k, v in result.items()}, f, indent=1, sort_keys=True)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "feature net config (configs/feature_net.py[:small])",
                                    lock_config=True)
    flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "where the trained feature net lives (cache)")
    flags.DEFINE_enum("mode", "train", ("train", "fd"), "train (cached) or fd (distance of --samples)")
    flags.DEFINE_string("samples", None, "fd: .npz with 'samples' [N, H, W, C] in [-1, 1]")
    flags.DEFINE_string("out", None, "fd: output JSON")
    app.run(main)
