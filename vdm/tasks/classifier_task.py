"""The noisy classifier p(y | z_t) for classifier guidance, trained on z_t at random t (Dhariwal & Nichol 2021, sec. 4).

    python -m vdm.main --config=configs/noisy_classifier.py --workdir=DIR

Each step draws t ~ U(0, 1) per example, z_t = alpha_t x + sigma_t eps under the configured
schedule, and minimises the cross-entropy of vdm.models.classifier.NoisyClassifier(z_t, gamma_t). It runs
through the same loop as the diffusion model (vdm/tasks/loop.py): data parallel, orbax checkpoints
in DIR/checkpoints with resume, metrics.jsonl and TensorBoard, DIR/config.json. `python -m
vdm.main --mode=sample --classifier_workdir=DIR --classifier_scale=s` then adds
s * grad log p(y | z_t) to the score (the classifier read back by load_log_prob_fn).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vdm.config import classifier_checks, cli_errors, validation
from vdm.core import gaussian
from vdm.core.objectives import example_noise
from vdm.core.schedules import Schedule
from vdm.data import pipeline
from vdm.evaluation.split_eval import over_split
from vdm.infra import parallel
from vdm.infra.checkpoint import Checkpointer
from vdm.infra.metrics import MetricWriter
from vdm.infra.optim import Optimizer, TrainState, step_keys
from vdm.models import convert
from vdm.models.classifier import NoisyClassifier, classifier_from_config
from vdm.tasks.loop import has_checkpoints, run

Array = jax.Array
EVAL_TIMES = (0.1, 0.5, 0.9)


def noisy_cross_entropy(
    logits_fn: Callable[[Array, Array], Array], schedule: Schedule, x: Array, y: Array, t: Array, eps: Array
) -> tuple[Array, Array]:
    """Per-example (-log p(y | z_t), correct) with z_t = alpha_t x + sigma_t eps; logits_fn(z, gamma) -> [B, K]."""
    gamma = schedule(t)
    z = gaussian.q_sample(x, gaussian.expand_to(gamma, x), eps)
    logits = logits_fn(z, gamma)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y), jnp.argmax(logits, -1) == y


@dataclasses.dataclass(eq=False)
class ClassifierTask:
    """The noisy classifier as a vdm.tasks.loop.Task: cross-entropy on z_t, test accuracy at t in EVAL_TIMES."""

    config: ml_collections.ConfigDict
    info: pipeline.DatasetInfo
    model: NoisyClassifier
    schedule: Schedule
    optimizer: Optimizer
    display: tuple[str, ...] = tuple(f"classifier/test_acc_t{t}" for t in EVAL_TIMES)

    def init_state(self) -> TrainState:
        """Fresh params from config.seed."""
        k_init, k_run = jax.random.split(jax.random.PRNGKey(self.config.seed))
        x = jnp.zeros((1,) + tuple(self.info.shape))
        return self.optimizer.init(self.model.init(k_init, x, jnp.zeros((1,)))["params"], k_run)

    def logits_fn(self, params: Any) -> Callable[[Array, Array], Array]:
        """(z, gamma) -> logits [B, K] of the classifier with `params`."""
        return lambda z, gamma: self.model.apply({"params": params}, z, gamma)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One step of the mean cross-entropy (per-example t and eps from the global example index)."""
        k_example, _ = step_keys(state)
        x = batch["x"]
        noise = example_noise(k_example, batch["index"], x.shape[1:], x.dtype)

        def loss(params):
            ce, correct = noisy_cross_entropy(
                self.logits_fn(params), self.schedule, batch["x"], batch["label"], noise["t"], noise["eps"]
            )
            return jnp.mean(ce), {"loss": jnp.mean(ce), "accuracy": jnp.mean(correct)}

        grads, terms = jax.grad(loss, has_aux=True)(parallel.to_varying(state.params))
        return self.optimizer.update(state, grads, terms)

    def evaluate(self, state: TrainState, step: int, mesh: Any, workdir: str, writer: MetricWriter) -> dict:
        """Test accuracy on z_t at each t in EVAL_TIMES (whole test split, EMA params)."""
        result = {f"classifier/test_acc_t{t}": accuracy_at(self, state.ema_params, mesh, t) for t in EVAL_TIMES}
        writer.write(step, result)
        return result


def accuracy_at(task: ClassifierTask, params: Any, mesh: Any, t: float) -> float:
    """Test accuracy of the classifier on z_t at a fixed t, over the whole test split (data parallel)."""

    def per_device(params, batch, key):
        key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
        x = batch["x"]
        eps = jax.random.normal(key, x.shape)
        _, correct = noisy_cross_entropy(
            task.logits_fn(params), task.schedule, x, batch["label"], jnp.full((x.shape[0],), t), eps
        )
        return correct

    c = task.config
    hits = over_split(
        parallel.data_parallel_eval(per_device, mesh),
        params,
        c.data,
        c.eval.batch_size,
        mesh,
        jax.random.PRNGKey(c.seed + 1),
    )
    return float(np.mean(hits))


def build(config: ml_collections.ConfigDict) -> ClassifierTask:
    """Validate a noisy-classifier config (classifier_checks.validate_classifier) and build its task; the data must have classes."""
    classifier_checks.validate_classifier(config, device_count=jax.device_count())
    info = pipeline.get_dataset_info(config.data)
    if info.num_classes < 2:
        raise validation.ConfigError(f"dataset {info.name!r} has {info.num_classes} classes; a classifier needs >= 2.")
    model, schedule = classifier_from_config(config, info.num_classes)
    return ClassifierTask(config, info, model, schedule, Optimizer.from_config(config, convert.decay_mask))


def train_classifier(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (resuming) for config.training.num_steps in `workdir`; returns the test accuracies at t in EVAL_TIMES."""
    parallel.initialize_distributed()
    task = build(config)
    result = run(task, parallel.make_mesh(), workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


def load_log_prob_fn(workdir: str) -> tuple[Callable[[Array, Array, Array], Array], int]:
    """(log_prob_fn(z, t, y) -> log p(y | z_t) [B], num_classes) from the newest checkpoint of the noisy classifier
    trained in workdir (EMA params; its config from workdir/config.json)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"--classifier_workdir={workdir} holds no noisy classifier (no config.json): train one first with "
            f"{cli_errors.train_command(workdir, 'classifier')} (:toy2d for toy data)."
        )
    untrained = cli_errors.untrained_hint(workdir, "classifier", flag="--classifier_workdir")
    if not has_checkpoints(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(untrained)
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    info = pipeline.get_dataset_info(config.data)
    model, schedule = classifier_from_config(config, info.num_classes)
    optimizer = Optimizer.from_config(config, convert.decay_mask)
    k_init, k_run = jax.random.split(jax.random.PRNGKey(config.seed))
    params = model.init(k_init, jnp.zeros((1,) + tuple(info.shape)), jnp.zeros((1,)))["params"]
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None, create=False) as ckpt:
        state, _ = ckpt.restore_latest(parallel.to_host(optimizer.init(params, k_run)))
    if state is None:
        raise FileNotFoundError(untrained)

    def log_prob_fn(z: Array, t: Array, y: Array) -> Array:
        logits = model.apply({"params": state.ema_params}, z, jnp.broadcast_to(schedule(t), z.shape[:1]))
        return jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1)[:, 0]

    return log_prob_fn, info.num_classes
