"""Build experiments/notebooks/01_unified_view.ipynb from the cells below (the reviewable source).

    .venv/bin/python experiments/notebooks/_build_01.py            # write the notebook, no outputs
    .venv/bin/python experiments/notebooks/_build_01.py --execute  # ... executed, outputs stored

Edit the cells here, not in the .ipynb, and rebuild.
"""

import pathlib

import _nbbuild

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "01_unified_view.ipynb"

CELLS = [
    (
        "md",
        r"""
# 01 — The unified view, checked on toy data

One variance-preserving Gaussian diffusion: $z_t = \alpha_t x + \sigma_t \epsilon$, with
$\alpha^2 = \mathrm{sigmoid}(-\gamma)$, $\sigma^2 = \mathrm{sigmoid}(\gamma)$ and $\gamma = -\log \mathrm{SNR}$
(Kingma et al. 2021, *Variational Diffusion Models*; Luo 2022, *Understanding Diffusion Models: A Unified Perspective*).
On toy data whose noisy marginals are known in closed form, this notebook checks three claims:

1. **One model, three readings.** Predicting the clean data $x_0$, the noise $\epsilon$ and the score
   $\nabla \log q(z_t)$ are the same thing, tied by Tweedie's formula
   $\mathbb{E}[x \mid z_t] = (z_t + \sigma_t^2 \nabla \log q(z_t)) / \alpha_t$.
2. **Three ELBO terms.** $-\mathrm{ELBO} = $ reconstruction $+$ prior $+$ diffusion; with the optimal denoiser
   their sum is the exact negative log-likelihood (up to a closed-form gap under $10^{-3}$ bits/dim).
3. **Discrete to continuous.** The $T$-step ELBO approaches the continuous-time one as $T$ grows.

The last cell `assert`s the numbers shown, so `tests/test_notebooks.py` fails on a wrong result.
`VDM_NB_TINY=1` shrinks every sample size (the test uses it); the default sizes give clean figures in under a minute on a CPU.
""",
    ),
    (
        "code",
        r"""
import math
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from vdm import objectives, parameterization, schedules

TINY = os.environ.get("VDM_NB_TINY", "0") == "1"
NUM_Z = 256 if TINY else 4096                          # points z ~ q(z_t) per noise level (section 1)
REPLICATES, BATCH = (8, 512) if TINY else (64, 32768)  # ELBO Monte Carlo: independent batches x batch size
plt.rcParams["figure.dpi"] = 80                       # keeps the stored notebook small
KEY = jax.random.PRNGKey(0)
key_mix, key_elbo = jax.random.split(KEY)
print(f"TINY={TINY}, jax {jax.__version__} on {jax.default_backend()}")
""",
    ),
    (
        "md",
        r"""
## 1. Predicting $x_0$, $\epsilon$ and the score is one model

Data: a 2-D mixture $\sum_k \pi_k \mathcal{N}(\mu_k, s_k^2 I)$. Its noisy marginal is again a mixture,
$q(z_t) = \sum_k \pi_k \mathcal{N}(\alpha \mu_k, v_k I)$ with $v_k = \alpha^2 s_k^2 + \sigma^2$.

* **Score route.** Write $\log q(z_t)$ by hand, take its gradient with `jax.grad`, and let
  `vdm.parameterization.convert` turn that score into an $x_0$, an $\epsilon$ and a $v$ prediction.
* **Bayes route, independently.** Given the component $k$, $(x, z_t)$ and $(\epsilon, z_t)$ are jointly Gaussian, so
  $\mathbb{E}[x \mid z, k] = \mu_k + \frac{\alpha s_k^2}{v_k}(z - \alpha\mu_k)$ and
  $\mathbb{E}[\epsilon \mid z, k] = \frac{\sigma}{v_k}(z - \alpha \mu_k)$; average them with the responsibilities
  $r_k(z) = p(k \mid z_t)$. No score, no Tweedie.

If the unified view holds, the two routes agree to float precision at every noise level.
""",
    ),
    (
        "code",
        r"""
MEANS = jnp.array([[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]])   # mu_k  [K, 2]
STDS = jnp.array([0.15, 0.25, 0.2])                           # s_k   [K]
WEIGHTS = jnp.array([0.5, 0.3, 0.2])                          # pi_k  [K]


def component_log_joint(z, gamma):
    # log pi_k + log N(z; alpha mu_k, v_k I) for z [N, 2] -> [N, K]; also returns alpha, sigma, v [K].
    alpha, sigma = schedules.alpha_sigma(gamma)
    v = alpha**2 * STDS**2 + sigma**2
    sq = jnp.sum((z[:, None, :] - alpha * MEANS) ** 2, axis=-1)
    return jnp.log(WEIGHTS) - 0.5 * sq / v - jnp.log(2 * jnp.pi * v), alpha, sigma, v


def log_q(z, gamma):
    # log q(z_t) of one point z [2]: log-sum-exp over the components.
    return jax.nn.logsumexp(component_log_joint(z[None], gamma)[0][0])


score_by_grad = jax.jit(jax.vmap(jax.grad(log_q), in_axes=(0, None)))   # [N, 2] -> [N, 2]


@jax.jit
def bayes_posterior(z, gamma):
    # (E[x | z_t], E[eps | z_t]) by conditioning each Gaussian component, then mixing with p(k | z_t).
    logj, alpha, sigma, v = component_log_joint(z, gamma)
    r = jax.nn.softmax(logj, axis=-1)[..., None]                              # [N, K, 1]
    centred = z[:, None, :] - alpha * MEANS                                  # [N, K, 2]
    x_mean = jnp.sum(r * (MEANS + (alpha * STDS**2 / v)[:, None] * centred), axis=1)
    eps_mean = jnp.sum(r * (sigma / v)[:, None] * centred, axis=1)
    return x_mean, eps_mean


def sample_noisy(key, gamma, n):
    # z_t = alpha x + sigma eps with x from the mixture.
    k_c, k_x, k_e = jax.random.split(key, 3)
    comp = jax.random.choice(k_c, 3, (n,), p=WEIGHTS)
    x = MEANS[comp] + STDS[comp, None] * jax.random.normal(k_x, (n, 2))
    alpha, sigma = schedules.alpha_sigma(gamma)
    return alpha * x + sigma * jax.random.normal(k_e, (n, 2))
""",
    ),
    (
        "code",
        r"""
GAMMAS = [-8.0, -4.0, -1.0, 2.0, 5.0]
conversion_err = {}
print("max abs difference, score route vs Bayes route, over", NUM_Z, "points z ~ q(z_t)")
print(f"{'gamma':>6} {'x0 vs E[x|z]':>15} {'eps vs E[eps|z]':>17} {'v vs v_bayes':>14} {'max |score|':>12}")
for i, g in enumerate(GAMMAS):
    gamma = jnp.float32(g)
    z = sample_noisy(jax.random.fold_in(key_mix, i), gamma, NUM_Z)
    score = score_by_grad(z, gamma)
    x0 = parameterization.convert(score, z, gamma, source="score", target="x0")
    eps = parameterization.convert(score, z, gamma, source="score", target="eps")
    v = parameterization.convert(score, z, gamma, source="score", target="v")
    x_bayes, eps_bayes = bayes_posterior(z, gamma)
    alpha, sigma = schedules.alpha_sigma(gamma)
    v_bayes = alpha * eps_bayes - sigma * x_bayes
    conversion_err[g] = {name: float(jnp.max(jnp.abs(a - b)))
                         for name, a, b in [("x0", x0, x_bayes), ("eps", eps, eps_bayes), ("v", v, v_bayes)]}
    e = conversion_err[g]
    print(f"{g:6.1f} {e['x0']:15.2e} {e['eps']:17.2e} {e['v']:14.2e} {float(jnp.max(jnp.abs(score))):12.1f}")
""",
    ),
    (
        "md",
        r"""
The same predictions along the slice $z = (u, -0.5)$, through the two lower components, at three noise levels.
Solid lines: the score from `jax.grad` and its conversions. Dots: the Bayes route. At low noise ($\gamma=-4$)
$\mathbb{E}[x\mid z]$ snaps to the nearest component mean; at high noise it shrinks towards $\alpha\,\mathbb{E}[x]$.
""",
    ),
    (
        "code",
        r"""
u = jnp.linspace(-2.0, 2.0, 401)
z_line = jnp.stack([u, jnp.full_like(u, -0.5)], axis=-1)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for g, color in zip([-4.0, -1.0, 2.0], ["C0", "C1", "C2"]):
    gamma = jnp.float32(g)
    score = score_by_grad(z_line, gamma)
    x_bayes, eps_bayes = bayes_posterior(z_line, gamma)
    alpha, sigma = schedules.alpha_sigma(gamma)
    preds = [parameterization.convert(score, z_line, gamma, source="score", target="x0"),
             parameterization.convert(score, z_line, gamma, source="score", target="eps"), score]
    bayes = [x_bayes, eps_bayes, -eps_bayes / sigma]
    for ax, p, b in zip(axes, preds, bayes):
        ax.plot(u, p[:, 0], color=color, label=f"$\\gamma$={g:g}")
        ax.plot(u[::20], b[::20, 0], "o", color=color, ms=3.5)
titles = [r"$x_0$-prediction $\hat x_0(z)_1$ (Tweedie)", r"$\epsilon$-prediction $\hat\epsilon(z)_1$",
          r"score $\partial_{z_1}\log q(z_t)$"]
for ax, title in zip(axes, titles):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("$z_1$ (with $z_2 = -0.5$)")
    ax.axhline(0, color="0.8", lw=0.8)
axes[2].set_yscale("symlog", linthresh=1.0)
axes[0].legend(title="lines: score route, dots: Bayes", fontsize=8, title_fontsize=8)
fig.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        r"""
## 2. The three ELBO terms for Gaussian data

Data $x \sim \mathcal{N}(\mu, \mathrm{diag}(s^2))$ in $D=2$ dimensions, VDM's schedule $\gamma(t) = -13.3 + 18.3\,t$,
and the Gaussian decoder $p(x \mid z_0) = \mathcal{N}(z_0/\alpha_0, \sigma_0^2/\alpha_0^2)$.
The optimal denoiser is the posterior mean $\hat x_0(z_t) = \mu + \frac{\alpha s^2}{\alpha^2 s^2 + \sigma^2}(z_t - \alpha\mu)$,
given to `vdm.objectives.elbo` as an $x_0$-prediction.

Every expectation has a closed form, written here independently of the library
(per dimension; the $\epsilon$-MMSE at level $\gamma$ is $s^2/(s^2 + e^{\gamma})$):

| term | $\mathbb{E}_x[\cdot]$ |
|---|---|
| reconstruction $-\log p(x\mid z_0)$ | $\tfrac12(\log 2\pi + \gamma_0 + 1)$ |
| prior $\mathrm{KL}(q(z_1\mid x)\,\Vert\,\mathcal{N}(0,1))$ | $\tfrac12(\sigma_1^2 + \alpha_1^2(\mu^2 + s^2) - 1 - \log\sigma_1^2)$ |
| diffusion, continuous | $\tfrac12\int_{\gamma_0}^{\gamma_1} \frac{s^2}{s^2+e^{\gamma}}\,d\gamma = \tfrac12\big[\gamma - \log(s^2+e^{\gamma})\big]_{\gamma_0}^{\gamma_1}$ |
| diffusion, $T$ steps | $\sum_{i=1}^{T} \tfrac12 (e^{\gamma_i - \gamma_{i-1}} - 1)\,\frac{s^2}{s^2+e^{\gamma_i}}$, $\gamma_i = \gamma(i/T)$ |
| exact NLL $-\log \mathcal{N}(x;\mu,s^2)$ | $\tfrac12\log(2\pi s^2) + \tfrac12$ |

Monte Carlo: `REPLICATES` independent batches, each with antithetic $t$ (VDM's low-discrepancy sampler);
error bars are standard errors across the batch means. The gap $-\mathrm{ELBO}(x) - \mathrm{NLL}(x)$ is averaged
per example, on the same $x$.
""",
    ),
    (
        "code",
        r"""
MU = np.array([0.5, -0.25])
S = np.array([0.5, 1.0])
DIM = MU.size
G0, G1 = -13.3, 5.0
schedule = schedules.linear_logsnr(G0, G1)
NATS_TO_BPD = 1.0 / (DIM * math.log(2.0))


def optimal_x0(z, t):
    # E[x | z_t] for Gaussian data: mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (z - alpha mu); z [B, D], t [B].
    alpha, sigma = schedules.alpha_sigma(schedule(t)[:, None])
    return MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (z - alpha * MU)


def exact_nll(x):
    # -log N(x; mu, diag(s^2)) per example, [B].
    return jnp.sum(0.5 * jnp.log(2 * jnp.pi * S**2) + 0.5 * (x - MU) ** 2 / S**2, axis=-1)


def closed_form(num_steps):
    # E_x of each -ELBO term in nats (float64, numpy only).
    a1sq, s1sq = 1 / (1 + math.exp(G1)), 1 / (1 + math.exp(-G1))
    rec = DIM * 0.5 * (math.log(2 * math.pi) + G0 + 1.0)
    prior = np.sum(0.5 * (s1sq + a1sq * (MU**2 + S**2) - 1.0 - math.log(s1sq)))
    if num_steps == 0:
        f = lambda g: np.sum(g - np.log(S**2 + np.exp(g)))
        diff = 0.5 * (f(G1) - f(G0))
    else:
        g = G0 + (G1 - G0) * np.arange(num_steps + 1) / num_steps
        diff = np.sum(0.5 * np.expm1(np.diff(g)) * np.sum(S**2 / (S**2 + np.exp(g[1:, None])), axis=-1))
    return {"reconstruction": rec, "prior": prior, "diffusion": diff, "total": rec + prior + diff}


NLL_EXACT = float(np.sum(0.5 * np.log(2 * np.pi * S**2) + 0.5))


def mc_elbo(num_steps, key):
    # Per-replicate batch means of every -ELBO term and of -ELBO - NLL, in nats: dict of [REPLICATES].
    def one(k):
        k_x, k_elbo = jax.random.split(k)
        x = MU + S * jax.random.normal(k_x, (BATCH, DIM))
        terms = objectives.elbo(optimal_x0, x, k_elbo, schedule=schedule, parameterization="x0",
                                num_steps=num_steps, decoder="gaussian", antithetic=True)
        terms["gap"] = terms["total"] - exact_nll(x)
        return {name: jnp.mean(val) for name, val in terms.items()}
    out = jax.vmap(one)(jax.random.split(key, REPLICATES))
    return {name: np.asarray(val, np.float64) for name, val in out.items()}


def mean_se(a):
    return a.mean(), a.std(ddof=1) / math.sqrt(a.size)
""",
    ),
    (
        "code",
        r"""
mc = mc_elbo(0, key_elbo)
cf = closed_form(0)
print(f"{'term':>15} {'MC (bits/dim)':>22} {'closed form':>12}")
for name in ["reconstruction", "prior", "diffusion", "total"]:
    m, se = mean_se(mc[name])
    print(f"{name:>15} {m * NATS_TO_BPD:12.4f} ± {se * NATS_TO_BPD:.4f} {cf[name] * NATS_TO_BPD:12.4f}")
gap_mean, gap_se = mean_se(mc["gap"])
print(f"{'exact NLL':>15} {NLL_EXACT * NATS_TO_BPD:12.4f} {'':9} {NLL_EXACT * NATS_TO_BPD:12.4f}")
print(f"-ELBO - NLL: MC {gap_mean * NATS_TO_BPD:+.5f} ± {gap_se * NATS_TO_BPD:.5f} bits/dim, "
      f"closed form {(cf['total'] - NLL_EXACT) * NATS_TO_BPD:+.2e} bits/dim")

fig, ax = plt.subplots(figsize=(6.5, 3.4))
names = ["reconstruction", "prior", "diffusion", "total"]
vals = [mean_se(mc[n])[0] * NATS_TO_BPD for n in names]
errs = [mean_se(mc[n])[1] * NATS_TO_BPD for n in names]
bars = ax.bar(names, vals, yerr=errs, capsize=4, color=["C0", "C1", "C2", "0.4"])
ax.axhline(NLL_EXACT * NATS_TO_BPD, color="C3", ls="--", label=f"exact NLL: {NLL_EXACT * NATS_TO_BPD:.3f}")
ax.margins(y=0.12)
for b, v in zip(bars, vals):
    ax.annotate(f"{v:.3f}", (b.get_x() + b.get_width() / 2, v), ha="center",
                va="bottom" if v >= 0 else "top", fontsize=9)
ax.axhline(0, color="k", lw=0.6)
ax.set_ylabel("bits/dim")
ax.set_title("-ELBO terms, Gaussian data, optimal denoiser (continuous time)", fontsize=10)
ax.legend()
fig.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        r"""
The reconstruction term is negative: it is a *density* with a tiny decoder variance $e^{\gamma_0} = e^{-13.3}$, and
the diffusion term pays it back. The prior term is small but not zero ($\alpha_1^2 = \mathrm{sigmoid}(-5) \approx 0.007$).
Their sum is the exact NLL: the closed-form gap (the decoder's noise plus the prior mismatch at $t=1$) is under
$10^{-3}$ bits/dim, below the Monte-Carlo error.

## 3. From $T$ steps to continuous time

The same data and denoiser, now the $T$-step discrete ELBO (grid $t_i = i/T$). All $T$ share one key (common random
numbers), so the excess over continuous time, $\mathcal{L}_T - \mathcal{L}_\infty$, is estimated per replicate on the
same $x$, $\epsilon$ and $u$ with a much smaller error than either term alone. VDM shows that more steps always give
a tighter bound; here the excess falls like $1/T$ once $T$ is large.
""",
    ),
    (
        "code",
        r"""
STEPS = [1, 2, 5, 10, 100, 1000]
runs = {T: mc_elbo(T, key_elbo) for T in STEPS + [0]}
cfs = {T: closed_form(T)["total"] for T in STEPS + [0]}
print(f"{'T':>6} {'-ELBO MC (bits/dim)':>26} {'closed form':>13} {'excess over T=inf (MC)':>30} {'closed form':>12}")
for T in STEPS + [0]:
    m, se = mean_se(runs[T]["total"])
    dm, dse = mean_se(runs[T]["total"] - runs[0]["total"])
    label = "inf" if T == 0 else str(T)
    print(f"{label:>6} {m * NATS_TO_BPD:14.5g} ± {se * NATS_TO_BPD:9.2g} {cfs[T] * NATS_TO_BPD:13.5g} "
          f"{dm * NATS_TO_BPD:17.4g} ± {dse * NATS_TO_BPD:9.2g} {(cfs[T] - cfs[0]) * NATS_TO_BPD:12.4g}")
""",
    ),
    (
        "code",
        r"""
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.9))
steps = np.array(STEPS)
tot = np.array([mean_se(runs[T]["total"]) for T in STEPS]) * NATS_TO_BPD
exc = np.array([mean_se(runs[T]["total"] - runs[0]["total"]) for T in STEPS]) * NATS_TO_BPD
t_dense = np.unique(np.logspace(0, 3, 60).round().astype(int))
cf_dense = np.array([closed_form(T)["total"] for T in t_dense]) * NATS_TO_BPD
c_mean, c_se = np.array(mean_se(runs[0]["total"])) * NATS_TO_BPD

ax1.errorbar(steps, tot[:, 0], yerr=tot[:, 1], fmt="o", capsize=3, label="MC, T steps")
ax1.plot(t_dense, cf_dense, "k:", lw=1, label="closed form")
ax1.axhspan(c_mean - c_se, c_mean + c_se, color="C2", alpha=0.3)
ax1.axhline(c_mean, color="C2", label=f"continuous (T=$\\infty$): {c_mean:.3f}")
ax1.errorbar([1e4], [c_mean], yerr=[c_se], fmt="s", color="C2", capsize=3)   # drawn at "T = inf"
ax1.axhline(NLL_EXACT * NATS_TO_BPD, color="C3", ls="--", lw=1, label="exact NLL")
ax1.set(xscale="log", yscale="log", xlabel="T (steps)", ylabel="-ELBO (bits/dim)")
ax1.set_xticks([1, 10, 100, 1000, 1e4], ["1", "10", "100", "1000", "$\\infty$"])
ax1.set_title("discrete-time -ELBO", fontsize=10)
ax1.legend(fontsize=8)

ax2.errorbar(steps, exc[:, 0], yerr=exc[:, 1], fmt="o", capsize=3, label="MC (paired with T=$\\infty$)")
ax2.plot(t_dense, cf_dense - closed_form(0)["total"] * NATS_TO_BPD, "k:", lw=1, label="closed form")
ax2.plot(steps, exc[-1, 0] * 1000 / steps, color="0.6", lw=0.8, label="slope 1/T")
ax2.set(xscale="log", yscale="log", xlabel="T (steps)", ylabel="bits/dim")
ax2.set_title(r"excess $\mathcal{L}_T - \mathcal{L}_\infty$", fontsize=10)
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()
""",
    ),
    (
        "md",
        r"""
## 4. Checks

Plain `assert`s on the numbers above (the notebook test fails if any is false). Monte-Carlo comparisons allow
4 standard errors; float32 comparisons allow $10^{-4}$ (absolute) or $10^{-5}$ (relative).
""",
    ),
    (
        "code",
        r"""
# 1. The score route and the Bayes route agree: x0, eps and v to 1e-4 at every noise level.
worst = max(max(e.values()) for e in conversion_err.values())
assert worst < 1e-4, conversion_err

# 2. Each ELBO term matches its closed form; the sum matches the exact NLL within MC error.
for name in ["reconstruction", "prior", "diffusion", "total"]:
    m, se = mean_se(mc[name])
    assert abs(m - cf[name]) < 4 * se + 1e-5 * abs(cf[name]) + 1e-6, (name, m, se, cf[name])
gap_closed = cf["total"] - NLL_EXACT
assert 0 <= gap_closed * NATS_TO_BPD < 1e-3, gap_closed                  # the bound is (nearly) tight
assert abs(gap_mean - gap_closed) < 4 * gap_se, (gap_mean, gap_se, gap_closed)

# 3. Every T matches its closed form; the bound tightens monotonically towards continuous time, like 1/T.
for T in STEPS + [0]:
    m, se = mean_se(runs[T]["total"])
    assert abs(m - cfs[T]) < 4 * se + 1e-5 * abs(cfs[T]), (T, m, se, cfs[T])
    if T:
        dm, dse = mean_se(runs[T]["total"] - runs[0]["total"])
        assert abs(dm - (cfs[T] - cfs[0])) < 4 * dse + 1e-5 * abs(cfs[T]), (T, dm, dse)
assert all(cfs[a] > cfs[b] for a, b in zip(STEPS, STEPS[1:])) and cfs[STEPS[-1]] > cfs[0]
ratio = (cfs[100] - cfs[0]) / (cfs[1000] - cfs[0])
assert 8 < ratio < 12, ratio                                               # excess ~ 1/T
print("all checks passed")
""",
    ),
]


if __name__ == "__main__":
    _nbbuild.main(CELLS, OUT, __doc__.splitlines()[0], timeout=600)
