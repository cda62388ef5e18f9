"""Text to image in pixel space on `shapes` (vdm/data/shapes.py): 32x32 RGB scenes of one or two shapes, each
with its caption ("a small red circle at the top left"); the test split is compositional (every test image holds
a (shape, colour) pair never seen in training). docs/text.md has the commands and keys.

Run:
    python -m vdm.main --config=configs/shapes.py --workdir=workdir/shapes
    python -m vdm.main --config=configs/shapes.py --workdir=workdir/shapes --mode=sample \\
        --config.sampling.prompt="a large green diamond in the centre" --config.sampling.guidance_weight=2
The denoiser is the ADM-style UNet (32 -> 16 -> 8, self-attention at 8x8) with text conditioning (Imagen):
cross-attention to the caption's tokens at 16x16 and 8x8 (and the middle), the pooled caption embedding added to
the noise-level embedding. The text encoder is a small word-level transformer trained jointly with it (GLIDE;
config.text.encoder='scratch'); captions are dropped to the null condition (no tokens) 10% of the time, so
--config.sampling.guidance_weight=w > 0 samples with classifier-free guidance. The eval is the conditional
-ELBO, -log p(x | caption) in bits/dim, over the test split.
Variants (comma-separated): `:small` (tiny: a width-8 UNet, 300 steps of batch 16 on 2,000 images, a 256-image
test split; minutes on 2 CPU cores), `:t5` (the frozen T5 of config.text.t5_folder in place of the word-level
encoder, its caption embeddings computed once and cached beside the data: give the folder with
`--config.text.t5_folder=PATH`; without it the run stops at once with one line saying so).
`:latent` (text to image over an autoencoder's latents) is future work: see LATENT_HOOK below.
"""

import ml_collections

from vdm.infra.fileio import load_sibling  # configs/base.py and configs/common.py, by their paths next to this file

common = load_sibling(__file__, "common")
VARIANTS = ("small", "t5")
# The hook for a `:latent` variant (not built): configs/fashion_mnist.py's `:latent` (config.task =
# 'latent_diffusion', base.latent_section(), an autoencoder of 32x32x3 shapes) plus this config's text section;
# vdm.tasks.latent_task would have to pass its batches' 'example' to the diffusion model's text (DiffusionModel.condition).
LATENT_HOOK = "latent"


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config for shapes text-to-image; arg: comma-separated variants from VARIANTS, or ''."""
    variants = common.parse_variants(arg, VARIANTS + (LATENT_HOOK,), "shapes")
    base = load_sibling(__file__, "base")
    config = base.get_config("image")
    config.data.dataset = "shapes"  # generated in numpy, no preparation
    config.data.num_train = 20_000  # generated scenes of the train split
    config.data.num_test = 2_000  # ... of the compositional test split (the eval's)
    config.model.width = 32  # channels at 32x32
    config.model.channel_mult = (1, 2, 2)  # 32 -> 16 -> 8
    config.model.attention_resolutions = (8,)  # self-attention at 8x8 (and the middle)
    config.model.cross_attention_resolutions = (16, 8)  # where the caption is read (and the middle)
    config.model.num_heads = 2  # heads of the self- and cross-attention
    config.text.encoder = "scratch"  # GLIDE: a word-level transformer trained with the denoiser
    config.text.max_length = 24  # the longest shapes caption has 19 words
    config.text.caption_dropout = 0.1  # classifier-free guidance's null condition, 10% of the time
    config.sampling.num_samples = 36  # 6 rows of 6: one prompt (default: a test caption) per row
    # The linear log-SNR schedule and uniform-t ELBO (the image default's cosine schedule needs importance-sampled t
    # for a trustworthy ELBO, not yet available to text models: vdm.config.text_checks)
    config.model.schedule = "linear_logsnr"  # gamma linear in t
    config.eval.t_sampling = "uniform"  # t ~ U(0, 1) per example: the integrand is flat in t on this schedule
    if LATENT_HOOK in variants:
        raise ValueError("configs/shapes.py:latent (latent text to image) is not built yet; use '', small or t5.")
    if "t5" in variants:  # Imagen: a frozen T5, its embeddings of the captions cached beside the data
        config.text.encoder = "t5"
        config.text.t5_folder = ""  # a HuggingFace T5 folder: required, --config.text.t5_folder=PATH
        config.text.max_length = 64  # T5 pieces, '</s>' included
    if "small" in variants:  # a tiny net that trains in minutes on 2 CPU cores
        config.data.num_train = 2_000
        config.data.num_test = 256
        config.text.width = 32
        config.text.depth = 1
        net = {"model.width": 8, "model.num_heads": 1, "model.fourier_features": False}
        loop = {"training.num_steps": 300, "training.eval_every": 300, "training.checkpoint_every": 100}
        common.small(
            config,
            {**net, **loop, "training.log_every": 25, "eval.batch_size": 256, "sampling.num_steps": 20}
            | {"sampling.num_samples": 16, "optimizer.warmup_steps": 20},
        )
    return config
