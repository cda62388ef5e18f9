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

from vdm.infra.fileio import load_sibling  # configs/common.py, by its path next to this file

common = load_sibling(__file__, "common")
VARIANTS = ("f2", "categorical", "small_kl", "small")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config of the autoencoder; arg: comma-separated variants from VARIANTS, or ''."""
    variants = common.parse_variants(arg, VARIANTS, "fashion_mnist_ae")
    config = ml_collections.ConfigDict()
    config.task = "autoencoder"  # which model this trains (vdm.tasks.registry)
    config.seed = 0  # seeds params, train keys and the order of the data

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "fashion_mnist"  # TFDS image set (prepared once with `make data`)
    config.data.data_dir = ""  # TFDS data_dir ("": $TFDS_DATA_DIR, else ~/tensorflow_datasets)
    config.data.random_flip = False  # horizontal flips of training images
    config.data.encoding = "endpoints"  # 8-bit k -> k/127.5 - 1; "bin_centres": (k + 0.5)/128 - 1

    config.model = ml_collections.ConfigDict()
    config.model.latent_channels = 2 if "f2" in variants else 4  # C_z of z_0
    config.model.downsample = 2 if "f2" in variants else 4  # f: z_0 is [H/f, W/f, C_z]
    config.model.width = 32  # channels of every conv and residual block
    config.model.num_blocks = 1  # residual blocks per resolution, each way
    decoder = "categorical" if "categorical" in variants else "discretized_gaussian"
    config.model.decoder = decoder  # p(x | z_0), vdm.core.latent.DECODERS

    config.loss = ml_collections.ConfigDict()
    config.loss.kl_weight = 1e-3 if "small_kl" in variants else 1.0  # beta on KL(q(z_0|x) || N(0, I)); 1: the ELBO

    # The optimizer and the loop: configs/base.py's keys and values (configs/common.py), but for these.
    # Eval and the latent diffusion use the EMA params (base.py's EMA decay).
    config.optimizer = common.optimizer(weight_decay=0.0)  # AdamW, its schedule, clipping and EMA; no weight decay
    config.training = common.training(  # the loop's steps and intervals
        num_steps=1000,  # optimizer steps
        batch_size=64,  # global batch (split over devices)
        eval_every=1000,  # test ELBO, reconstructions and prior samples (and at the end)
        checkpoint_every=250,  # checkpoint interval (and at the end)
        keep_checkpoints=2,  # keep the newest few
    )

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 500  # test batch (global); the split is covered exactly once
    config.eval.max_examples = 0  # only the first N test examples (0: all)
    config.eval.num_images = 32  # reconstructions (next to their originals) and prior samples drawn
    if "small" in variants:  # configs/common.py's smoke test (20 steps), a narrow net
        common.small(config, {"model.width": 8, "eval.batch_size": 1000})
    return config
