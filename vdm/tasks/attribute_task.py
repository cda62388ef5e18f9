"""The attribute classifier of the `shapes` scenes as a Task of the training loop, and its use as the evaluator of
prompt accuracy (vdm.evaluation.prompt_accuracy).

    python -m vdm.main --config=configs/shapes_attributes.py --workdir=DIR
    python -m vdm.tools.prompt_accuracy SAMPLES.npz --classifier=DIR

Each step minimises, per image, the sum over the nine cells of the cross-entropy of 'present' and, in the cells
that hold an object, of its shape, colour and size (targets: prompt_accuracy.objects_to_cells of the batch's
ground-truth 'attributes'). The evaluation is the prompt accuracy of the classifier itself on real images with
their true captions, the ceiling of any model's: over the whole test split (every prompt held out) and the first
config.eval.num_train_examples train images (every prompt seen); DIR/prompt_accuracy.json holds both reports. It
runs through the same loop as the diffusion model (vdm/tasks/loop.py): data parallel, orbax checkpoints with
resume, metrics.jsonl and TensorBoard, DIR/config.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vdm.config import cli_errors, validation
from vdm.config.validation import check, check_choice, check_int
from vdm.core import encoding
from vdm.data import pipeline, shapes
from vdm.evaluation import prompt_accuracy as pa
from vdm.evaluation.split_eval import over_split
from vdm.infra import parallel
from vdm.infra.checkpoint import Checkpointer
from vdm.infra.fileio import atomic_write_text
from vdm.infra.metrics import MetricWriter
from vdm.infra.optim import Optimizer, TrainState
from vdm.models import attribute_classifier, convert
from vdm.models.attribute_classifier import HEADS, AttributeClassifier
from vdm.tasks.loop import has_checkpoints, run

Array = jax.Array
TASK = "attribute_classifier"
REPORT = "prompt_accuracy.json"  # the last evaluation's reports, {'test': ..., 'train': ..., 'step': k}
RECOLOUR_STREAM = 2  # seeds a step's recolouring with (seed, step, 2, process): never an epoch's (seed, e)
SPLITS = ("test", "train")  # what evaluate measures: every test prompt is held out, every train prompt seen


def cell_losses(logits: dict[str, Array], cells: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    """(per-image loss [B], per-image hit rates {head: [B]}): the sum over cells of the cross-entropy of 'present'
    and, where a cell holds an object (cells['present'] = 1), of 'shape', 'colour' and 'size'; targets [B, 9]."""
    present = cells["present"].astype(jnp.float32)
    loss = jnp.zeros(present.shape[:1])
    hits = {}
    for head in HEADS:
        target = jnp.maximum(cells[head], 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[head], target)
        right = (jnp.argmax(logits[head], -1) == target).astype(jnp.float32)
        weight = jnp.ones_like(present) if head == "present" else present
        loss += jnp.sum(weight * ce, axis=1)
        hits[head] = jnp.sum(weight * right, axis=1) / jnp.maximum(jnp.sum(weight, axis=1), 1.0)
    return loss, hits


def predicted_cells(logits: dict[str, Array]) -> dict[str, Array]:
    """The argmax class int32 [B, 9] of each head's logits."""
    return {head: jnp.argmax(v, -1).astype(jnp.int32) for head, v in logits.items()}


