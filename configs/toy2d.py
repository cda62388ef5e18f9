"""Toy 2-D data with a residual MLP denoiser: seconds per run, for objective comparisons and tests.

Run:
    python -m vdm.main --config=configs/toy2d.py --workdir=workdir/toy2d
Below: what differs from configs/base.py's 'toy' kind (every key and its meaning).
Variants (config arg): `configs/toy2d.py:grid` (8-bit 2-D grid, discrete decoder),
`configs/toy2d.py:gaussian` (Gaussian data with a known NLL), `configs/toy2d.py:small`
(a few steps, for smoke tests).
"""

import ml_collections

from vdm.infra.fileio import load_sibling  # configs/base.py, by its path next to this file


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config for 2-D toy data; arg in ('', 'grid', 'gaussian', 'small')."""
    if arg not in ("", "grid", "gaussian", "small"):
        raise ValueError(f"unknown toy2d variant {arg!r}; choose '', 'grid', 'gaussian' or 'small'.")
    config = load_sibling(__file__, "base").get_config("toy")
    config.data.dataset = {"grid": "grid8bit2d", "gaussian": "gaussian"}.get(arg, "mixture2d")  # toy set

    config.model.width = 128  # hidden width
    config.model.num_layers = 3  # residual blocks
    config.model.fourier_features = False  # continuous data: no Fourier features
    config.model.gamma_min = -10.0  # gamma(0) = -log SNR at t=0 (also the net's input rescaling)
    config.model.gamma_max = 6.0  # gamma(1)
    config.model.decoder = "gaussian"  # continuous data: p(x | z_0) Gaussian

    config.optimizer.learning_rate = 2e-3  # peak learning rate
    config.optimizer.weight_decay = 0.0  # no weight decay
    config.optimizer.ema_decay = 0.99  # EMA of the params, used for eval and sampling

    config.training.num_steps = 3000  # optimizer steps
    config.training.batch_size = 256  # global batch (split over devices)
    config.training.eval_every = 1000  # eval + samples every this many steps (and at the end)
    config.training.checkpoint_every = 1000  # checkpoint every this many steps (and at the end)
    config.training.log_every = 100  # train metrics every this many steps

    config.eval.batch_size = 1000  # eval batch (global)
    config.sampling.num_steps = 200  # sampler steps
    config.sampling.num_samples = 2000  # samples per grid / .npz

    if arg == "grid":
        config.model.fourier_features = True
        config.model.decoder = "categorical"  # 8-bit data: the 256-way decoder
    if arg == "gaussian":
        config.data.dim = 8
    if arg == "small":
        config.model.width = 32
        config.model.num_layers = 1
        config.data.num_train = 1024
        config.data.num_test = 512
        config.optimizer.warmup_steps = 2
        config.training.num_steps = 4
        config.training.batch_size = 32
        config.training.eval_every = 4
        config.training.checkpoint_every = 2
        config.training.log_every = 1
        config.eval.batch_size = 256
        config.sampling.num_steps = 10
        config.sampling.num_samples = 64
    return config
