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


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config of the noisy classifier; arg: comma-separated variants from ('toy2d', 'small'), or ''."""
    variants = set(filter(None, arg.split(",")))
    if not variants <= {"toy2d", "small"}:
        raise ValueError(f"unknown noisy_classifier variant(s) {sorted(variants - {'toy2d', 'small'})} in {arg!r}; "
                         "choose from 'toy2d', 'small' (comma-separated), or ''.")
    toy = "toy2d" in variants
    config = ml_collections.ConfigDict()
    config.task = "classifier"  # which model this trains (vdm.tasks.registry)
    config.seed = 0  # seeds params, train keys and the order of the data

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "mixture2d" if toy else "fashion_mnist"   # data with class labels
    config.data.data_dir = ""             # TFDS data_dir ("": default)
    config.data.random_flip = False       # images only
    config.data.num_train = 20000         # toy sets only: train split size
    config.data.num_test = 2000           # toy sets only: test split size
    config.data.dim = 2                   # toy sets only
    config.data.data_seed = 0             # toy sets only: seed of the generated data
    config.data.encoding = "endpoints"    # 8-bit k -> k/127.5 - 1 (grid ends at +-1); "bin_centres": (k + 0.5)/128 - 1

    config.model = ml_collections.ConfigDict()
    config.model.width = 64 if toy else 32   # channels / hidden units
    config.model.num_layers = 2           # ResNet blocks (images) or residual MLP blocks (flat data)
    config.model.schedule = "linear_logsnr"  # must match the diffusion model's
    config.model.gamma_min = -10.0 if toy else -13.3   # as configs/toy2d.py / fashion_mnist.py
    config.model.gamma_max = 6.0 if toy else 5.0

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 1e-3  # peak learning rate
    config.optimizer.b1 = 0.9              # Adam beta1
    config.optimizer.b2 = 0.999            # Adam beta2
    config.optimizer.eps = 1e-8            # Adam epsilon
    config.optimizer.weight_decay = 1e-4   # AdamW decoupled weight decay (see decay_mask)
    config.optimizer.decay_mask = "all"    # decayed: 'matrices' (network kernels), 'non_bias', 'all'
    config.optimizer.warmup_steps = 61 if toy else 100   # linear warmup from 0
    config.optimizer.decay = "cosine"      # cosine to 0 at num_steps
    config.optimizer.grad_clip = 0.0       # global-norm clipping (0: off)
    config.optimizer.ema_decay = 0.0       # 0: the EMA params are the params (used for eval and guidance)

    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 600 if toy else 3000   # optimizer steps
    config.training.batch_size = 256 if toy else 64    # global batch (split over devices)
    config.training.eval_every = 600 if toy else 3000  # test accuracy at t = 0.1, 0.5, 0.9 (and at the end)
    config.training.checkpoint_every = 300 if toy else 1000   # checkpoint interval (and at the end)
    config.training.keep_checkpoints = 2   # keep the newest few
    config.training.log_every = 100        # train metrics every this many steps
    config.training.steps_per_call = 1     # steps per device call (lax.scan); divides the intervals
    config.training.nan_policy = "stop"    # non-finite loss: stop (raise) or skip the update

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000 if toy else 500   # test batch for the accuracies (global)
    if "small" in variants:
        config.model.width = 8
        config.model.num_layers = 1
        config.optimizer.warmup_steps = 5
        config.training.num_steps = 20
        config.training.batch_size = 16
        config.training.eval_every = 20
        config.training.checkpoint_every = 10
        config.training.log_every = 5
    return config
