"""The autoencoder of latent diffusion on Fashion-MNIST: 28x28x1 -> q(z_0 | x) at 7x7x4, an 8-bit decoder p(x | z_0).

Run (stage 1 of the two-stage recipe; about 4 minutes on 2 CPU cores):
    python -m vdm.main --config=configs/fashion_mnist_ae.py --workdir=workdir/fashion_mnist_ae
then stage 2, the diffusion prior on its latents (configs/fashion_mnist.py:latent):
    python -m vdm.main --config=configs/fashion_mnist.py:latent \
        --config.latent.autoencoder_workdir=workdir/fashion_mnist_ae --workdir=workdir/fashion_mnist_latent
Trained by the VAE ELBO against N(0, I) with KL weight loss.kl_weight (1: the true ELBO, the
default; latent-diffusion models use a small one, `:small_kl`), through the one loop (checkpoints
with resume, metrics.jsonl, TensorBoard). Its eval reports the test VAE ELBO in bits/dim
(reconstruction + KL, with its standard error) and writes reconstructions and prior samples.
Variants (comma-separated): `:f2` (14x14x2 latents), `:categorical` (a 256-way decoder),
`:small_kl` (kl_weight 1e-3), `:small` (a smoke test: a narrow net, 20 steps).
"""

import ml_collections

VARIANTS = ("f2", "categorical", "small_kl", "small")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config of the autoencoder; arg: comma-separated variants from VARIANTS, or ''."""
    variants = set(filter(None, arg.split(",")))
    if not variants <= set(VARIANTS):
        raise ValueError(f"unknown fashion_mnist_ae variant(s) {sorted(variants - set(VARIANTS))} in {arg!r}; "
                         f"choose from {list(VARIANTS)} (comma-separated), or ''.")
    config = ml_collections.ConfigDict()
    config.task = "autoencoder"  # which model this trains (vdm.tasks.registry)
    config.seed = 0  # seeds params, train keys and the order of the data

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "fashion_mnist"   # TFDS image set (prepared once with `make data`)
    config.data.data_dir = ""               # TFDS data_dir ("": $TFDS_DATA_DIR, else ~/tensorflow_datasets)
    config.data.random_flip = False         # horizontal flips of training images
    config.data.encoding = "endpoints"      # 8-bit k -> k/127.5 - 1; "bin_centres": (k + 0.5)/128 - 1

    config.model = ml_collections.ConfigDict()
    config.model.latent_channels = 2 if "f2" in variants else 4   # C_z of z_0
    config.model.downsample = 2 if "f2" in variants else 4        # f: z_0 is [H/f, W/f, C_z]
    config.model.width = 32                 # channels of every conv and residual block
    config.model.num_blocks = 1             # residual blocks per resolution, each way
    config.model.decoder = "categorical" if "categorical" in variants else "discretized_gaussian"  # p(x | z_0), vdm.core.latent.DECODERS

    config.loss = ml_collections.ConfigDict()
    config.loss.kl_weight = 1e-3 if "small_kl" in variants else 1.0   # beta on KL(q(z_0|x) || N(0, I)); 1: the ELBO

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 2e-3  # peak learning rate
    config.optimizer.b1 = 0.9              # Adam beta1
    config.optimizer.b2 = 0.99             # Adam beta2
    config.optimizer.eps = 1e-8            # Adam epsilon
    config.optimizer.weight_decay = 0.0    # AdamW decoupled weight decay (see decay_mask)
    config.optimizer.decay_mask = "matrices"  # decayed: 'matrices' (kernels), 'non_bias', 'all'
    config.optimizer.warmup_steps = 100    # linear warmup from 0
    config.optimizer.decay = "cosine"      # cosine to 0 at num_steps, or 'constant'
    config.optimizer.grad_clip = 1.0       # global-norm clipping (0: off)
    config.optimizer.ema_decay = 0.995     # EMA of the params: what eval and the latent diffusion use

    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 1000       # optimizer steps
    config.training.batch_size = 64        # global batch (split over devices)
    config.training.eval_every = 1000      # test ELBO, reconstructions and prior samples (and at the end)
    config.training.checkpoint_every = 250  # checkpoint interval (and at the end)
    config.training.keep_checkpoints = 2   # keep the newest few
    config.training.log_every = 50         # train metrics every this many steps
    config.training.steps_per_call = 1     # steps per device call (lax.scan); divides the intervals
    config.training.nan_policy = "stop"    # non-finite loss: stop (raise) or skip the update

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 500           # test batch (global); the split is covered exactly once
    config.eval.max_examples = 0           # only the first N test examples (0: all)
    config.eval.num_images = 32            # reconstructions (next to their originals) and prior samples drawn
    if "small" in variants:
        config.model.width = 8
        config.optimizer.warmup_steps = 5
        config.training.num_steps = 20
        config.training.batch_size = 16
        config.training.eval_every = 20
        config.training.checkpoint_every = 10
        config.training.log_every = 5
        config.eval.batch_size = 1000
    return config