def recoloured_scenes(objects: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(objects, uint8 images [N, 32, 32, 3]): the scenes objects [N, K, 5] with each object's colour redrawn uniformly
    from shapes.COLOURS (so every (shape, colour) pair, held-out ones too, appears) and its centre jittered anew within
    its cell (shapes.JITTER of its size), rendered by shapes.render."""
    objects = np.array(objects, np.int32)
    present = objects[..., 0] >= 0
    objects[..., 1] = np.where(present, rng.integers(len(shapes.COLOURS), size=present.shape), -1)
    reach = np.asarray(shapes.JITTER)[np.maximum(objects[..., 2], 0)][..., None]  # [N, K, 1]
    jitter = np.floor(rng.random(present.shape + (2,)) * (2 * reach + 1)) - reach
    cell_centres = np.asarray(shapes.CELL_CENTRES, np.float32)
    centres = np.stack([cell_centres[objects[..., 3]], cell_centres[objects[..., 4]]], axis=-1) + jitter
    centres = np.where(present[..., None], centres, np.nan).astype(np.float32)
    return objects, shapes.render(objects, centres)


def to_objects(cells: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted objects int32 [N, 9, 5] of predicted_cells (prompt_accuracy.cells_to_objects)."""
    return pa.cells_to_objects(cells["present"], cells["shape"], cells["colour"], cells["size"])


@dataclasses.dataclass(eq=False)
class AttributeTask:
    """The attribute classifier as a vdm.tasks.loop.Task: per-cell cross-entropy; prompt accuracy on real images."""

    config: ml_collections.ConfigDict
    info: pipeline.DatasetInfo
    model: AttributeClassifier
    optimizer: Optimizer
    display: tuple[str, ...] = ("attributes/test/held_out/overall", "attributes/train/seen/overall")

    def init_state(self) -> TrainState:
        """Fresh params from config.seed."""
        k_init, k_run = jax.random.split(jax.random.PRNGKey(self.config.seed))
        params = self.model.init(k_init, jnp.zeros((1,) + tuple(self.info.shape)))["params"]
        return self.optimizer.init(params, k_run)

    def train_batches(self, start_step: int) -> Iterator[dict]:
        """The data's train batches (pipeline.train_iterator) with per-cell targets 'cell_<head>' int32 [B, 9]; with
        config.scenes.recolour, each batch's scenes recoloured (recoloured_scenes, seeded by the seed and the step)."""
        c = self.config
        shard = parallel.process_shard()
        batches = pipeline.train_iterator(c.data, c.training.batch_size, seed=c.seed, start_step=start_step, **shard)
        for step, batch in enumerate(batches, start_step):
            objects, x = batch["attributes"], batch["x"]
            if c.scenes.recolour:
                rng = np.random.default_rng((c.seed, step, RECOLOUR_STREAM, shard["process_index"]))
                objects, images = recoloured_scenes(objects, rng)
                x = encoding.encode(images, c.data.encoding)
            cells = pa.objects_to_cells(objects)
            yield {"x": x, "index": batch["index"], **{f"cell_{k}": v for k, v in cells.items()}}

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One step of the batch mean of cell_losses."""
        cells = {head: batch[f"cell_{head}"] for head in HEADS}

        def loss(params):
            per_image, hits = cell_losses(self.model.apply({"params": params}, batch["x"]), cells)
            return jnp.mean(per_image), {"loss": jnp.mean(per_image)} | {
                f"acc_{k}": jnp.mean(v) for k, v in hits.items()
            }

        grads, terms = jax.grad(loss, has_aux=True)(parallel.to_varying(state.params))
        return self.optimizer.update(state, grads, terms)

    def evaluate(self, state: TrainState, step: int, mesh: Any, workdir: str, writer: MetricWriter) -> dict:
        """Prompt accuracy of the classifier (EMA params) on the test split and the first train images, with their
        true captions: the ceiling; both reports to workdir/prompt_accuracy.json, their figures to `writer`."""
        reports = {name: split_report(self, state.ema_params, mesh, name) for name in SPLITS}
        result = {}
        for name, report in reports.items():
            result |= pa.flat_metrics(report, f"attributes/{name}")
        writer.write(step, result)
        if jax.process_index() == 0:
            atomic_write_text(
                os.path.join(workdir, REPORT), json.dumps({"step": int(step), **reports}, indent=1) + "\n"
            )
        return result


def split_report(task: AttributeTask, params: Any, mesh: Any, split: str) -> dict:
    """prompt_accuracy.accuracy_report of the classifier's predictions on `split` (the train split: its first
    config.eval.num_train_examples) against the images' true objects; data parallel, each image once."""

    def per_device(params, batch, key):
        del key
        cells = predicted_cells(task.model.apply({"params": params}, batch["x"]))
        return {"cells": cells, "true": batch["attributes"]}

    c = task.config
    limit = c.eval.num_train_examples if split == "train" else 0
    out = over_split(
        parallel.data_parallel_eval(per_device, mesh),
        params,
        c.data,
        c.eval.batch_size,
        mesh,
        jax.random.PRNGKey(c.seed + 1),
        split=split,
        max_examples=limit,
        desc=f"prompt accuracy ({split})",
    )
    return pa.accuracy_report(out["true"], to_objects(out["cells"]))


