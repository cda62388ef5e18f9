"""Every key of a diffusion experiment, once, with its meaning: the experiment configs start from here.

Not run by itself: configs/fashion_mnist.py (the default experiment) is this config as it is,
configs/cifar10.py and configs/toy2d.py state only what they change. `get_config('image')` holds
the keys of image data and the two UNets; `get_config('toy')` those of generated flat data and
the MLP. The values are the default experiment's (Fashion-MNIST 28x28x1, a small multi-resolution UNet trained with L_simple, sized for
2 CPU cores; its measured time, bits/dim and FID are in experiments/RESULTS.md, section 9).

Sampler options (config.sampling, after `class_label`): None means the method's default
(vdm.sampling.SAMPLERS); a config or a flag names only the options it changes, e.g.
`--config.sampling.method=ddim --config.sampling.eta=0.5`. The run records them resolved (the
method's defaults filled in) in workdir/config.json (vdm.config.validation.resolve).

Derived configs load this file by its path, next to their own (`_base()` in each), not as the
module `configs.base`: they load from any working directory, without the repository on sys.path.
"""

import ml_collections
from ml_collections import config_dict

KINDS = ("image", "toy")


def get_config(kind: str = "image") -> ml_collections.ConfigDict:
    """Every key of a diffusion experiment; kind 'image' (TFDS images, the UNets) or 'toy' (generated flat data, MLP)."""
    if kind not in KINDS:
        raise ValueError(f"unknown base config kind {kind!r}; choose one of {KINDS}.")
    config = ml_collections.ConfigDict()
    config.task = "diffusion"  # which model this trains (vdm.tasks.registry): diffusion | latent_diffusion | autoencoder | classifier
    config.seed = 0  # seeds params, train keys and the order of the data
    config.data = _data(kind)
    config.model = _model(kind)
    config.model.input_scaling = "none"  # the net's input: z, or 'ot': z / (alpha + sigma), the OT path's z
    config.model.schedule_shift = 1.0  # gamma(t) + 2 log(shift): resolution shift (simple diffusion, SD3)
    #   (model.parameterization also takes 'flow' = eps - x, model.schedule 'ot': docs/objectives.md)

    config.loss = ml_collections.ConfigDict()
    config.loss.objective = "weighted"  # 'weighted': the weighting's loss; 'hybrid': + hybrid_lambda L_vlb, learned variance (improved DDPM)
    # elbo, simple, snr, min_snr, sigmoid, edm, flow, eps_cosine, v_cosine (hybrid: its mean part). Images: L_simple,
    # for samples (eval still reports the test ELBO); flat toy data: the ELBO
    weighting = "simple" if kind == "image" else "elbo"
    config.loss.weighting = weighting  # (see above)
    config.loss.num_steps = 0  # training time steps: 0 continuous; T > 0 the T-step model, t on i/T (hybrid needs it)
    config.loss.hybrid_lambda = 0.001  # 'hybrid': L_simple + lambda L_vlb (Nichol & Dhariwal 2021, sec. 3.1)
    config.loss.hybrid_units = "bits"  # ... L_vlb in bits, as improved-diffusion ('nats': runs before the fix)
    config.loss.t_sampling = "antithetic"  # t per example: uniform, antithetic (VDM), adaptive (VDM++),
    #   logit_normal (SD3: t = sigmoid(N(m, s^2)), antithetic draws through its inverse CDF; changes the objective)
    config.loss.logit_normal_mean = 0.0  # 'logit_normal': m (Esser et al. 2024, sec. 3.1)
    config.loss.logit_normal_std = 1.0  # ... s
    config.loss.adaptive_bins = 100  # 'adaptive': histogram bins of lambda = log SNR over [-gamma_max, -gamma_min]
    config.loss.adaptive_decay = 0.99  # ... its moving average per step
    config.loss.adaptive_uniform = 0.1  # ... mixed with this much uniform mass, so p(lambda) > 0 everywhere
    config.loss.sigmoid_bias = -2.0  # weighting 'sigmoid': w = sigmoid(b - lambda), lambda log SNR (Kingma & Gao 2023)
    config.loss.min_snr_gamma = 5.0  # weighting 'min_snr': w = min(SNR, gamma) / SNR (Hang et al. 2023)
    config.loss.edm_p_mean = -1.2  # weighting 'edm': log sigma ~ N(P_mean, P_std^2) (Karras et al. 2022)
    config.loss.edm_p_std = 1.2  # ... P_std
    config.loss.edm_sigma_data = 0.5  # ... sigma_data, the data's standard deviation

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 2e-3  # peak learning rate (a small net takes a large one)
    config.optimizer.b1 = 0.9  # Adam beta1
    config.optimizer.b2 = 0.99  # Adam beta2 (VDM)
    config.optimizer.eps = 1e-8  # Adam epsilon
    config.optimizer.weight_decay = 0.01  # AdamW decoupled weight decay (see decay_mask)
    config.optimizer.decay_mask = "matrices"  # decayed: 'matrices' (network kernels), 'non_bias', 'all'
    config.optimizer.warmup_steps = 100  # linear warmup from 0
    config.optimizer.decay = "cosine"  # after warmup: 'cosine' to 0 at num_steps (the run ends annealed) or 'constant'
    config.optimizer.grad_clip = 1.0  # global-norm clipping (0: off)
    config.optimizer.ema_decay = 0.995  # EMA of the params, used for eval and sampling (short run: short memory)

    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 3000  # optimizer steps
    config.training.batch_size = 32  # global batch (split over devices)
    config.training.eval_every = 3000  # full-test-set eval + samples (and at the end)
    config.training.checkpoint_every = 250  # checkpoint every this many steps (and at the end)
    config.training.keep_checkpoints = 3  # keep the newest few
    config.training.log_every = 50  # train metrics every this many steps
    config.training.steps_per_call = 1  # steps per device call (lax.scan); divides the intervals
    config.training.dtype = "float32"  # forward-pass compute dtype: float32 or bfloat16
    config.training.nan_policy = "stop"  # non-finite loss: stop (raise) or skip the update

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 200  # eval batch (global), the unit of its noise; the test split is covered exactly once
    #   (a batch whose temporaries exceed the device's memory budget runs as several calls: vdm.evaluation.split_eval)
    config.eval.num_steps = 0  # ELBO time steps: 0 continuous, else discrete T
    config.eval.variance = config_dict.placeholder(str)  # T-step ELBO's reverse variance: small, large, learned
    #   (default: learned with a variance head, else small)
    # continuous ELBO: t ~ U(0,1) per example, or 'importance': t from a pilot pass's histogram (same mean, smaller SE).
    # Images: 'importance', since on the cosine schedule gamma'(t) ~ 2 / (pi t) near t = 0 gives the uniform draw a
    # heavy tail (the default run: 3.13 +- 0.38 uniform, 4.231 +- 0.016 importance; experiments/RESULTS.md, section 9)
    config.eval.t_sampling = "importance" if kind == "image" else "uniform"  # (see above)
    config.eval.pilot_examples = 500  # 'importance': the pilot pass's examples (from the train split; uniform t)
    config.eval.method = "elbo"  # --mode=eval: 'elbo' (-ELBO bits/dim) or 'ode' (probability-flow ODE bits/dim)
    config.eval.ode_steps = 64  # 'ode': RK4 steps, uniform in log-SNR (4 network evaluations each)
    config.eval.ode_probes = 1  # 'ode': Hutchinson probes per example for the divergence
    config.eval.max_examples = 0  # evaluate only the first N test examples, both methods (0: the whole split)

    config.sampling = _sampling()
    config.text = _text()

    config.fid = ml_collections.ConfigDict()  # Inception FID/KID of the samples --mode=sample draws (docs/fid.md)
    config.fid.samples = 0  # score this many samples (0: none; images only)
    config.fid.reference = "train"  # ... against this split's cached Inception statistics: 'train' or 'test'
    config.fid.reference_examples = 2000  # ... its first N examples (minutes on CPU; 0: the whole split, 1.5-2 h for
    #   Fashion-MNIST's 60,000 on 2 cores); computed once, cached by N

    config.guidance = ml_collections.ConfigDict()  # classifier guidance at --mode=sample (Dhariwal & Nichol 2021)
    config.guidance.classifier_workdir = ""  # a noisy classifier from vdm.tasks.classifier_task; '': no guidance
    config.guidance.classifier_scale = 1.0  # s in eps - s sigma grad log p(y | z_t)
    config.guidance.classifier_label = -1  # class to guide toward; -1: each class in turn
    return config


