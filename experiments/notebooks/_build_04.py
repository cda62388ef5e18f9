"""Build experiments/notebooks/04_latent_diffusion.ipynb from the cells below (the reviewable source).

    .venv/bin/python experiments/notebooks/_build_04.py            # write the notebook, no outputs
    .venv/bin/python experiments/notebooks/_build_04.py --execute  # ... executed, outputs stored

Edit the cells here, not in the .ipynb, and rebuild.
"""

import pathlib

import _nbbuild

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "04_latent_diffusion.ipynb"

CELLS = [
    (
        "md",
        r"""
# 04 — Latent diffusion: the autoencoder as one more level of the hierarchy

A latent diffusion model (Rombach et al. 2022) is a hierarchical VAE whose first latent $z_0$ comes from a learned
encoder $q(z_0 \mid x)$ and whose prior over $z_0$ is a diffusion model. It keeps a likelihood bound (LSGM, Vahdat
et al. 2021), computed by `vdm.core.latent` and reported by `vdm.tasks.latent_task`. This notebook

1. states the bound and where the latent scale $c$ enters;
2. checks it in closed form on probabilistic PCA, where $-\log p(x)$ and the exact posterior are known: tight at
   the exact posterior, loose by exactly $\mathrm{KL}(q \,\|\, q^*)$ otherwise (seconds);
3. trains a small autoencoder and a diffusion prior on its latents on Fashion-MNIST through the CLI and shows the
   bound's terms, reconstructions and decoded samples;
4. shows the pixel-vs-latent comparison table of `experiments/latent_vs_pixel.py`, if it has been run.

The last cells `assert` the numbers shown. `VDM_NB_TINY=1` (the test) shrinks everything (smoke-test configs,
500 test images), so its Fashion-MNIST numbers are those of barely trained models.
""",
    ),
    (
        "md",
        r"""
## 1. The bound

The generative model is $z_1 \to \dots \to z_t \to \dots \to z_0 \to x$: the diffusion model is the prior $p(z_0)$,
the autoencoder's decoder the last level $p(x \mid z_0)$. With the encoder as the posterior of that last level,

$$-\log p(x) \;\le\; \underbrace{\mathbb{E}_q[-\log p(x \mid z_0)]}_{\text{reconstruction}}
\;\underbrace{-\,H\big(q(z_0 \mid x)\big)}_{\text{neg. entropy}}
\;+\; \underbrace{\mathbb{E}_q[-\log p(z_0)]}_{\text{cross-entropy}},$$

with gap $\mathrm{KL}\big(q(z_0 \mid x) \,\|\, p(z_0 \mid x)\big)$. The cross-entropy is bounded in turn by the
diffusion model's $-$ELBO of $z_0$ (its own reconstruction, prior and diffusion terms), so the whole is a bound on
the 8-bit $x$: the autoencoder's decoder is discretised (`discretized_gaussian`, or `categorical`), and bits/dim
divide by the **pixel** dimension $D$, not the latent one $d$. With $p(z_0) = \mathcal{N}(0, I)$ the first two
terms plus the cross-entropy are the VAE's $-$ELBO (reconstruction $+\,\mathrm{KL}(q \,\|\, \mathcal{N}(0,I))$),
so a diffusion prior improves on the VAE exactly when its cross-entropy is below $\mathcal{N}(0, I)$'s.

**The scale.** The diffusion runs on $u = c\,z_0$, with $c$ = 1 / (std of the latents), so that $u$ has unit
spread for the variance-preserving schedule. Its $-$ELBO bounds $-\log p_U(u)$; the density of $z_0$ is
$p(z_0) = p_U(c z_0)\,|\det \partial u / \partial z_0| = p_U(u)\, c^d$, so

$$-\log p(z_0) = -\log p_U(u) - d \log c .$$

`eval/bpd_cross_entropy` = `eval/bpd_latent_recon` + `_latent_prior` + `_latent_diffusion` (the diffusion
$-$ELBO of $u$) + `eval/bpd_scale_log_det` ($= -d\log c / (D \ln 2)$).
""",
    ),
    (
        "code",
        r"""
import csv
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.scipy.stats import multivariate_normal, norm

from vdm.core import latent

TINY = os.environ.get("VDM_NB_TINY", "0") == "1"
REPO = pathlib.Path.cwd().resolve().parents[1]      # the notebook runs in experiments/notebooks/
N_X = 64 if TINY else 512                           # data points of the closed-form check
N_MC = 256 if TINY else 4096                        # encoder draws for the Monte-Carlo check
plt.rcParams["figure.dpi"] = 70                     # keeps the stored notebook small
print(f"TINY={TINY}, jax {jax.__version__} on {jax.default_backend()}")
""",
    ),
    (
        "md",
        r"""
## 2. A closed-form check: probabilistic PCA

$z \in \mathbb{R}^k \sim \mathcal{N}(0, I)$, $x \mid z \sim \mathcal{N}(Wz + b, s^2 I)$ in $\mathbb{R}^D$, so
$x \sim \mathcal{N}(b, WW^\top + s^2 I)$ (Tipping & Bishop 1999). With $W = Q\,\mathrm{diag}(w)$, $Q$ orthonormal
columns, $W^\top W = \mathrm{diag}(w^2)$ and the exact posterior is diagonal:
$q^*(z \mid x) = \mathcal{N}\big(\mathrm{diag}(w/(w^2+s^2))\,Q^\top(x-b),\ \mathrm{diag}(s^2/(w^2+s^2))\big)$.

The three terms use `vdm.core.latent`: the reconstruction $-\log p(x \mid z)$ is `decoder_log_prob(..., "gaussian")`
at the encoder's mean plus its closed-form spread $\sum_i w_i^2 v_i / 2s^2$, the cross-entropy against
$\mathcal{N}(0, I)$ is `kl_standard_normal + entropy`, and `bound_terms` adds the negative entropy. Everything is
an exact expectation, so the bound's gap against $-\log p(x)$ (`jax.scipy` on the full covariance) must equal the
closed-form $\mathrm{KL}(q \,\|\, q^*)$ to float precision. Wrong encoders: $q_\delta$ shifts each point's
posterior mean by $\delta$ times a random $\mathcal{N}(0,1)$ multiple of its posterior std, and its log-variance by
$\delta$ times a random $\mathcal{N}(0, 0.5^2)$ amount (fixed draws).
""",
    ),
    (
        "code",
        r"""
D, K, S = 16, 4, 0.3
k_q, k_b, k_z, k_n, k_a, k_c, k_mc = jax.random.split(jax.random.PRNGKey(0), 7)
Q, _ = jnp.linalg.qr(jax.random.normal(k_q, (D, K)))     # [D, K], orthonormal columns
w = jnp.array([2.0, 1.5, 1.0, 0.5])
W = Q * w                                                 # W^T W = diag(w^2)
b = 0.1 * jax.random.normal(k_b, (D,))
X = jax.random.normal(k_z, (N_X, K)) @ W.T + b + S * jax.random.normal(k_n, (N_X, D))

nll = -multivariate_normal.logpdf(X, b, W @ W.T + S**2 * jnp.eye(D))          # exact -log p(x)  [N]
post_mean = (X - b) @ W / (w**2 + S**2)                                     # q*(z | x)       [N, K]
post_log_var = jnp.broadcast_to(jnp.log(S**2 / (w**2 + S**2)), post_mean.shape)


def decoder_out(z):
    # p(x | z)'s output channels as vdm.core.latent reads a 'gaussian' decoder: [mean, log scale] on the last axis.
    return jnp.concatenate([z @ W.T + b, jnp.full(z.shape[:-1] + (D,), jnp.log(S))], axis=-1)


def bound(mean, log_var):
    # Per-example three-term bound (nats) of q = N(mean, diag e^log_var), every term an exact expectation.
    recon = (-latent.decoder_log_prob(X, decoder_out(mean), "gaussian")
             + jnp.sum(w**2 * jnp.exp(log_var), -1) / (2 * S**2))
    cross_entropy = latent.kl_standard_normal(mean, log_var) + latent.entropy(log_var)   # E_q[-log N(z; 0, I)]
    return latent.bound_terms(recon, log_var, cross_entropy)


def kl_to_posterior(mean, log_var):
    # KL(q || q*) of diagonal Gaussians, written out independently of vdm.core.latent.
    v, v_star = jnp.exp(log_var), jnp.exp(post_log_var)
    return 0.5 * jnp.sum(v / v_star + (mean - post_mean) ** 2 / v_star - 1 - (log_var - post_log_var), -1)


A = jnp.exp(0.5 * post_log_var) * jax.random.normal(k_a, post_mean.shape)   # in units of the posterior's std
C = 0.5 * jax.random.normal(k_c, post_mean.shape)
DELTAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
rows = []
for delta in DELTAS:
    mean, log_var = post_mean + delta * A, post_log_var + delta * C
    t = bound(mean, log_var)
    gap, kl = t["total"] - nll, kl_to_posterior(mean, log_var)
    rows.append(dict(delta=delta, recon=float(t["reconstruction"].mean()), neg_entropy=float(t["neg_entropy"].mean()),
                     cross_entropy=float(t["cross_entropy"].mean()), total=float(t["total"].mean()),
                     nll=float(nll.mean()), gap=float(gap.mean()), kl=float(kl.mean()),
                     max_err=float(jnp.max(jnp.abs(gap - kl)))))
print(f"mean over {N_X} points, nats; D = {D}, k = {K}, s = {S}")
print(f"{'delta':>5} {'recon':>8} {'-H(q)':>8} {'cross-ent':>9} {'bound':>8} {'-log p(x)':>9} {'gap':>8} "
      f"{'KL(q||q*)':>9} {'max|gap-KL|':>11}")
for r in rows:
    print(f"{r['delta']:5.1f} {r['recon']:8.3f} {r['neg_entropy']:8.3f} {r['cross_entropy']:9.3f} {r['total']:8.3f} "
          f"{r['nll']:9.3f} {r['gap']:8.4f} {r['kl']:9.4f} {r['max_err']:11.1e}")
""",
    ),
    (
        "code",
        r"""
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(DELTAS, [r["kl"] for r in rows], "k-", lw=1, label=r"closed form $\mathrm{KL}(q_\delta \| q^*)$")
ax.plot(DELTAS, [r["gap"] for r in rows], "o", label=r"bound $-$ $(-\log p(x))$")
ax.set(xlabel=r"encoder error $\delta$", ylabel="nats per example (mean)", title="probabilistic PCA: the bound's gap")
ax.legend(fontsize=8)
plt.show()
""",
    ),
    (
        "md",
        r"""
**Monte Carlo, and the scale.** The training and eval code draw $z_0 \sim q$ (`vdm.core.latent.reparameterize`) instead
of taking expectations. At the exact posterior every single draw gives $-\log p(x \mid z) - \log p(z) + \log q^*(z
\mid x) = -\log p(x)$: the estimator has zero variance, and its spread over draws below is float rounding. For a
wrong encoder the draws' mean matches the exact reconstruction term within its standard error. Last, the change of
variables: for $u = c z$ and $p_U = \mathcal{N}(0, c^2 I)$ (the image of $\mathcal{N}(0, I)$), every draw has
$-\log p_U(u) - d \log c = -\log \mathcal{N}(z; 0, I)$ with `vdm.core.latent.scale_log_det(c, d)` $= d \log c$.
""",
    ),
    (
        "code",
        r"""
eps = jax.random.normal(k_mc, (N_MC,) + post_mean.shape)      # [draws, N, K]


def per_draw(mean, log_var):
    # [draws, N] single-draw estimates of the reconstruction and of the whole bound.
    z = latent.reparameterize(mean, log_var, eps)
    recon = -jax.vmap(lambda zz: latent.decoder_log_prob(X, decoder_out(zz), "gaussian"))(z)
    log_q = jnp.sum(norm.logpdf(z, mean, jnp.exp(0.5 * log_var)), -1)
    log_prior = jnp.sum(norm.logpdf(z), -1)
    return z, recon, recon + log_q - log_prior


_, _, total_star = per_draw(post_mean, post_log_var)
spread_star = float(jnp.max(jnp.std(total_star, axis=0)))     # over draws, worst data point
tight_err = float(jnp.max(jnp.abs(total_star - nll)))
mean1, log_var1 = post_mean + A, post_log_var + C               # delta = 1
_, recon1, total1 = per_draw(mean1, log_var1)
recon_mc = float(recon1.mean())
recon_se = float(recon1.mean(1).std() / math.sqrt(N_MC))    # MC error over draws (the data points are fixed)
recon_exact = float(bound(mean1, log_var1)["reconstruction"].mean())
print(f"exact posterior: per-draw bound - (-log p(x)): max |.| {tight_err:.1e} nats, spread over draws {spread_star:.1e}")
print(f"delta = 1: reconstruction, {N_MC} draws {recon_mc:.4f} +- {recon_se:.4f} vs exact {recon_exact:.4f} nats; "
      f"bound's spread over draws {float(jnp.mean(jnp.std(total1, axis=0))):.2f} nats")

c = 3.0
z = latent.reparameterize(mean1, log_var1, eps[:8])
u = c * z
scale_err = float(jnp.max(jnp.abs((-jnp.sum(norm.logpdf(u, 0.0, c), -1) - latent.scale_log_det(c, K))
                                  - (-jnp.sum(norm.logpdf(z), -1)))))
print(f"u = {c} z: max |(-log p_U(u) - d log c) - (-log N(z; 0, I))| = {scale_err:.1e} nats "
      f"(d log c = {latent.scale_log_det(c, K):.4f})")
""",
    ),
    (
        "code",
        r"""
assert abs(rows[0]["gap"]) < 1e-4 and rows[0]["max_err"] < 1e-3, rows[0]        # tight at q*
for r in rows:
    assert r["max_err"] < 1e-3 + 1e-5 * abs(r["nll"]), r                         # gap = KL(q || q*) per point
gaps = [r["gap"] for r in rows]
assert all(g1 > g0 for g0, g1 in zip(gaps, gaps[1:])), gaps                       # grows with the encoder's error
assert tight_err < 1e-3 and spread_star < 1e-3, (tight_err, spread_star)         # zero-variance at q*
assert abs(recon_mc - recon_exact) < 4 * recon_se + 1e-4, (recon_mc, recon_exact, recon_se)
assert scale_err < 1e-4, scale_err
print("closed-form checks passed")
""",
    ),
    (
        "md",
        r"""
## 3. Fashion-MNIST: an autoencoder, then a diffusion prior on its latents

Two CLI runs in a temporary folder (`VDM_NB04_WORKDIR` to keep them): stage 1,
`python -m vdm.main --config=configs/fashion_mnist_ae.py` (28x28x1 to 7x7x4 latents, a
discretised-Gaussian decoder, trained by the VAE ELBO), then stage 2, `python -m vdm.main
--config=configs/fashion_mnist.py:latent` on its latents (frozen autoencoder, $c$ computed from 2,000 train
latents). Default sizes: the autoencoder's 1,000 steps and 1,000 diffusion steps, both evaluated on the whole test
set (about 6 and 2 minutes on 2 shared CPU cores). `VDM_NB_TINY=1`: the `:small` variants (20 steps each, narrow nets) on
the first 500 test images ($c$ from 500 train latents).
""",
    ),
    (
        "code",
        r"""
WORK = pathlib.Path(os.environ.get("VDM_NB04_WORKDIR") or tempfile.mkdtemp(prefix="vdm_nb04_"))
AE_DIR, LAT_DIR = WORK / "ae", WORK / "latent"
common = ["--config.eval.max_examples=500"] if TINY else []
ae_cmd = [sys.executable, "-m", "vdm.main", "--config=configs/fashion_mnist_ae.py" + (":small" if TINY else ""),
          f"--workdir={AE_DIR}", *common]
lat_cmd = [sys.executable, "-m", "vdm.main", "--config=configs/fashion_mnist.py:latent" + (",small" if TINY else ""),
           f"--config.latent.autoencoder_workdir={AE_DIR}", f"--workdir={LAT_DIR}", *common]
lat_cmd += (["--config.latent.scale_examples=500"] if TINY
            else ["--config.training.num_steps=1000", "--config.training.eval_every=1000"])
seconds = {}
for name, cmd in [("autoencoder", ae_cmd), ("latent diffusion", lat_cmd)]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds[name] = time.perf_counter() - t0
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"
    print(f"{name}: {seconds[name]:.0f} s   {proc.stderr.strip().splitlines()[-1]}")
ae_eval = json.loads((AE_DIR / "final_eval.json").read_text())["result"]
ev = json.loads((LAT_DIR / "final_eval.json").read_text())["result"]
scale = json.loads((LAT_DIR / "config.json").read_text())["latent"]["scale"]
print(f"latent scale c = {scale:.4f}; {ev['eval/num_examples']} test images")
""",
    ),
    (
        "code",
        r"""
TABLE = [("reconstruction  E_q[-log p(x|z_0)]", "eval/bpd_recon"),
         ("neg. entropy    -H(q(z_0|x))", "eval/bpd_neg_entropy"),
         ("cross-entropy   E_q[-log p(z_0)]", "eval/bpd_cross_entropy"),
         ("  latent reconstruction (diffusion)", "eval/bpd_latent_recon"),
         ("  latent prior (diffusion)", "eval/bpd_latent_prior"),
         ("  latent diffusion term", "eval/bpd_latent_diffusion"),
         ("  scale  -d log c", "eval/bpd_scale_log_det"),
         ("total bound  -log p(x) <=", "eval/bpd"),
         ("  its standard error", "eval/bpd_se")]
print(f"{'latent diffusion, test split':<38} {'bits/dim':>9}")
for label, k in TABLE:
    print(f"{label:<38} {ev[k]:9.4f}   {k}")
vae_cross_entropy = ae_eval["eval/bpd_kl"] - ev["eval/bpd_neg_entropy"]   # KL(q || N(0,I)) + H(q)
print(f"\nthe autoencoder alone (prior N(0, I)): VAE -ELBO {ae_eval['eval/bpd']:.4f} +- {ae_eval['eval/bpd_se']:.4f} "
      f"= reconstruction {ae_eval['eval/bpd_recon']:.4f} + KL {ae_eval['eval/bpd_kl']:.4f}; "
      f"its cross-entropy {vae_cross_entropy:.4f} vs the diffusion prior's {ev['eval/bpd_cross_entropy']:.4f}")
""",
    ),
    (
        "md",
        r"""
At the default sizes (one run, 2 CPU cores) the diffusion prior's cross-entropy is below that of $\mathcal{N}(0, I)$
(0.46 vs 0.50 bits/dim), so the latent model's bound, 3.586 ± 0.016, is below the VAE's $-$ELBO, 3.625 ± 0.010,
with the same reconstruction and entropy terms. `eval/bpd_latent_recon` is nearly constant (−1.887): it is the
differential entropy term of the diffusion's Gaussian decoder at $\gamma_{\min}$ ($\sigma_0^2 = \mathrm{sigmoid}(-13.3)$),
which the diffusion term offsets. With `VDM_NB_TINY=1` the 20-step autoencoder's KL is near zero (the encoder
ignores $x$) and the 20-step prior is worse than $\mathcal{N}(0, I)$.
""",
    ),
    (
        "code",
        r"""
def newest(folder, prefix):
    return sorted((folder / "samples").glob(f"{prefix}_*.png"))[-1]


images = [(newest(AE_DIR, "recon"), "test images (top half) and reconstructions (bottom half)"),
          (newest(AE_DIR, "prior"), "decoded z_0 ~ N(0, I) (the VAE's prior)"),
          (newest(LAT_DIR, "step"), "decoded samples of the diffusion prior")]
fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
for ax, (path, title) in zip(axes, images):
    ax.imshow(plt.imread(path), cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
plt.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        r"""
## 4. Pixel vs latent diffusion

`experiments/latent_vs_pixel.py` trains a pixel-space and a latent model at matched budgets and writes
`experiments/results/latent_vs_pixel.csv` (bits/dim with SE, FID and KID, train and sample seconds per image).
The bits/dim are comparable: both are bounds on the same 8-bit pixels, per pixel dimension.
""",
    ),
    (
        "code",
        r"""
CSV = REPO / "experiments" / "results" / "latent_vs_pixel.csv"
COLUMNS = ["model", "bpd", "bpd_se", "fid", "kid", "kid_se", "train_s_per_image", "sample_s_per_image",
           "num_samples", "train_steps"]
comparison = None
if CSV.exists():
    with open(CSV, newline="") as f:
        comparison = {r["model"]: r for r in csv.DictReader(f)}
    print(" ".join(f"{c:>18}" for c in COLUMNS))
    for r in comparison.values():
        print(" ".join(f"{r.get(c, ''):>18}" for c in COLUMNS))
else:
    print(f"no {CSV.relative_to(REPO)}: make it with `python experiments/latent_vs_pixel.py` from the repository "
          "root (see its docstring); skipping the comparison.")
""",
    ),
    (
        "md",
        r"""
## 5. Checks

The three terms sum to the total and the cross-entropy's parts plus the scale term to the cross-entropy (both to
1e-6 relative; eval rounds per-example float32 sums), the bound is finite and positive, the reconstruction term
agrees with the autoencoder's own eval of it (same encoder and decoder, other draws of $z_0$), and the samples are
finite. With the comparison table present: both rows, finite bits/dim.
""",
    ),
    (
        "code",
        r"""
def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b))