@validation.names_missing_keys
def validate_attribute_config(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first invalid or missing field of an attribute-classifier config
    (configs/shapes_attributes.py)."""
    c = config
    check_int("seed", c.seed, 0)
    check_choice("data.dataset", c.data.dataset, (shapes.NAME,))
    validation.validate_data(c.data)
    for key in ("width", "num_levels", "hidden"):
        check_int(f"model.{key}", c.model[key], 1)
    check(2**c.model.num_levels <= shapes.IMAGE_SIZE, f"config.model.num_levels={c.model.num_levels} is too deep.")
    check(isinstance(c.scenes.recolour, bool), f"config.scenes.recolour={c.scenes.recolour!r} must be a bool.")
    validation.validate_optimizer(c.optimizer)
    validation.validate_training(c.training, device_count)
    check_int("eval.batch_size", c.eval.batch_size, 1)
    validation.divisible_by_devices("eval.batch_size", c.eval.batch_size, device_count)
    check_int("eval.num_train_examples", c.eval.num_train_examples, 1)


def build(config: ml_collections.ConfigDict) -> AttributeTask:
    """Validate an attribute-classifier config and build its Task."""
    validate_attribute_config(config, device_count=jax.device_count())
    info = pipeline.get_dataset_info(config.data)
    model = attribute_classifier.from_config(config.model)
    return AttributeTask(config, info, model, Optimizer.from_config(config, convert.decay_mask))


def train_attribute_classifier(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (resuming) for config.training.num_steps in `workdir`; returns the last evaluation's figures."""
    parallel.initialize_distributed()
    return run(build(config), parallel.make_mesh(), workdir)


def load_attribute_classifier(workdir: str, batch_size: int = 500) -> pa.Classifier:
    """classifier(uint8 images [N, 32, 32, 3]) -> predicted objects int32 [N, 9, 5], from the newest checkpoint of
    the attribute classifier trained in `workdir` (EMA params; its config from workdir/config.json)."""
    path = os.path.join(workdir, "config.json")
    untrained = cli_errors.untrained_hint(workdir, TASK, flag="--classifier")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--classifier={workdir} holds no attribute classifier (no config.json). {untrained}")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.get("task") != TASK:
        raise validation.ConfigError(f"--classifier={workdir} is a {config.get('task')!r} run, not {TASK!r}.")
    info = pipeline.get_dataset_info(config.data)
    optimizer = Optimizer.from_config(config, convert.decay_mask)
    task = AttributeTask(config, info, attribute_classifier.from_config(config.model), optimizer)
    if not has_checkpoints(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(untrained)
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None, create=False) as ckpt:
        state, _ = ckpt.restore_latest(parallel.to_host(task.init_state()))
    if state is None:
        raise FileNotFoundError(untrained)
    apply = jax.jit(lambda params, x: predicted_cells(task.model.apply({"params": params}, x)))
    params, encoding_name = state.ema_params, task.info.encoding

    def classifier(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != tuple(task.info.shape):
            raise ValueError(f"images must be uint8 {tuple(task.info.shape)}, got {images.dtype} {images.shape[1:]}.")
        parts = [
            jax.tree.map(np.asarray, apply(params, encoding.encode(images[i : i + batch_size], encoding_name)))
            for i in range(0, len(images), batch_size)
        ]
        if not parts:
            return np.zeros((0, pa.NUM_CELLS, len(shapes.OBJECT_FIELDS)), np.int32)
        return to_objects({k: np.concatenate([p[k] for p in parts]) for k in HEADS})

    return classifier