def _data(kind: str) -> ml_collections.ConfigDict:
    """config.data: the data set and its 8-bit grid; toy sets also their size, dimension and seed."""
    data = ml_collections.ConfigDict()
    data.dataset = "fashion_mnist"  # TFDS image set (prepared once with `make data`) or a generated toy set
    data.data_dir = ""  # TFDS data_dir; "": $TFDS_DATA_DIR, else ~/tensorflow_datasets (unused by toy sets)
    data.random_flip = False  # horizontal flips (images only); off: likelihoods are reported without it
    data.encoding = "endpoints"  # 8-bit k -> k/127.5 - 1 (grid ends at +-1); "bin_centres": (k + 0.5)/128 - 1
    if kind == "toy":
        data.num_train = 20_000  # examples generated for the train split
        data.num_test = 5_000  # examples generated for the test split
        data.dim = 2  # 'gaussian': number of dimensions
        data.data_seed = 0  # seed of the generated data
    return data


def _model(kind: str) -> ml_collections.ConfigDict:
    """config.model: the network, the schedule, the parameterisation and the decoder."""
    model = ml_collections.ConfigDict()
    # adm_unet: a multi-resolution UNet (ADM, Dhariwal & Nichol 2021); vdm_unet: VDM's UNet (one resolution, the
    # paper's, configs/cifar10.py); dit: a diffusion transformer (DiT, Peebles & Xie 2023); mlp: flat [B, D]
    model.name = "adm_unet" if kind == "image" else "mlp"  # adm_unet, vdm_unet, dit (images) or mlp (flat data)
    model.width = 16  # ResNet blocks' channels (adm_unet: at the first resolution; dit: hidden size; mlp: hidden width)
    model.num_layers = 2  # vdm_unet: ResNet blocks on the way down, up: num_layers + 1 (dit: its blocks; mlp: residual)
    if kind == "image":
        model.num_heads = 1  # heads of the middle self-attention (dit: of every block's; they divide the width)
        model.channel_mult = (1, 2, 4)  # adm_unet: width multiplier of each resolution (28 -> 14 -> 7 here)
        model.num_res_blocks = 1  # adm_unet: ResNet blocks per resolution on the way down (up: one more)
        model.attention_resolutions = (7,)  # adm_unet: self-attention after the blocks at these sizes (and the middle)
        model.cross_attention_resolutions = config_dict.placeholder(tuple)  # adm_unet with text (config.text): cross-
        #   attention to the caption's tokens at these sizes (and the middle, if the lowest); None: attention_resolutions
    model.dropout = 0.0  # dropout inside the blocks (none: far from overfitting in this budget)
    model.fourier_features = True  # sin/cos(2^n 2pi z) inputs resolve the 8-bit grid (VDM)
    model.fourier_min = 6  # lowest Fourier exponent n
    model.fourier_max = 7  # highest Fourier exponent n
    if kind == "image":
        model.embedding_freqs = "half"  # timestep-embedding frequencies 10000^(-k/half); 'half_minus_one': 10000^(-k/(half-1)) (google-research/vdm)
        model.norm_groups = 0  # GroupNorm groups; 0: adaptive (<= 32, >= 2 channels each); the reference: 32
        model.residual_output = False  # True: the net returns z + h (the reference's eps = z + net)
        model.cond_proj_bias = True  # bias on each ResNet block's noise-embedding projection (reference: none)
        model.cond_proj_zero_init = False  # zero-init that projection (reference: zeros)
        model.scan_blocks = False  # run the down/up ResNet blocks under nn.scan: compile time flat in depth
        model.remat = False  # recompute each ResNet block's activations in the backward pass (saves memory)
        #   (scan_blocks and remat: dit's blocks likewise)
        model.patch_size = 2  # dit: p x p patches are its tokens (p divides the image size; 28x28 / 2: 196 tokens)
        model.mlp_ratio = 4.0  # dit: each block's MLP hidden width / width
        model.time_input = "gamma"  # dit: its timestep sinusoid of 1000 (gamma - gamma_min)/(gamma_max - gamma_min) as
        #   the UNets' ('gamma'), or of the DDPM timestep k in [0, 1000) whose gamma it is ('ddpm_timestep': DiT's own)
    model.num_classes = 0  # 0: unconditional; else the data's class count (class-conditional)
    model.label_dropout = 0.0  # P(label -> null class) in training (classifier-free guidance)
    model.gamma_min = -13.3  # gamma(0) = -log SNR at t=0 (VDM; mlp: also the net's input rescaling)
    model.gamma_max = 5.0  # gamma(1)
    model.parameterization = "eps"  # how the net output is read: eps, x0, score, v
    # linear_logsnr, cosine, ddpm_linear, learned, learned_linear, ot. Images: cosine (improved DDPM), which with
    # L_simple is the eps-cosine weighting sech(lambda/2) / pi: weight on the mid noise levels that shape samples;
    # linear_logsnr with L_simple is the ELBO's weighting (better bits/dim, worse samples)
    model.schedule = "cosine" if kind == "image" else "linear_logsnr"  # (see above)
    model.learn_endpoints = False  # learned schedule: learn gamma_min/gamma_max too
    model.variance_head = "none"  # reverse variance: 'none' (fixed), 'interp' v = (r+1)/2 (improved DDPM) or 'sigmoid' v = sigmoid(r), r the C extra outputs
    model.decoder = "categorical"  # p(x | z_0): 'categorical' (VDM's 256-way), 'discretized_gaussian' (DDPM), 'gaussian' (continuous data)
    return model


