"""Noisy classifier p(y | z_t) for classifier guidance (Dhariwal & Nichol 2021).

Run: python -m vdm.train_classifier --config=configs/noisy_classifier.py --workdir=runs/noisy_classifier
Variant `:toy2d` classifies the 2-D mixture's components (seconds on a CPU).
Use: python -m vdm.main --config=configs/fashion_mnist.py --workdir=DIR --mode=sample \
         --classifier_workdir=runs/noisy_classifier --classifier_scale=2 --classifier_label=3
The schedule and gamma range must match the diffusion model's.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config of the noisy classifier; arg in ('', 'toy2d')."""
    if arg not in ("", "toy2d"):
        raise ValueError(f"unknown noisy_classifier variant {arg!r}; choose '' or 'toy2d'.")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict()
    config.data.dataset = "fashion_mnist" if not arg else "mixture2d"   # data with class labels
    config.data.data_dir = ""             # TFDS data_dir ("": default)
    config.data.random_flip = False
    config.data.num_train = 20000         # toy sets only
    config.data.num_test = 2000           # toy sets only
    config.data.dim = 2                   # toy sets only
    config.data.data_seed = 0             # toy sets only
    config.data.encoding = "endpoints"    # 8-bit k -> k/127.5 - 1 (grid ends at +-1); "bin_centres": (k + 0.5)/128 - 1
    config.model = ml_collections.ConfigDict()
    config.model.width = 32 if not arg else 64   # channels / hidden units
    config.model.num_layers = 2           # ResNet blocks (images) or residual MLP blocks (flat data)
    config.model.schedule = "linear_logsnr"  # must match the diffusion model's
    config.model.gamma_min = -13.3 if not arg else -10.0   # as configs/fashion_mnist.py / toy2d.py
    config.model.gamma_max = 5.0 if not arg else 6.0
    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 3000 if not arg else 600
    config.training.batch_size = 64 if not arg else 256
    config.training.learning_rate = 1e-3
    return config
