"""DEFAULT experiment: Fashion-MNIST 28x28x1 with a small VDM UNet, sized for ~20 minutes on 2 shared CPU cores.

Run (what `make train` runs, after `make data`):
    python -m vdm.main --config=configs/fashion_mnist.py --workdir=workdir/fashion_mnist
About 11-20 minutes of training (by the machine's load), then the true ELBO in bits/dim over all 10,000 test images with the
EMA params, and a grid of samples. A rerun in the same workdir resumes from its checkpoints.
Variants (the config argument, comma-separated): `:small` (a smoke test: 20 steps, 1-3.5 minutes, most of it the full-test-set eval), `:mnist`
(the same settings on MNIST digits; prepare once with `python -m vdm.data prepare --dataset=mnist`),
`:mnist,small`.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config for Fashion-MNIST; arg: comma-separated variants from ('small', 'mnist'), or ''."""
    variants = set(filter(None, arg.split(",")))
    if not variants <= {"small", "mnist"}:
        raise ValueError(f"unknown fashion_mnist variant(s) {sorted(variants - {'small', 'mnist'})} in {arg!r}; "
                         "choose from 'small', 'mnist' (comma-separated), or ''.")
    config = ml_collections.ConfigDict()
    config.seed = 0  # seeds params, train keys and the order of the data

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "fashion_mnist"  # TFDS name, prepared once with `make data`
    config.data.data_dir = ""              # TFDS data_dir; "": $TFDS_DATA_DIR, else ~/tensorflow_datasets
    config.data.random_flip = False        # no augmentation: likelihoods are reported without it
    config.data.encoding = "endpoints"    # 8-bit k -> k/127.5 - 1 (grid ends at +-1); "bin_centres": (k + 0.5)/128 - 1

    config.model = ml_collections.ConfigDict()
    config.model.name = "vdm_unet"         # VDM's UNet: no downsampling, Fourier features
    config.model.width = 16                # channels of every ResNet block
    config.model.num_layers = 2            # ResNet blocks on the way down (up: num_layers + 1)
    config.model.num_heads = 1             # heads of the middle self-attention
    config.model.dropout = 0.0             # no dropout: far from overfitting in this budget
    config.model.fourier_features = True   # sin/cos(2^n 2pi z) inputs resolve the 8-bit grid (VDM)
    config.model.fourier_min = 6           # lowest Fourier exponent n
    config.model.fourier_max = 7           # highest Fourier exponent n
    config.model.embedding_freqs = "half"     # timestep-embedding frequencies 10000^(-k/half); 'half_minus_one': 10000^(-k/(half-1)) (google-research/vdm)
    config.model.norm_groups = 0              # GroupNorm groups; 0: adaptive (<= 32, >= 2 channels each); the reference: 32
    config.model.residual_output = False      # True: the net returns z + h (the reference's eps = z + net)
    config.model.cond_proj_bias = True        # bias on each ResNet block's noise-embedding projection (reference: none)
    config.model.cond_proj_zero_init = False  # zero-init that projection (reference: zeros)
    config.model.scan_blocks = False          # run the down/up ResNet blocks under nn.scan: compile time flat in depth
    config.model.remat = False                # recompute each ResNet block's activations in the backward pass (saves memory)
    config.model.num_classes = 0           # 0: unconditional; 10 for class-conditional
    config.model.label_dropout = 0.0       # P(label -> null class) in training (classifier-free guidance)
    config.model.gamma_min = -13.3         # gamma(0) = -log SNR at t=0 (VDM)
    config.model.gamma_max = 5.0           # gamma(1)
    config.model.parameterization = "eps"  # how the net output is read: eps, x0, score, v
    config.model.schedule = "linear_logsnr"  # linear_logsnr, cosine, ddpm_linear, learned, learned_linear
    config.model.learn_endpoints = False   # learned schedule: learn gamma_min/gamma_max too
    config.model.decoder = 'categorical'  # TEMP

    config.loss = ml_collections.ConfigDict()
    config.loss.weighting = "elbo"   # elbo, simple, snr, min_snr, sigmoid, edm
    config.loss.antithetic = True    # low-discrepancy t sampling over the batch (VDM)
    config.loss.sigmoid_bias = -2.0  # TEMP
    config.loss.min_snr_gamma = 5.0
    config.loss.edm_p_mean = -1.2
    config.loss.edm_p_std = 1.2
    config.loss.edm_sigma_data = 0.5

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 2e-3  # peak learning rate (a small net takes a large one)
    config.optimizer.b1 = 0.9              # Adam beta1
    config.optimizer.b2 = 0.99             # Adam beta2 (VDM)
    config.optimizer.eps = 1e-8            # Adam epsilon
    config.optimizer.weight_decay = 0.01   # AdamW decoupled weight decay (see decay_mask)
    config.optimizer.decay_mask = "matrices"  # decayed: 'matrices' (network kernels), 'non_bias', 'all'
    config.optimizer.warmup_steps = 100    # linear warmup from 0
    config.optimizer.decay = "cosine"      # cosine to 0 at num_steps: the short run ends annealed
    config.optimizer.grad_clip = 1.0       # global-norm clipping (0: off)
    config.optimizer.ema_decay = 0.995     # EMA of the params (short run: short memory)

    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 1500         # optimizer steps (about 11 minutes on 2 CPU cores)
    config.training.batch_size = 32          # global batch (split over devices)
    config.training.eval_every = 1500        # full-test-set eval + samples (and at the end)
    config.training.checkpoint_every = 250   # checkpoint every this many steps (and at the end)
    config.training.keep_checkpoints = 3     # keep the newest few
    config.training.log_every = 50           # train metrics every this many steps
    config.training.steps_per_call = 1       # steps per device call (lax.scan); divides the intervals
    config.training.dtype = "float32"        # forward-pass compute dtype: float32 or bfloat16
    config.training.nan_policy = "stop"      # non-finite loss: stop (raise) or skip the update

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 200   # eval batch (global); the test split is covered exactly once
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
    config.sampling.num_steps = 100        # sampler steps
    config.sampling.num_samples = 36       # images per grid / .npz
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

    if "mnist" in variants:
        config.data.dataset = "mnist"      # MNIST digits, prepared once with `python -m vdm.data prepare`
    if "small" in variants:
        config.model.width = 8
        config.model.num_layers = 1
        config.model.fourier_features = False
        config.optimizer.warmup_steps = 5
        config.training.num_steps = 20
        config.training.batch_size = 16
        config.training.eval_every = 20
        config.training.checkpoint_every = 10
        config.training.log_every = 5
        config.eval.batch_size = 1000
        config.sampling.num_steps = 10
        config.sampling.num_samples = 16
    return config
