"""Toy 2-D data with a residual MLP denoiser: seconds per run, for objective comparisons and tests.

Run:
    python -m vdm.main --config=configs/toy2d.py --workdir=workdir/toy2d
Variants (config arg): `configs/toy2d.py:grid` (8-bit 2-D grid, discrete decoder),
`configs/toy2d.py:gaussian` (Gaussian data with a known NLL), `configs/toy2d.py:small`
(a few steps, for smoke tests).
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config for 2-D toy data; arg in ('', 'grid', 'gaussian', 'small')."""
    if arg not in ("", "grid", "gaussian", "small"):
        raise ValueError(f"unknown toy2d variant {arg!r}; choose '', 'grid', 'gaussian' or 'small'.")
    config = ml_collections.ConfigDict()
    config.seed = 0  # seeds params, train keys and the order of the data

    config.data = ml_collections.ConfigDict()
    config.data.dataset = {"grid": "grid8bit2d", "gaussian": "gaussian"}.get(arg, "mixture2d")  # toy set
    config.data.data_dir = ""     # unused by toy sets (TFDS data_dir for image sets)
    config.data.random_flip = False  # images only
    config.data.num_train = 20_000   # examples generated for the train split
    config.data.num_test = 5_000     # examples generated for the test split
    config.data.dim = 2              # 'gaussian': number of dimensions
    config.data.data_seed = 0        # seed of the generated data
    config.data.encoding = "endpoints"    # 8-bit k -> k/127.5 - 1 (grid ends at +-1); "bin_centres": (k + 0.5)/128 - 1

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"              # residual MLP for flat data [B, D]
    config.model.width = 128               # hidden width
    config.model.num_layers = 3            # residual blocks
    config.model.dropout = 0.0             # dropout inside the blocks
    config.model.fourier_features = False  # base-2 Fourier features of z (for 8-bit data)
    config.model.fourier_min = 6           # lowest Fourier exponent n (sin(2^n 2pi z))
    config.model.fourier_max = 7           # highest Fourier exponent
    config.model.num_classes = 0           # 0: unconditional; else the data's class count
    config.model.label_dropout = 0.0       # P(label -> null class) in training (classifier-free guidance)
    config.model.gamma_min = -10.0         # gamma(0) = -log SNR at t=0 (also the net's input rescaling)
    config.model.gamma_max = 6.0           # gamma(1)
    config.model.parameterization = "eps"  # how the net output is read: eps, x0, score, v
    config.model.schedule = "linear_logsnr"  # linear_logsnr, cosine, ddpm_linear, learned, learned_linear
    config.model.learn_endpoints = False   # learned schedule: learn gamma_min/gamma_max too
    config.model.decoder = 'categorical' if arg == 'grid' else 'gaussian'  # TEMP

    config.loss = ml_collections.ConfigDict()
    config.loss.weighting = "elbo"   # elbo, simple, snr, min_snr, sigmoid, edm
    config.loss.antithetic = True    # low-discrepancy t sampling over the batch (VDM)
    config.loss.sigmoid_bias = -2.0  # TEMP
    config.loss.min_snr_gamma = 5.0
    config.loss.edm_p_mean = -1.2
    config.loss.edm_p_std = 1.2
    config.loss.edm_sigma_data = 0.5

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 2e-3  # peak learning rate
    config.optimizer.b1 = 0.9              # Adam beta1
    config.optimizer.b2 = 0.99             # Adam beta2
    config.optimizer.eps = 1e-8            # Adam epsilon
    config.optimizer.weight_decay = 0.0    # AdamW decoupled weight decay (see decay_mask)
    config.optimizer.decay_mask = "matrices"  # decayed: 'matrices' (network kernels), 'non_bias', 'all'
    config.optimizer.warmup_steps = 100    # linear warmup from 0
    config.optimizer.decay = "cosine"      # after warmup: cosine to 0 at num_steps, or constant
    config.optimizer.grad_clip = 1.0       # global-norm clipping (0: off)
    config.optimizer.ema_decay = 0.99      # EMA of the params, used for eval and sampling

    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 3000         # optimizer steps
    config.training.batch_size = 256         # global batch (split over devices)
    config.training.eval_every = 1000        # eval + samples every this many steps (and at the end)
    config.training.checkpoint_every = 1000  # checkpoint every this many steps (and at the end)
    config.training.keep_checkpoints = 3     # keep the newest few
    config.training.log_every = 100          # train metrics every this many steps
    config.training.steps_per_call = 1       # steps per device call (lax.scan); divides the intervals
    config.training.dtype = "float32"        # forward-pass compute dtype: float32 or bfloat16
    config.training.nan_policy = "stop"      # non-finite loss: stop (raise) or skip the update

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000  # eval batch (global)
    config.eval.num_steps = 0      # ELBO time steps: 0 continuous, else discrete T
    config.eval.method = "elbo"    # --mode=eval: 'elbo' (-ELBO bits/dim) or 'ode' (probability-flow ODE bits/dim)
    config.eval.ode_steps = 64     # 'ode': RK4 steps, uniform in log-SNR (4 network evaluations each)
    config.eval.ode_probes = 1     # 'ode': Hutchinson probes per example for the divergence
    config.eval.max_examples = 0   # evaluate only the first N test examples, both methods (0: the whole split)
    config.eval.fid_samples = 0    # --mode=sample: Inception FID/KID of this many samples (0: none; images only)
    config.eval.fid_reference = "train"   # ... against this split's cached Inception statistics: 'train' or 'test'
    config.eval.fid_reference_examples = 0   # ... its first N examples (0: the whole split; computed once, cached)

    config.sampling = ml_collections.ConfigDict()
    config.sampling.method = "ancestral"  # ancestral, ddim, sde, ode, pc, dpm_solver
    config.sampling.num_steps = 200       # sampler steps
    config.sampling.num_samples = 2000    # samples per grid / .npz
    config.sampling.batch_size = 500      # samples per sampler call (bounds memory); 0: all at once
    config.sampling.guidance_weight = 0.0  # classifier-free guidance w (conditional models)
    config.sampling.class_label = -1      # class to sample; -1: cycle through the classes
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

    if arg == "grid":
        config.model.fourier_features = True
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
