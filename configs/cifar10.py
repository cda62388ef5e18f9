"""CIFAR-10 32x32x3 with the VDM paper's settings (Kingma et al. 2021, appendix B): a GPU/TPU run.

Run (prepare the data once: `python -m vdm.tools.prepare_data --dataset=cifar10`):
    python -m vdm.main --config=configs/cifar10.py --workdir=workdir/cifar10
Paper settings: VDM UNet of width 128 with 32 ResNet blocks each way and no downsampling,
dropout 0.1, Fourier features n = 6..7, gamma in [-13.3, 5], AdamW lr 2e-4 (b2 0.99, weight
decay 0.01 on every non-bias param), warmup 100 steps, no clipping, batch 128, EMA 0.9999, continuous-time
ELBO with antithetic t sampling, learned linear log-SNR endpoints, 8-bit data at bin centres. The
network equals google-research/vdm's ScoreUNet as a function (tests/test_paper_model.py).
Below: what differs from configs/base.py (every key and its meaning); the paper values the base
shares (Adam b1/b2/eps, weight decay 0.01, warmup 100, gamma range, Fourier exponents 6..7, one
attention head, the continuous-time ELBO with antithetic t) are noted here, not repeated.
Variants (comma-separated): `configs/cifar10.py:learned` (VDM's learned schedule with learned endpoints),
`configs/cifar10.py:small` (a tiny network and a few steps, to check the pipeline on a laptop),
`configs/cifar10.py:dit` (the denoiser DiT-S/2 (Peebles & Xie 2023): width 384, 12 blocks of 6 heads on 2x2
patches, 256 tokens, blocks under nn.scan, no dropout, trained on the paper's objective and optimizer as above;
`:dit,small` shrinks it).
"""

import ml_collections

from vdm.infra.fileio import load_sibling  # configs/base.py and configs/common.py, by their paths next to this file

common = load_sibling(__file__, "common")
VARIANTS = ("learned", "small", "dit")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config for CIFAR-10; arg: comma-separated variants from VARIANTS, or ''."""
    variants = common.parse_variants(arg, VARIANTS, "cifar10")
    config = load_sibling(__file__, "base").get_config("image")
    config.data.dataset = "cifar10"  # TFDS name
    # Bin centres, as google-research/vdm encodes (x + 0.5)/256*2 - 1: the decoder grid and bin width
    # (2/256) follow. Either grid gives exact discrete likelihoods; this one matches the reference.
    config.data.encoding = "bin_centres"  # 8-bit k -> (k + 0.5)/128 - 1 (reference)

    config.model.name = "vdm_unet"  # VDM's UNet: no downsampling (paper)
    config.loss.weighting = "elbo"  # the continuous-time ELBO (paper)
    config.model.width = 128  # channels of every ResNet block (paper: 128)
    config.model.num_layers = 32  # ResNet blocks on the way down (paper: 32)
    config.model.dropout = 0.1  # dropout in the ResNet blocks (paper: 0.1)
    # The next five keys make vdm_unet equal google-research/vdm's ScoreUNet as a function
    # (model_vdm.py; tests/test_paper_model.py checks it against an independent restatement).
    config.model.embedding_freqs = "half_minus_one"  # 10000^(-k/(half-1)) (reference: get_timestep_embedding)
    config.model.norm_groups = 32  # GroupNorm with 32 groups everywhere (reference: flax GroupNorm default 32)
    config.model.residual_output = True  # eps prediction = z + net(z) (reference: `eps_pred += z`)
    config.model.cond_proj_bias = False  # no bias on the blocks' embedding projection (reference: use_bias=False)
    config.model.cond_proj_zero_init = True  # that projection starts at zero (reference: kernel_init zeros)
    config.model.scan_blocks = True  # down/up blocks under nn.scan: compile time flat in depth (same function)
    config.model.schedule = "learned_linear"  # gamma = b + |w| t, b, w learned (reference: gamma_type learnable_scalar)
    config.eval.t_sampling = "uniform"  # t ~ U(0, 1) per example, the reference's estimator (its loss at eval)

    config.optimizer.learning_rate = 2e-4  # peak learning rate (paper: 2e-4)
    config.optimizer.decay_mask = "non_bias"  # decay every param not named 'bias' (reference: path[-1] != "bias", norm scales and schedule w, b included)
    config.optimizer.decay = "constant"  # constant after warmup (reference: lr_decay False)
    config.optimizer.grad_clip = 0.0  # global-norm clipping, 0: off (reference: no gradient_clip_norm key, no clipping)
    config.optimizer.ema_decay = 0.9999  # EMA of the params (reference: ema_rate 0.9999)

    config.training.num_steps = 2_000_000  # optimizer steps (reference: num_steps_train 10_000_000)
    config.training.batch_size = 128  # global batch (paper: 128), split over devices
    config.training.eval_every = 50_000  # full-test-set eval + samples (and at the end)
    config.training.checkpoint_every = 10_000  # checkpoint every this many steps (and at the end)
    config.training.log_every = 1000  # train metrics every this many steps
    config.training.steps_per_call = 10  # steps per device call (lax.scan); divides the intervals

    config.eval.batch_size = 512  # eval batch (global); the test split is covered exactly once
    config.sampling.num_steps = 1000  # sampler steps
    config.sampling.num_samples = 64  # images per grid / .npz

    if "learned" in variants:
        config.model.schedule = "learned"
        config.model.learn_endpoints = True
    if "dit" in variants:  # DiT-S/2 (Peebles & Xie 2023, table 1) as the denoiser
        config.model.name = "dit"
        config.model.width = 384  # hidden size
        config.model.num_layers = 12  # blocks
        config.model.num_heads = 6  # heads
        config.model.patch_size = 2  # 32x32 -> 16x16 tokens
        config.model.dropout = 0.0  # DiT trains without dropout
    if "small" in variants:
        config.model.width = 16
        config.model.num_layers = 2
        config.model.norm_groups = 0  # 32 groups need >= 64 channels (2 per group); adaptive at width 16
        config.model.dropout = 0.0
        if "dit" in variants:
            config.model.num_heads = 2  # heads of 8 channels at width 16
        config.optimizer.warmup_steps = 5
        config.training.num_steps = 20
        config.training.batch_size = 16
        config.training.eval_every = 20
        config.training.checkpoint_every = 10
        config.training.log_every = 10
        config.training.steps_per_call = 1
        config.sampling.num_steps = 10
        config.sampling.num_samples = 16
    return config
