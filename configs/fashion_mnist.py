"""DEFAULT experiment: Fashion-MNIST 28x28x1, a small multi-resolution UNet trained with L_simple, sized for 2 CPU cores.

Run (what `make train` runs, after `make data`):
    python -m vdm.main --config=configs/fashion_mnist.py --workdir=workdir/fashion_mnist
Training (the ADM-style UNet at width 16, 28 -> 14 -> 7 with self-attention at 7x7, batch 32, 3000 steps, eps-MSE
on the cosine schedule: improved DDPM's L_simple), then the true ELBO in bits/dim over all 10,000 test images with
the EMA params (importance-sampled t: the cosine schedule's uniform-t estimate has a heavy tail), and a grid of samples.
Its time, bits/dim and Inception FID: experiments/RESULTS.md, section 9. A rerun in the same workdir resumes.
Its keys and values are configs/base.py's (the base holds this experiment's values, each key commented).
Variants (the config argument, comma-separated): `:small` (a smoke test: 20 steps, 1-3.5 minutes, most of it the
full-test-set eval), `:classes` (class-conditional, label dropout 0.1 for classifier-free guidance; its grid has one
class per row), `:mnist` (the same settings on MNIST digits; prepare once with
`python -m vdm.tools.prepare_data --dataset=mnist`), `:mnist,small`, `:vdm` (the earlier default: the VDM UNet at
width 16 with no downsampling, trained on the ELBO with the linear log-SNR schedule for 1500 steps; the setting of
RESULTS.md sections 2, 6 and 7),
`:hybrid` (improved DDPM on that VDM UNet: a learned reverse variance trained by L_simple + 0.001 L_vlb on the
cosine schedule with T = 1000 steps; evaluated as the 1000-step ELBO, sampled ancestrally with the learned variance),
`:flow` (rectified flow as SD3 trains it, Esser et al. 2024: the straight path z = (1 - t) x + t eps as the schedule
'ot', a velocity network (eps - x) that sees z_OT, the flow-matching loss ||(eps - x) - u_hat||^2 at logit-normal t;
evaluated, like every run, as the true ELBO in bits/dim; sampled by Euler on the flow ODE: DDIM on the grid uniform in t),
`:latent` (latent diffusion, a VDM UNet on the ELBO: the prior over the latents of configs/fashion_mnist_ae.py's
autoencoder, trained first with
`python -m vdm.main --config=configs/fashion_mnist_ae.py --workdir=workdir/fashion_mnist_ae`; its eval is
the three-term bound in bits per pixel dimension, vdm.tasks.latent_task),
`:dit` (the denoiser a diffusion transformer, DiT (Peebles & Xie 2023), in place of the UNet, all else the default's:
width 128, 6 adaLN-Zero blocks of 4 heads on 4x4 patches (7x7 = 49 tokens), a train step of the UNet's order on
CPU (experiments/results/dit_benchmark.md), learning rate 1e-3 (not tuned); it composes with the others, e.g.
`:dit,classes`, `:dit,hybrid` (DiT's own recipe: a learned variance), `:dit,small`), `:uvit` (U-ViT, Bao et al. 2023, at the DiT's width, heads and patches: time and class as
tokens, 3 in blocks, a mid block, 3 out blocks with long skips). Any config takes a transformer with
`--config.model.name=dit` (or uvit) and the keys patch_size, mlp_ratio, time_input (docs/configs.md).
"""

import ml_collections

from vdm.infra.fileio import load_sibling  # configs/base.py and configs/common.py, by their paths next to this file

