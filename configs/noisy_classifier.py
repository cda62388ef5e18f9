"""Noisy classifier p(y | z_t) for classifier guidance (Dhariwal & Nichol 2021).

Run: python -m vdm.main --config=configs/noisy_classifier.py --workdir=runs/noisy_classifier
Variants (comma-separated): `:toy2d` classifies the 2-D mixture's components (seconds on a CPU);
`:small` is a smoke test (a narrow net, 20 steps; composes: `:toy2d,small`).
Use: python -m vdm.main --config=configs/fashion_mnist.py --workdir=DIR --mode=sample \
         --classifier_workdir=runs/noisy_classifier --classifier_scale=2 --classifier_label=3
The schedule and gamma range must match the diffusion model's. It trains through the same loop
as the diffusion model (checkpoints with resume, metrics.jsonl, TensorBoard).
"""

import ml_collections

from vdm.infra.fileio import load_sibling  # configs/common.py, by its path next to this file

common = load_sibling(__file__, "common")
VARIANTS = ("toy2d", "small")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config of the noisy classifier; arg: comma-separated variants from VARIANTS, or ''."""
    variants = common.parse_variants(arg, VARIANTS, "noisy_classifier")
    toy = "toy2d" in variants
    config = ml_collections.ConfigDict()
    config.task = "classifier"  # which model this trains (vdm.tasks.registry)
    config.seed = 0  # seeds params, train keys and the order of the data

    config.data = ml_collections.ConfigDict()  # the labelled data
    config.data.dataset = "mixture2d" if toy else "fashion_mnist"  # data with class labels
    config.data.data_dir = ""  # TFDS data_dir ("": default)
    config.data.random_flip = False  # images only
    config.data.num_train = 20000  # toy sets only: train split size
    config.data.num_test = 2000  # toy sets only: test split size
    config.data.dim = 2  # toy sets only
    config.data.data_seed = 0  # toy sets only: seed of the generated data
    config.data.encoding = "endpoints"  # 8-bit k -> k/127.5 - 1 (grid ends at +-1); "bin_centres": (k + 0.5)/128 - 1

    config.model = ml_collections.ConfigDict()  # the classifier and the noise levels it is trained on
    config.model.width = 64 if toy else 32  # channels / hidden units
    config.model.num_layers = 2  # ResNet blocks (images) or residual MLP blocks (flat data)
    config.model.schedule = "linear_logsnr" if toy else "cosine"  # must match the diffusion model's
    config.model.gamma_min = -10.0 if toy else -13.3  # as configs/toy2d.py / fashion_mnist.py
    config.model.gamma_max = 6.0 if toy else 5.0  # gamma(1): the diffusion model's too

    # The optimizer and the loop: configs/base.py's keys and values (configs/common.py), but for these.
    config.optimizer = common.optimizer(  # AdamW, its schedule, clipping and EMA
        learning_rate=1e-3,  # peak learning rate
        b2=0.999,  # Adam beta2
        weight_decay=1e-4,  # AdamW decoupled weight decay, on every param (decay_mask)
        decay_mask="all",  # decayed: 'matrices' (network kernels), 'non_bias', 'all'
        warmup_steps=61 if toy else 100,  # linear warmup from 0
        grad_clip=0.0,  # no global-norm clipping
        ema_decay=0.0,  # 0: the EMA params are the params (used for eval and guidance)
    )
    config.training = common.training(  # the loop's steps and intervals
        num_steps=600 if toy else 3000,  # optimizer steps
        batch_size=256 if toy else 64,  # global batch (split over devices)
        eval_every=600 if toy else 3000,  # test accuracy at t = 0.1, 0.5, 0.9 (and at the end)
        checkpoint_every=300 if toy else 1000,  # checkpoint interval (and at the end)
        keep_checkpoints=2,  # keep the newest few
        log_every=100,  # train metrics every this many steps
    )

    config.eval = ml_collections.ConfigDict()  # its test accuracies
    config.eval.batch_size = 1000 if toy else 500  # test batch for the accuracies (global)
    if "small" in variants:  # configs/common.py's smoke test (20 steps), a narrow net
        common.small(config, {"model.width": 8, "model.num_layers": 1})
    return config
