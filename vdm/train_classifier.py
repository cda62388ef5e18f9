"""The noisy classifier p(y | z_t) for classifier guidance, trained on z_t at random t (Dhariwal & Nichol 2021, sec. 4).

    python -m vdm.train_classifier --config=configs/noisy_classifier.py --workdir=DIR

Each step draws t ~ U(0, 1) per example, z_t = alpha_t x + sigma_t eps under the configured
schedule, and minimises the cross-entropy of vdm.models.NoisyClassifier(z_t, gamma_t). The params
go to DIR/classifier.msgpack with DIR/config.json; `python -m vdm.main --mode=sample
--classifier_workdir=DIR --classifier_scale=s` then adds s * grad log p(y | z_t) to the score.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from vdm import data, diffusion
from vdm.models import NoisyClassifier
from vdm.schedules import Schedule, get_schedule

Array = jax.Array
PARAMS_FILE = "classifier.msgpack"


def build(config: ml_collections.ConfigDict) -> tuple[NoisyClassifier, Schedule, data.DatasetInfo]:
    """(classifier module, schedule, data info) for a noisy-classifier config; the data must have classes."""
    info = data.get_dataset_info(config.data)
    if info.num_classes < 2:
        raise ValueError(f"dataset {info.name!r} has {info.num_classes} classes; a classifier needs >= 2.")
    m = config.model
    model = NoisyClassifier(num_classes=info.num_classes, width=m.width, num_layers=m.num_layers,
                            gamma_min=m.gamma_min, gamma_max=m.gamma_max)
    return model, get_schedule(m.schedule, gamma_min=m.gamma_min, gamma_max=m.gamma_max), info


def noisy_cross_entropy(params: Any, model: NoisyClassifier, schedule: Schedule, x: Array, y: Array,
                        key: Array) -> tuple[Array, Array]:
    """(mean -log p(y | z_t), accuracy) with t ~ U(0,1), z_t ~ q(z_t | x) per example."""
    k_t, k_eps = jax.random.split(key)
    t = jax.random.uniform(k_t, (x.shape[0],))
    gamma = schedule(t)
    z = diffusion.q_sample(x, diffusion.expand_to(gamma, x), jax.random.normal(k_eps, x.shape))
    logits = model.apply({"params": params}, z, gamma)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.mean(ce), jnp.mean(jnp.argmax(logits, -1) == y)


def accuracy_at(params: Any, model: NoisyClassifier, schedule: Schedule, config: ml_collections.ConfigDict,
                t: float, key: Array) -> float:
    """Test accuracy of the classifier on z_t at a fixed t (whole test split)."""
    @jax.jit
    def correct(x, y, k):
        gamma = jnp.full((x.shape[0],), schedule(jnp.float32(t)))
        z = diffusion.q_sample(x, diffusion.expand_to(gamma, x), jax.random.normal(k, x.shape))
        return jnp.argmax(model.apply({"params": params}, z, gamma), -1) == y
    hits = [np.asarray(correct(b["x"], b["label"], jax.random.fold_in(key, i)))[b["mask"]]
            for i, b in enumerate(data.eval_iterator(config.data, config.training.batch_size))]
    return float(np.mean(np.concatenate(hits)))


def train_classifier(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train for config.training.num_steps, save params and config to workdir; returns test accuracies at t = 0.1, 0.5, 0.9."""
    model, schedule, info = build(config)
    c = config.training
    key = jax.random.PRNGKey(config.seed)
    x0 = jnp.zeros((1,) + tuple(info.shape))
    params = model.init(key, x0, jnp.zeros((1,)))["params"]
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, min(100, c.num_steps // 10 + 1),
                                                        c.num_steps), weight_decay=1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y, k):
        (loss, acc), grads = jax.value_and_grad(noisy_cross_entropy, has_aux=True)(params, model, schedule, x, y, k)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    batches = data.train_iterator(config.data, c.batch_size, seed=config.seed)
    for i in range(c.num_steps):
        b = next(batches)
        params, opt_state, loss, acc = step(params, opt_state, b["x"], b["label"], jax.random.fold_in(key, i))
        if (i + 1) % 100 == 0 and not np.isfinite(float(loss)):
            raise FloatingPointError(f"non-finite classifier loss at step {i + 1}")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, PARAMS_FILE), "wb") as f:
        f.write(flax.serialization.to_bytes(params))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=1))
    eval_key = jax.random.PRNGKey(config.seed + 1)
    result = {f"classifier/test_acc_t{t}": accuracy_at(params, model, schedule, config, t, eval_key)
              for t in (0.1, 0.5, 0.9)}
    result["classifier/final_train_loss"] = float(loss)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def load_log_prob_fn(workdir: str) -> tuple[Callable[[Array, Array, Array], Array], int]:
    """(log_prob_fn(z, t, y) -> log p(y | z_t) [B], num_classes) of the classifier saved in workdir."""
    path = os.path.join(workdir, PARAMS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no noisy classifier in {workdir}: train one with "
                                "python -m vdm.train_classifier --config=configs/noisy_classifier.py --workdir=...")
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    model, schedule, info = build(config)
    like = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(info.shape)), jnp.zeros((1,)))["params"]
    with open(path, "rb") as f:
        params = flax.serialization.from_bytes(like, f.read())

    def log_prob_fn(z: Array, t: Array, y: Array) -> Array:
        gamma = jnp.broadcast_to(schedule(t), z.shape[:1])
        logits = model.apply({"params": params}, z, gamma)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1)[:, 0]

    return log_prob_fn, info.num_classes


def main(argv: list[str]) -> None:
    """Train the noisy classifier of --config into --workdir and print its test accuracies."""
    del argv
    print(json.dumps(train_classifier(flags.FLAGS.config, flags.FLAGS.workdir), indent=1))


if __name__ == "__main__":
    # Flags are defined only when run as a script, so importing this module (vdm.main does, for
    # guidance) does not clash with the CLI's own --config.
    config_flags.DEFINE_config_file("config", None, "noisy-classifier config", lock_config=True)
    flags.DEFINE_string("workdir", None, "where to save the classifier")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