common = load_sibling(__file__, "common")
VARIANTS = ("small", "classes", "mnist", "vdm", "hybrid", "latent", "flow", "dit", "uvit")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Config for Fashion-MNIST; arg: comma-separated variants from VARIANTS, or ''."""
    variants = common.parse_variants(arg, VARIANTS, "fashion_mnist")
    base = load_sibling(__file__, "base")
    config = base.get_config("image")
    if variants & {"vdm", "hybrid", "latent"}:  # the VDM UNet on the ELBO, linear log-SNR: the earlier default
        config.model.name = "vdm_unet"
        config.loss.weighting = "elbo"
        config.model.schedule = "linear_logsnr"  # gamma linear in t: uniform t is uniform in log SNR
        config.eval.t_sampling = "uniform"  # the ELBO's integrand is flat in t on this schedule (SE ~0.03 bits/dim)
        config.training.num_steps = 1500
        config.training.eval_every = 1500
    if "classes" in variants:  # class-conditional: y in the noise embedding, dropped to the null class 10% of the time
        config.model.num_classes = 10
        config.model.label_dropout = 0.1
        config.sampling.num_samples = 100  # a 10 x 10 grid: one class per row
    if "mnist" in variants:
        config.data.dataset = "mnist"  # MNIST digits, prepared once with `python -m vdm.tools.prepare_data`
    if "hybrid" in variants:  # Nichol & Dhariwal 2021: learned Sigma, L_hybrid, cosine schedule
        config.model.schedule = "cosine"
        # gamma_max stays 5 (the base's; prior KL 0.005 bits/dim): cosine is clipped there for t > 0.97 (those steps
        # have length 0). Its own clip, 20, would put a last step of expm1(gamma_t - gamma_s) ~ 1e5-1e7 into the
        # T-step ELBO at T <= 100, which multiplies any error of eps_hat at t = 1.
        config.model.variance_head = "interp"
        config.loss.objective = "hybrid"
        config.loss.weighting = "simple"  # the mean part: L_simple; lambda T = 1 at T = 1000
        config.loss.num_steps = 1000
        config.eval.num_steps = 1000  # the 1000-step ELBO, with the learned variance
        config.sampling.variance = "learned"
    if "flow" in variants:  # rectified flow / flow matching on the OT path, SD3's recipe (docs/objectives.md)
        config.model.schedule = "ot"  # gamma = 2 log(t / (1 - t)), clipped to [gamma_min, gamma_max]
        config.model.gamma_max = 10.0  # t up to sigmoid(5) = 0.993 (prior KL ~1e-5 bits/dim); gamma_min stays -13.3
        config.model.parameterization = "flow"  # the net predicts the velocity eps - x
        config.model.input_scaling = "ot"  # ... of z_OT = z / (alpha + sigma): a rectified-flow model as it is
        config.loss.weighting = "flow"  # ||(eps - x) - u_hat||^2 at the sampled t
        config.loss.t_sampling = "logit_normal"  # SD3: t = sigmoid(N(0, 1)) (loss.logit_normal_mean/std)
        config.sampling.method = "ddim"  # eta = 0: Euler's method on the flow ODE ...
        config.sampling.grid = "uniform_ot"  # ... with steps uniform in t
    if "latent" in variants:  # the diffusion model as the prior over an autoencoder's latents
        config.task = "latent_diffusion"
        config.latent = base.latent_section()  # the latent section: only latent configs have one
        config.latent.autoencoder_workdir = "workdir/fashion_mnist_ae"  # the autoencoder_task's run (its docstring)
        config.model.decoder = "gaussian"  # the diffusion level models continuous latents; the autoencoder decodes x
        config.model.fourier_features = False  # those resolve the 8-bit grid of pixels, not latents
        config.model.width = 32  # 7x7x4 latents: 16x fewer positions than pixels, so a wider net at a like cost
    if variants & {"dit", "uvit"}:  # the transformer denoiser (vdm.models.dit), sized near the UNet's step time on CPU
        config.model.name = "dit"
        config.model.width = 128  # hidden size
        config.model.num_layers = 6  # blocks
        config.model.num_heads = 4  # heads of each block's self-attention (head size 32)
        config.model.patch_size = 1 if "latent" in variants else 4  # 28x28 -> 7x7 tokens (7x7 latents: 1x1 patches)
        config.optimizer.learning_rate = 1e-3  # transformers take a smaller step than the small UNet's 2e-3
    if "uvit" in variants:  # U-ViT (vdm.models.uvit, Bao et al. 2023): every input a token, long skips; DiT's size
        config.model.name = "uvit"
        config.model.num_layers = 7  # 3 in blocks, a mid block, 3 out blocks (odd: U-ViT's depth)
    if "small" in variants:  # configs/common.py's smoke test (20 steps), a narrow net, few samples
        net = {"model.width": 8, "model.num_layers": 1, "model.fourier_features": False}
        common.small(config, {**net, "eval.batch_size": 1000, "sampling.num_steps": 10, "sampling.num_samples": 16})
    return config