three = ev["eval/bpd_recon"] + ev["eval/bpd_neg_entropy"] + ev["eval/bpd_cross_entropy"]
assert close(three, ev["eval/bpd"]), (three, ev["eval/bpd"])
parts = (ev["eval/bpd_latent_recon"] + ev["eval/bpd_latent_prior"] + ev["eval/bpd_latent_diffusion"]
         + ev["eval/bpd_scale_log_det"])
assert close(parts, ev["eval/bpd_cross_entropy"]), (parts, ev["eval/bpd_cross_entropy"])
assert math.isfinite(ev["eval/bpd"]) and ev["eval/bpd"] > 0 and 0 < ev["eval/bpd_se"] < 0.1 * ev["eval/bpd"], ev
assert close(ev["eval/bpd_scale_log_det"], -latent.scale_log_det(scale, 7 * 7 * 4) / (28 * 28 * math.log(2)), 1e-5)
assert abs(ev["eval/bpd_recon"] - ae_eval["eval/bpd_recon"]) < 3 * ev["eval/bpd_se"], (ev, ae_eval)
assert ev["eval/sample_nonfinite_frac"] == 0.0, ev
if comparison is not None:
    assert {"pixel", "latent"} <= set(comparison), sorted(comparison)
    for name in ("pixel", "latent"):
        assert math.isfinite(float(comparison[name]["bpd"])) and float(comparison[name]["bpd"]) > 0, comparison[name]
print("all checks passed")
""",
    ),
]


if __name__ == "__main__":
    _nbbuild.main(CELLS, OUT, __doc__.splitlines()[0], timeout=1800)
