"""Write tests/fixtures/hybrid_improved_diffusion.npz: improved DDPM's L_hybrid on fixed inputs, by their own code.

Not part of the package and not run by the tests (they only read the .npz): it needs torch and a copy of
openai/improved-diffusion's `improved_diffusion` folder, both outside this repository, e.g.

    python3 -m venv /work/scratch-torch && /work/scratch-torch/bin/pip install torch==2.13.0 numpy
    git -C <improved-diffusion checkout> archive HEAD improved_diffusion | tar -x -C /work/scratch-torch/src
    /work/scratch-torch/bin/python scripts/make_hybrid_fixture.py --improved_diffusion=/work/scratch-torch/src

It builds their GaussianDiffusion as their L_hybrid recipe does (cosine betas, T = 1000, EPSILON mean,
LEARNED_RANGE variance, RESCALED_MSE loss: what `script_util.create_gaussian_diffusion(learn_sigma=True,
noise_schedule='cosine', rescale_learned_sigmas=True)` builds, less its SpacedDiffusion wrapper, which with no
respacing keeps every step), feeds `training_losses` a stand-in
model that returns fixed outputs (eps_hat and the variance head's raw r in [-1, 1]), and saves the inputs
(NHWC, as vdm lays images out) with their per-example 'loss', 'mse' and 'vb', as their code computes them
(float32) and in float64 ('loss64', 'mse64', 'vb64': the same code with float64 schedule values and inputs). Their t index k is vdm's step
i = k + 1 on the grid i/T; k = 0 (their decoder term -log p(x_0 | x_1)) has no counterpart in vdm's
hybrid term (vdm keeps a latent z_0 and its own reconstruction term), so the draws use k >= 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

NUM_STEPS = 1000
OUT = os.path.join(os.path.dirname(__file__), os.pardir, "tests", "fixtures", "hybrid_improved_diffusion.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--improved_diffusion", required=True, help="folder holding their improved_diffusion package")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    sys.path.insert(0, args.improved_diffusion)
    import torch
    from improved_diffusion import gaussian_diffusion as gd

    betas = gd.get_named_beta_schedule("cosine", NUM_STEPS)
    diffusion = gd.GaussianDiffusion(
        betas=betas,
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.LEARNED_RANGE,
        loss_type=gd.LossType.RESCALED_MSE,
        rescale_timesteps=True,
    )
    rng = np.random.default_rng(25)
    batch, height, width, channels = 12, 4, 4, 3
    shape = (batch, height, width, channels)
    x = (rng.integers(0, 256, size=shape) / 127.5 - 1.0).astype(np.float32)  # 8-bit images in [-1, 1]
    noise = rng.normal(size=shape).astype(np.float32)
    eps_hat = (noise + 0.5 * rng.normal(size=shape)).astype(np.float32)  # an imperfect denoiser
    raw_v = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)  # LEARNED_RANGE's model_var_values
    k = np.concatenate([[1, 2, 10, 500, 998, 999], rng.integers(1, NUM_STEPS, size=batch - 6)]).astype(np.int64)

    def losses(dtype):
        nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(dtype)
        fixed = torch.cat([nchw(eps_hat), nchw(raw_v)], dim=1)
        with torch.no_grad():
            out = diffusion.training_losses(lambda x_t, t: fixed, nchw(x), torch.from_numpy(k), noise=nchw(noise))
        return {name: value.numpy().astype(np.float64) for name, value in out.items()}

    terms = losses(torch.float32)  # their code as it is: schedule values cast to float32 (`.float()`)

    # ... and in float64 throughout: the same code with `_extract_into_tensor`'s cast to float32 replaced by
    # float64 (its pred_xstart = x_t / sqrt(abar) - sqrt(1/abar - 1) eps cancels in float32 at the last steps).
    def extract64(arr, timesteps, shape):
        values = torch.from_numpy(arr)[timesteps]  # float64, not cast
        return values.reshape(values.shape + (1,) * (len(shape) - 1)).expand(shape)

    extract = gd._extract_into_tensor
    gd._extract_into_tensor = extract64
    terms64 = losses(torch.float64)
    gd._extract_into_tensor = extract
    np.savez(
        args.out,
        betas=betas.astype(np.float64),
        x=x,
        noise=noise,
        eps_hat=eps_hat,
        raw_v=raw_v,
        k=k,
        **terms,
        **{f"{name}64": value for name, value in terms64.items()},
        torch_version=np.array(torch.__version__),
    )
    print(f"wrote {os.path.normpath(args.out)}: loss {terms64['loss']}")


if __name__ == "__main__":
    main()