def latent_section() -> ml_collections.ConfigDict:
    """config.latent: latent diffusion, the diffusion model as the prior over an autoencoder's latents (vdm.tasks.latent_task)."""
    lat = ml_collections.ConfigDict()
    lat.autoencoder_workdir = ""  # a vdm.tasks.autoencoder_task run; "": a pixel model (every other latent key unused)
    lat.latents = "sample"  # the prior is trained on z_0 ~ q(z_0 | x) (what the bound averages over) or its "mean"
    lat.scale = 0.0  # c in u = c z_0; 0: 1/std of the latents, computed at the start and recorded
    lat.scale_examples = 2000  # ... over this many train examples
    lat.joint = False  # LSGM's end-to-end step: train encoder, decoder and prior on the bound (a resume may turn it on)
    lat.autoencoder = ml_collections.ConfigDict()  # its model keys, from its run at the start (given ones replaced)
    lat.autoencoder.latent_channels = 4  # C_z (configs/fashion_mnist_ae.py explains these)
    lat.autoencoder.downsample = 4  # f: z_0 is [H/f, W/f, C_z]
    lat.autoencoder.width = 32  # its channels
    lat.autoencoder.num_blocks = 1  # its residual blocks per resolution
    lat.autoencoder.decoder = "discretized_gaussian"  # its p(x | z_0)
    return lat


