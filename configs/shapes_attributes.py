"""The attribute classifier of the `shapes` scenes: per cell of the 3 x 3 grid, object or not, and its shape, colour
and size (vdm.tasks.attribute_task); the evaluator of prompt accuracy (vdm.evaluation.prompt_accuracy).

Run: python -m vdm.main --config=configs/shapes_attributes.py --workdir=runs/shapes_attributes
Use: python -m vdm.tools.prompt_accuracy SAMPLES.npz --classifier=runs/shapes_attributes
Variant: `:small` is a smoke test (a narrow net, 20 steps). It trains through the same loop as the diffusion model
(checkpoints with resume, metrics.jsonl, TensorBoard); its evaluation, the prompt accuracy of real images with
their true captions (the ceiling of any model's), is written to WORKDIR/prompt_accuracy.json.
"""

import ml_collections

from vdm.infra.fileio import load_sibling  # configs/common.py, by its path next to this file

common = load_sibling(__file__, "common")
VARIANTS = ("small",)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config of the attribute classifier; arg: comma-separated variants from VARIANTS, or ''."""
    variants = common.parse_variants(arg, VARIANTS, "shapes_attributes")
    config = ml_collections.ConfigDict()
    config.task = "attribute_classifier"  # which model this trains (vdm.tasks.registry)
    config.seed = 0  # seeds params, train keys and the order of the data

    config.data = ml_collections.ConfigDict()  # the procedural scenes, with their ground-truth attributes
    config.data.dataset = "shapes"  # the only data set with per-object attributes
    config.data.data_dir = ""  # unused by 'shapes' (generated)
    config.data.random_flip = False  # refused for 'shapes' (it would swap left and right)
    config.data.num_train = 20000  # train split size (its (shape, colour) pairs exclude shapes.HELD_OUT)
    config.data.num_test = 2000  # test split size (each image holds one held-out pair)
    config.data.dim = 2  # unused (toy sets only)
    config.data.data_seed = 0  # seed of the generated data: as the diffusion model's, so its prompts are these
    config.data.encoding = "endpoints"  # 8-bit k -> k/127.5 - 1; samples are decoded with their own run's encoding

    # The evaluator must know every (shape, colour) pair, the held-out ones too: trained on the train split alone it
    # reads a blue circle as another shape (experiments/RESULTS.md). It never sees a test image.
    config.scenes = ml_collections.ConfigDict()  # what the classifier trains on
    config.scenes.recolour = True  # redraw each train object's colour uniformly (all pairs) and re-render the scene

    config.model = ml_collections.ConfigDict()  # vdm.models.attribute_classifier.AttributeClassifier
    config.model.width = 16  # channels of the first level (doubled per level)
    config.model.num_levels = 2  # levels of (conv, stride-2 conv): 32 -> 8 pixels
    config.model.hidden = 256  # units of the hidden Dense layer before the per-cell heads

    # The optimizer and the loop: configs/base.py's keys and values (configs/common.py), but for these.
    config.optimizer = common.optimizer(
        learning_rate=2e-3,  # peak learning rate
        b2=0.999,  # Adam beta2
        weight_decay=1e-4,  # AdamW decoupled weight decay
        decay_mask="matrices",  # decayed: the network's kernels
        warmup_steps=100,  # linear warmup from 0
        grad_clip=1.0,  # global-norm clipping
        ema_decay=0.99,  # EMA params (evaluated and used to score samples)
    )
    config.training = common.training(
        num_steps=1000,  # optimizer steps
        batch_size=64,  # global batch (split over devices)
        eval_every=1000,  # prompt accuracy of real images (and at the end)
        checkpoint_every=500,  # checkpoint interval (and at the end)
        keep_checkpoints=2,  # keep the newest few
        log_every=100,  # train metrics every this many steps
    )

    config.eval = ml_collections.ConfigDict()  # the ceiling: prompt accuracy of real images, true captions
    config.eval.batch_size = 500  # images per evaluation batch (global)
    config.eval.num_train_examples = 2000  # the first this many train images are scored too (seen prompts)
    if "small" in variants:  # configs/common.py's smoke test (20 steps), a narrow net
        common.small(config, {"model.width": 4, "model.hidden": 16, "eval.batch_size": 200,
                              "eval.num_train_examples": 200, "data.num_train": 500, "data.num_test": 200})  # fmt: skip
    return config
