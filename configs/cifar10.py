"""CIFAR-10 32x32x3 with the VDM paper's settings (Kingma et al. 2021, appendix B): a GPU/TPU run.

Run (prepare the data once: `python -m vdm.data prepare --dataset=cifar10`):
    python -m vdm.main --config=configs/cifar10.py --workdir=workdir/cifar10
Paper settings: VDM UNet of width 128 with 32 ResNet blocks each way and no downsampling,
dropout 0.1, Fourier features n = 6..7, gamma in [-13.3, 5], AdamW lr 2e-4 (b2 0.99, weight
decay 0.01 on every non-bias param), warmup 100 steps, no clipping, batch 128, EMA 0.9999, continuous-time
ELBO with antithetic t sampling, learned linear log-SNR endpoints, 8-bit data at bin centres. The
network equals google-research/vdm's ScoreUNet as a function (tests/test_paper_model.py).
Variants: `configs/cifar10.py:learned` (VDM's learned schedule with learned endpoints),
`configs/cifar10.py:small` (a tiny network and a few steps, to check the pipeline on a laptop).
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config for CIFAR-10; arg in ('', 'learned', 'small')."""
    if arg not in ("", "learned", "small"):
        raise ValueError(f"unknown cifar10 variant {arg!r}; choose '', 'learned' or 'small'.")
    config = ml_collections.ConfigDict()
    config.seed = 0  # seeds params, train keys and the order of the data

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "cifar10"   # TFDS name
    config.data.data_dir = ""         # TFDS data_dir; "": $TFDS_DATA_DIR, else ~/tensorflow_datasets
    config.data.random_flip = False   # no augmentation: likelihoods are reported without it
    # Bin centres, as google-research/vdm encodes (x + 0.5)/256*2 - 1: the decoder grid and bin width
    # (2/256) follow. Either grid gives exact discrete likelihoods; this one matches the reference.
    config.data.encoding = "bin_centres"  # 8-bit k -> (k + 0.5)/128 - 1 (reference); "endpoints": k/127.5 - 1

    config.model = ml_collections.ConfigDict()
    config.model.name = "vdm_unet"         # VDM's UNet: no downsampling, Fourier features
    config.model.width = 128               # channels of every ResNet block (paper: 128)
    config.model.num_layers = 32           # ResNet blocks on the way down (paper: 32)
    config.model.num_heads = 1             # heads of the middle self-attention
    config.model.dropout = 0.1             # dropout in the ResNet blocks (paper: 0.1)
    config.model.fourier_features = True   # sin/cos(2^n 2pi z) inputs (paper: on)
    config.model.fourier_min = 6           # lowest Fourier exponent n (paper: 6)
    config.model.fourier_max = 7           # highest Fourier exponent n (paper: 7)
    # The next five keys make vdm_unet equal google-research/vdm's ScoreUNet as a function
    # (model_vdm.py; tests/test_paper_model.py checks it against an independent restatement).
    config.model.embedding_freqs = "half_minus_one"  # sinusoid frequencies 10000^(-k/(half-1)) (reference: get_timestep_embedding)
    config.model.norm_groups = 32             # GroupNorm with 32 groups everywhere (reference: flax GroupNorm default 32)
    config.model.residual_output = True       # eps prediction = z + net(z) (reference: `eps_pred += z`)
    config.model.cond_proj_bias = False       # no bias on the blocks' embedding projection (reference: use_bias=False)
    config.model.cond_proj_zero_init = True   # that projection starts at zero (reference: kernel_init zeros)
    config.model.scan_blocks = True           # down/up blocks under nn.scan: compile time flat in depth (same function)
    config.model.remat = False                # recompute each ResNet block in the backward pass (saves memory)
    config.model.num_classes = 0           # 0: unconditional; 10 for class-conditional
    config.model.label_dropout = 0.0       # P(label -> null class) in training (classifier-free guidance)
    config.model.gamma_min = -13.3         # gamma(0) = -log SNR at t=0 (paper: -13.3)
    config.model.gamma_max = 5.0           # gamma(1) (paper: 5)
    config.model.parameterization = "eps"  # how the net output is read: eps, x0, score, v
    config.model.schedule = "learned_linear"  # gamma = b + |w| t, b and w learned (reference: gamma_type learnable_scalar)
    config.model.learn_endpoints = False   # learned schedule: learn gamma_min/gamma_max too
    config.model.decoder = 'categorical'  # TEMP

    config.loss = ml_collections.ConfigDict()
    config.loss.weighting = "elbo"   # elbo, simple, snr, min_snr, sigmoid, edm
    config.loss.antithetic = True    # low-discrepancy t sampling over the batch (paper)
    config.loss.sigmoid_bias = -2.0  # TEMP
    config.loss.min_snr_gamma = 5.0
    config.loss.edm_p_mean = -1.2
    config.loss.edm_p_std = 1.2
    config.loss.edm_sigma_data = 0.5

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 2e-4  # peak learning rate (paper: 2e-4)
    config.optimizer.b1 = 0.9              # Adam beta1 (reference: 0.9)
    config.optimizer.b2 = 0.99             # Adam beta2 (paper: 0.99)
    config.optimizer.eps = 1e-8            # Adam epsilon (reference: 1e-8)
    config.optimizer.weight_decay = 0.01   # AdamW decoupled weight decay (reference: 0.01)
    config.optimizer.decay_mask = "non_bias"  # decay every param not named 'bias' (reference: path[-1] != "bias", norm scales and schedule w, b included)
    config.optimizer.warmup_steps = 100    # linear warmup from 0 (reference: num_steps_lr_warmup 100)
    config.optimizer.decay = "constant"    # constant after warmup (reference: lr_decay False)
    config.optimizer.grad_clip = 0.0       # global-norm clipping, 0: off (reference: no gradient_clip_norm key, no clipping)
    config.optimizer.ema_decay = 0.9999    # EMA of the params (reference: ema_rate 0.9999)

    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 2_000_000      # optimizer steps (reference: num_steps_train 10_000_000)
    config.training.batch_size = 128           # global batch (paper: 128), split over devices
    config.training.eval_every = 50_000        # full-test-set eval + samples (and at the end)
    config.training.checkpoint_every = 10_000  # checkpoint every this many steps (and at the end)
    config.training.keep_checkpoints = 3       # keep the newest few
    config.training.log_every = 1000           # train metrics every this many steps
    config.training.steps_per_call = 10        # steps per device call (lax.scan); divides the intervals
    config.training.dtype = "float32"          # forward-pass compute dtype: float32 or bfloat16
    config.training.nan_policy = "stop"        # non-finite loss: stop (raise) or skip the update

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 512   # eval batch (global); the test split is covered exactly once
    config.eval.num_steps = 0      # ELBO time steps: 0 continuous, else discrete T
    config.eval.method = "elbo"    # --mode=eval: 'elbo' (-ELBO bits/dim) or 'ode' (probability-flow ODE bits/dim)
    config.eval.ode_steps = 64     # 'ode': RK4 steps, uniform in log-SNR (4 network evaluations each)
    config.eval.ode_probes = 1     # 'ode': Hutchinson probes per example for the divergence
    config.eval.max_examples = 0   # evaluate only the first N test examples, both methods (0: the whole split)
    config.eval.fid_samples = 0    # --mode=sample: Inception FID/KID of this many samples (0: none; images only)
    config.eval.fid_reference = "train"   # ... against this split's cached Inception statistics: 'train' or 'test'
    config.eval.fid_reference_examples = 0   # ... its first N examples (0: the whole split; computed once, cached)

    config.sampling = ml_collections.ConfigDict()
    config.sampling.method = "ancestral"   # ancestral, ddim, sde, ode, pc, dpm_solver
    config.sampling.num_steps = 1000       # sampler steps
    config.sampling.num_samples = 64       # images per grid / .npz
    config.sampling.batch_size = 500      # samples per sampler call (bounds memory); 0: all at once
    config.sampling.guidance_weight = 0.0  # classifier-free guidance w (conditional models)
    config.sampling.class_label = -1       # class to sample; -1: cycle through the classes
    config.sampling.grid = ""              # time grid: '' (the method's default), uniform_t, uniform_logsnr, edm
    config.sampling.rho = 7.0              # grid='edm': the rho of Karras et al. 2022
    config.sampling.t_min = 0.0            # the grid runs from t_max down to t_min
    config.sampling.t_max = 1.0            # ... from t_max (1: pure noise)
    config.sampling.clip_x0 = False        # clip the x0 prediction to [-1, 1] in every step
    config.sampling.dynamic_threshold = 0.0  # Imagen's dynamic thresholding percentile p in (0, 1]; 0: off
    config.sampling.final_denoise = True   # end with x0_hat(z_tmin) (else z_tmin / alpha_tmin)
    config.sampling.variance = "small"     # ancestral: 'small' (posterior) or 'large' (forward beta)
    config.sampling.eta = 0.0              # ddim: 0 deterministic, 1 the ancestral variance
    config.sampling.snr = 0.16             # pc: Langevin signal-to-noise ratio (score_sde)
    config.sampling.corrector_steps = 1    # pc: corrector moves per step
    config.sampling.order = 2              # dpm_solver: order 1, 2 or 3
    config.sampling.prediction = "x0"      # dpm_solver: 'x0' (DPM-Solver++) or 'eps'
    config.sampling.lower_order_final = True  # dpm_solver: lower the order of the last steps when steps < 15

    config.guidance = ml_collections.ConfigDict()   # classifier guidance at --mode=sample (Dhariwal & Nichol 2021)
    config.guidance.classifier_workdir = ""  # a noisy classifier from vdm.train_classifier; '': no guidance
    config.guidance.classifier_scale = 1.0   # s in eps - s sigma grad log p(y | z_t)
    config.guidance.classifier_label = -1    # class to guide toward; -1: each class in turn

    if arg == "learned":
        config.model.schedule = "learned"
        config.model.learn_endpoints = True
    if arg == "small":
        config.model.width = 16
        config.model.num_layers = 2
        config.model.norm_groups = 0   # 32 groups need >= 64 channels (2 per group); adaptive at width 16
        config.model.dropout = 0.0
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