def _text() -> ml_collections.ConfigDict:
    """config.text: conditioning on the data set's captions (text to image, docs/text.md); encoder 'none': off."""
    text = ml_collections.ConfigDict()
    text.encoder = "none"  # 'none' (no text), 'scratch' (a word-level transformer trained with the denoiser, GLIDE),
    #   't5' (a frozen T5 of text.t5_folder, Imagen; its caption embeddings computed once and cached beside the data)
    text.t5_folder = ""  # 't5': a HuggingFace T5 checkpoint folder (config.json, model.safetensors, tokenizer.json)
    text.max_length = 32  # the longest caption or prompt, in tokens (words for 'scratch'); longer prompts are refused
    text.width = 64  # 'scratch': the encoder's width
    text.depth = 2  # 'scratch': its transformer blocks
    text.num_heads = 4  # 'scratch': its attention heads (they divide the width)
    text.caption_dropout = 0.1  # P(caption -> the null condition, no tokens) in training: classifier-free guidance
    return text


def _sampling() -> ml_collections.ConfigDict:
    """config.sampling: the sampler, its steps and batch; each option below is None: the method's default."""
    s = ml_collections.ConfigDict()
    s.method = "ancestral"  # ancestral, ddim, sde, ode, pc, dpm_solver (vdm.sampling.SAMPLERS)
    s.num_steps = 100  # sampler steps
    s.num_samples = 36  # images per grid / .npz
    s.batch_size = 100  # samples per sampler call (bounds memory: ~5 MB a sample for the 28x28 UNet); 0: all at once
    s.guidance_weight = 0.0  # classifier-free guidance w (conditional models: classes or captions)
    s.prompt = config_dict.placeholder(str)  # text models: the prompt of every sample (None: test captions)
    s.prompts_file = config_dict.placeholder(str)  # text models: a file of prompts, one per line, one per grid row
    s.class_label = -1  # class to sample; -1: cycle through the classes
    s.decode = "mean"  # latent models: a sample's image is the decoder's mean, or 'argmax' its most likely 8-bit value
    unset = config_dict.placeholder  # a typed None: the method's default unless a config or flag sets it
    s.grid = unset(str)  # time grid: uniform_t, uniform_logsnr, edm, uniform_ot (OT path's t; default: the method's)
    s.rho = unset(float)  # grid='edm': the rho of Karras et al. 2022 (default 7)
    s.t_min = unset(float)  # the grid runs from t_max down to t_min (default 0)
    s.t_max = unset(float)  # ... from t_max (default 1: pure noise)
    s.clip_x0 = unset(bool)  # clip the x0 prediction to [-1, 1] in every step (default off)
    s.dynamic_threshold = unset(float)  # Imagen's dynamic thresholding percentile p in (0, 1] (default off)
    s.final_denoise = unset(bool)  # end with x0_hat(z_tmin), else z_tmin / alpha_tmin (default on)
    s.variance = unset(str)  # ancestral, ddim (eta > 0): 'small' (posterior; default), 'large' (beta), 'learned' (head)
    s.eta = unset(float)  # ddim: 0 deterministic (default), 1 the ancestral variance
    s.space = unset(str)  # ode: Heun in 'edm' variables (default) or 'ot' (on the flow ODE dz_OT/dt = u)
    s.snr = unset(float)  # pc: Langevin signal-to-noise ratio (default 0.16, score_sde)
    s.corrector_steps = unset(int)  # pc: corrector moves per step (default 1)
    s.order = unset(int)  # dpm_solver: order 1, 2 (default) or 3
    s.prediction = unset(str)  # dpm_solver: 'x0' (DPM-Solver++, default) or 'eps'
    s.lower_order_final = unset(bool)  # dpm_solver: lower the order of the last steps when steps < 15 (default on)
    return s
