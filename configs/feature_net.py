"""The feature network for sample quality: a small convnet classifier of clean Fashion-MNIST images.

Trained once (about 2 min on 2 CPU cores, seconds on a GPU) to a cached checkpoint, then reused by
experiments/compare_objectives.py for Fréchet distances between the features of samples and of
the test set (not Inception FID; see vdm/evaluation/feature_metrics.py). It trains through the same loop as the
diffusion model (vdm/tasks/loop.py): orbax checkpoints with resume, metrics.jsonl, TensorBoard.

Run:
    python experiments/feature_net.py --config=configs/feature_net.py --workdir=experiments/results/feature_net
Variant `configs/feature_net.py:small`: a few steps of a narrow net (smoke tests).
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config of the feature classifier; arg in ('', 'small')."""
    if arg not in ("", "small"):
        raise ValueError(f"unknown feature_net variant {arg!r}; choose '' or 'small'.")
    config = ml_collections.ConfigDict()
    config.seed = 0  # seeds the params, dropout and the order of the data

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "fashion_mnist"  # image data set of the diffusion runs (fashion_mnist, mnist)
    config.data.data_dir = ""  # TFDS data_dir; '': $TFDS_DATA_DIR or ~/tensorflow_datasets
    config.data.encoding = "endpoints"  # 8-bit k -> k/127.5 - 1 (grid ends at +-1); "bin_centres": (k + 0.5)/128 - 1

    config.model = ml_collections.ConfigDict()
    config.model.widths = (32, 64)  # conv channels per level (two 3x3 convs, then 2x2 max-pool)
    config.model.feature_dim = 128  # width of the penultimate layer: the features for the distance
    config.model.dropout = 0.3  # dropout before the logits (training only)

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 2e-3  # peak AdamW learning rate
    config.optimizer.b1 = 0.9  # Adam beta1
    config.optimizer.b2 = 0.999  # Adam beta2
    config.optimizer.eps = 1e-8  # Adam epsilon
    config.optimizer.weight_decay = 1e-4  # AdamW decoupled weight decay (see decay_mask)
    config.optimizer.decay_mask = "all"  # decayed: 'matrices' (network kernels), 'non_bias', 'all'
    config.optimizer.warmup_steps = 200  # linear warmup from 0
    config.optimizer.decay = "cosine"  # cosine to 0 at num_steps ('constant': no decay)
    config.optimizer.grad_clip = 0.0  # global-norm clipping (0: off)
    config.optimizer.ema_decay = 0.0  # 0: the EMA params are the params (used for eval and features)

    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 4000  # optimizer steps (about 8.5 epochs at batch 128)
    config.training.batch_size = 128  # global batch (split over devices)
    config.training.eval_every = 1000  # test accuracy every this many steps (and at the end)
    config.training.checkpoint_every = 1000  # checkpoint interval (and at the end)
    config.training.keep_checkpoints = 1  # keep the newest few
    config.training.log_every = 500  # train loss and accuracy every this many steps
    config.training.steps_per_call = 1  # steps per device call (lax.scan); divides the intervals
    config.training.nan_policy = "stop"  # non-finite loss: stop (raise) or skip the update

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000  # global batch for test accuracy and feature extraction

    if arg == "small":
        config.model.widths = (8, 16)
        config.model.feature_dim = 32
        config.optimizer.warmup_steps = 10
        config.training.num_steps = 100
        config.training.batch_size = 64
        config.training.eval_every = 100
        config.training.checkpoint_every = 100
        config.training.log_every = 50
        config.eval.batch_size = 256
    return config
