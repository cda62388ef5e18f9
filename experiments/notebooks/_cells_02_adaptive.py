"""Notebook 02's section on VDM++'s adaptive noise schedule and the importance-sampled ELBO (cells for _build_02.py).

Closed forms on Gaussian data, then a real run's p(lambda); edit here and rebuild with _build_02.py.
"""

CELLS = [
    (
        "md",
        r"""
## The adaptive noise schedule (VDM++) and an importance-sampled ELBO

The diffusion term of the ELBO is an integral over the log-SNR $\lambda = -\gamma$,
$\mathcal{L}_\infty = \int \tfrac12\, \mathbb{E}\,\|\epsilon - \hat\epsilon\|^2\, d\lambda$, and drawing $t$ from any
density $q(t) > 0$ with the per-example weight $1/q(t)$, $\tfrac12 \gamma'(t)\, \|\epsilon - \hat\epsilon\|^2 / q(t)$,
keeps its expectation (`vdm.objectives.neg_elbo_terms(..., t_density=q)`). VDM++ (Kingma & Gao 2023, app. F) learns
$q$ during training: a histogram over $K$ equal-width $\lambda$ bins keeps a moving average of the integrand per unit
$\lambda$ seen in each bin, and $p(\lambda) \propto$ that average, mixed with a uniform share $m$, is the next step's
proposal (`vdm.core.t_sampling`: `draw`, `integrand`, `update`, `bin_probs`). The variance is lowest when $p$ follows the
integrand.

**A case with the answer in closed form.** Data $x \sim \mathcal{N}(0, s^2 I_D)$ and the exact (Bayes) predictor
$\hat\epsilon = \sigma_t z_t / (\alpha_t^2 s^2 + \sigma_t^2)$, with $\alpha^2 = \mathrm{sigmoid}(-\gamma)$,
$\sigma^2 = \mathrm{sigmoid}(\gamma)$. The integrand per unit $\lambda$ is then
$$g(\lambda) = \frac{D}{2}\, \frac{s^2 e^\lambda}{s^2 e^\lambda + 1}, \qquad
\mathcal{L}_\infty = \frac{D}{2} \Big[\log\big(1 + s^2 e^{\lambda}\big)\Big]_{\lambda_\min}^{\lambda_\max},$$
$\lambda_\min = -\gamma(1)$, $\lambda_\max = -\gamma(0)$, under `schedules.linear_logsnr()` (VDM's $\gamma \in [-13.3, 5]$).
With a small $s$ the integrand is close to zero over much of the $\lambda$ range, so uniform $t$ (uniform $\lambda$ for
this schedule) wastes draws there. The loop below is VDM++'s, with the library's functions: each step draws a batch
of $t$ from the current histogram, computes the importance-weighted diffusion term, and feeds its integrand values
to `update`; a uniform-$t$ estimator runs alongside on fresh draws of its own, for comparison.
""",
    ),
    (
        "code",
        r"""
import jax
import jax.numpy as jnp
from vdm import objectives, schedules
from vdm.core import t_sampling
from vdm.tasks.diffusion_model import IMPORTANCE_BINS, IMPORTANCE_UNIFORM

SCHED = schedules.linear_logsnr()
GAMMA_0, GAMMA_1 = float(SCHED(0.0)), float(SCHED(1.0))
LAM_LO, LAM_HI = -GAMMA_1, -GAMMA_0
D, S = 4, 0.05                            # data x ~ N(0, S^2 I_D)
K, DECAY, MIX = 50, 0.99, 0.1             # lambda bins, moving-average decay, uniform share (configs/base.py: 100, 0.99, 0.1)
STEPS, BATCH = (300, 32) if TINY else (600, 64)


def exact_eps(z, t):
    # the Bayes eps-predictor for Gaussian data: E[eps | z_t] = sigma z / (alpha^2 s^2 + sigma^2)
    g = SCHED(t)[:, None]
    alpha2, sigma2 = jax.nn.sigmoid(-g), jax.nn.sigmoid(g)
    return jnp.sqrt(sigma2) * z / (alpha2 * S**2 + sigma2)


def antiderivative(lam):                  # (D/2) log(1 + s^2 e^lambda): the integral of g(lambda)
    return 0.5 * D * np.log1p(S**2 * np.exp(lam))


L_TRUE = antiderivative(LAM_HI) - antiderivative(LAM_LO)      # the closed-form diffusion term (nats)
EDGES = t_sampling.lambda_edges(GAMMA_0, GAMMA_1, K)
edges64 = np.asarray(EDGES, np.float64)
g_bins = np.diff(antiderivative(edges64))                     # integral of g over each bin
P_TARGET = (1 - MIX) * g_bins / g_bins.sum() + MIX / K         # what the histogram should converge to


def diffusion_term(key, t, density=None):
    # per-example ELBO diffusion term at t (fresh x, eps), divided by q(t) when t was drawn from q
    kx, ke, k0 = jax.random.split(key, 3)
    x = S * jax.random.normal(kx, (t.shape[0], D))
    eps, eps_0 = jax.random.normal(ke, x.shape), jax.random.normal(k0, x.shape)
    return objectives.neg_elbo_terms(exact_eps, x, t, eps, eps_0, schedule=SCHED, decoder="gaussian",
                                     t_density=density)["diffusion"]


def vdmpp_step(hist, key):
    kb, ki, kd, ku, kt = jax.random.split(key, 5)
    probs = t_sampling.bin_probs(hist, MIX)
    drawn = t_sampling.draw(jax.random.uniform(kb, (BATCH,)), jax.random.uniform(ki, (BATCH,)), probs, EDGES, SCHED)
    est = diffusion_term(kd, drawn["t"], drawn["density"])
    _, dgamma = schedules.dgamma_dt(SCHED, drawn["t"])
    hist = t_sampling.update(hist, drawn["bin"], t_sampling.integrand(est, drawn["density"], dgamma), DECAY)
    est_uniform = diffusion_term(ku, jax.random.uniform(kt, (BATCH,)))
    return hist, (est, est_uniform)


run_loop = jax.jit(lambda key: jax.lax.scan(vdmpp_step, t_sampling.init_histogram(K), jax.random.split(key, STEPS)))
hist, (est_a, est_u) = run_loop(jax.random.PRNGKey(0))
est_a, est_u = np.asarray(est_a, np.float64), np.asarray(est_u, np.float64)      # [STEPS, BATCH]
p_final = np.asarray(t_sampling.bin_probs(hist, MIX), np.float64)
tv = 0.5 * np.abs(p_final - P_TARGET).sum()
tv_uniform = 0.5 * np.abs(1.0 / K - P_TARGET).sum()


def mean_se(a):
    a = np.ravel(a)
    return a.mean(), a.std(ddof=1) / np.sqrt(a.size)


# per-example variance: measured over the loop's second half (the histogram has settled), and exact for a fixed p:
# the integrand value v at lambda is (e/2) chi^2_D with e = 2 g / D, so E[v^2 | lambda] = (e/2)^2 (D^2 + 2D) and
# Var = integral E[v^2 | lambda] / p(lambda) dlambda - L^2 (p per unit lambda; uniform t: p = 1 / (lambda range)).
half = STEPS // 2
var_a, var_u = est_a[half:].var(ddof=1), est_u[half:].var(ddof=1)
lam = np.linspace(LAM_LO, LAM_HI, 20001)
snr_s2 = S**2 * np.exp(lam)
ev2 = (snr_s2 / (snr_s2 + 1) / 2) ** 2 * (D**2 + 2 * D)
k_of = np.clip(np.searchsorted(edges64, lam, side="right") - 1, 0, K - 1)
exact_var = lambda p_per_lam: np.trapezoid(ev2 / p_per_lam, lam) - L_TRUE**2
var_u_exact = exact_var(np.full_like(lam, 1.0 / (LAM_HI - LAM_LO)))
var_a_exact = exact_var(p_final[k_of] / np.diff(edges64)[k_of])
(m_a, se_a), (m_u, se_u) = mean_se(est_a), mean_se(est_u)
print(f"{STEPS} steps x {BATCH} examples; D = {D}, s = {S}, lambda in [{LAM_LO:.1f}, {LAM_HI:.1f}], {K} bins")
print(f"total-variation distance of the learned p to the closed-form target: {tv:.4f} (uniform p: {tv_uniform:.3f})")
display(Markdown("\n".join([
    "| estimator of the diffusion term | mean (nats) | SE | (mean - closed form) / SE | per-example variance, 2nd half | exact variance for its p |",
    "|---|---|---|---|---|---|",
    f"| uniform $t$ | {m_u:.4f} | {se_u:.4f} | {(m_u - L_TRUE) / se_u:+.2f} | {var_u:.1f} | {var_u_exact:.1f} |",
    f"| adaptive (VDM++) | {m_a:.4f} | {se_a:.4f} | {(m_a - L_TRUE) / se_a:+.2f} | {var_a:.1f} | {var_a_exact:.1f} (final p) |",
    f"| closed form | {L_TRUE:.4f} | | | | |",
    "", f"Variance ratio uniform / adaptive: **{var_u / var_a:.2f}** measured, {var_u_exact / var_a_exact:.2f} exact."])))
""",
    ),
    (
        "code",
        r"""
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
widths = np.diff(edges64)
axes[0].stairs(p_final / widths, edges64, lw=2, label=f"learned p(λ), after {STEPS} steps")
axes[0].stairs(P_TARGET / widths, edges64, ls="--", color="k", label=f"closed form, mixed with {MIX:.0%} uniform")
axes[0].plot(lam, 0.5 * D * snr_s2 / (snr_s2 + 1) / L_TRUE, color="C3", lw=1,
             label="g(λ) / ∫g (normalised integrand)")
axes[0].axhline(1 / (LAM_HI - LAM_LO), color="gray", lw=0.8, ls=":", label="uniform t")
axes[0].set(xlabel="λ = log SNR", ylabel="density per unit λ", title=f"TV distance {tv:.3f}")
axes[0].legend(fontsize=8)
n_seen = BATCH * np.arange(1, STEPS + 1)
for est, name in ((est_u, "uniform t"), (est_a, "adaptive (VDM++)")):
    running = np.cumsum(est.sum(axis=1)) / n_seen
    axes[1].plot(n_seen, running, label=name)
axes[1].axhline(L_TRUE, color="k", ls="--", lw=1, label="closed form")
axes[1].set(xlabel="examples seen", ylabel="running mean of the diffusion term (nats)", xscale="log",
            ylim=(L_TRUE - 4 * se_u * np.sqrt(STEPS / 4), L_TRUE + 4 * se_u * np.sqrt(STEPS / 4)))
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

TV_BOUND = 0.05
assert tv < TV_BOUND, (tv, TV_BOUND)            # the histogram found the integrand's shape (uniform p: ~0.46)
assert abs(m_u - L_TRUE) < 4 * se_u, (m_u, se_u, L_TRUE)
assert abs(m_a - L_TRUE) < 4 * se_a, (m_a, se_a, L_TRUE)
assert var_u / var_a > 2.0, (var_u, var_a)      # exact ratio for the target p is about 4
print(f"checks passed: TV {tv:.4f} < {TV_BOUND}; both means within 4 SE of {L_TRUE:.4f}; variance ratio {var_u / var_a:.2f} > 2")
""",
    ),
    (
        "md",
        r"""
### An importance-sampled evaluation ELBO

At evaluation the model is fixed, so the proposal can come from a short **pilot pass** instead of a running
histogram: `config.eval.t_sampling='importance'` evaluates the integrand at uniform $t$ on a few training examples,
takes the per-bin root mean square (`t_sampling.rms_histogram`; for a fixed model the variance-optimal density is
$\propto \sqrt{\mathbb{E}[v^2 \mid \lambda]}$), mixes in a uniform share (`bin_probs`), and then draws one $t$ per test
example from it (`draw`) and divides by $q(t)$ — `diffusion_model.pilot_eval_step`, `importance_proposal` and
`importance_eval_step`. Below, the same steps on the Gaussian case, with the library's bin count and uniform share:
the plain estimator ($t \sim U(0,1)$, one draw per example) against the importance-sampled one at the same number of
network evaluations; the pilot's evaluations are counted separately.
""",
    ),
    (
        "code",
        r"""
N_EVAL, N_PILOT = (1024, 256) if TINY else (4096, 1024)
k_pilot, k_pilot_t, k_is, k_bin, k_in, k_plain, k_plain_t = jax.random.split(jax.random.PRNGKey(1), 7)
t_pilot = jax.random.uniform(k_pilot_t, (N_PILOT,))
pilot_loss = diffusion_term(k_pilot, t_pilot)                    # uniform t: density 1
gamma_pilot, dgamma_pilot = schedules.dgamma_dt(SCHED, t_pilot)
pilot_values = t_sampling.integrand(pilot_loss, jnp.ones_like(t_pilot), dgamma_pilot)
edges_is = t_sampling.lambda_edges(GAMMA_0, GAMMA_1, IMPORTANCE_BINS)
proposal = t_sampling.bin_probs(t_sampling.rms_histogram(t_sampling.bin_index(-gamma_pilot, edges_is), pilot_values,
                                                         IMPORTANCE_BINS), IMPORTANCE_UNIFORM)
drawn = t_sampling.draw(jax.random.uniform(k_bin, (N_EVAL,)), jax.random.uniform(k_in, (N_EVAL,)), proposal,
                        edges_is, SCHED)
est_is = np.asarray(diffusion_term(k_is, drawn["t"], drawn["density"]), np.float64)
est_plain = np.asarray(diffusion_term(k_plain, jax.random.uniform(k_plain_t, (N_EVAL,))), np.float64)
(m_is, se_is), (m_pl, se_pl) = mean_se(est_is), mean_se(est_plain)
display(Markdown("\n".join([
    "| estimator | network evaluations | mean (nats) | SE | (mean - closed form) / SE |", "|---|---|---|---|---|",
    f"| plain, $t \\sim U(0,1)$ | {N_EVAL} | {m_pl:.4f} | {se_pl:.4f} | {(m_pl - L_TRUE) / se_pl:+.2f} |",
    f"| importance-sampled | {N_EVAL} (+ {N_PILOT} pilot) | {m_is:.4f} | {se_is:.4f} | {(m_is - L_TRUE) / se_is:+.2f} |",
    f"| closed form | | {L_TRUE:.4f} | | |",
    "", f"{IMPORTANCE_BINS} bins, uniform share {IMPORTANCE_UNIFORM}; SE ratio plain / importance: **{se_pl / se_is:.2f}** "
    f"(the same SE from the plain estimator would take about {(se_pl / se_is) ** 2:.1f}x the evaluations)."])))

diff_se = np.hypot(se_is, se_pl)
assert abs(m_is - m_pl) < 4 * diff_se, (m_is, m_pl, diff_se)    # the same mean, within the SE of the difference
assert abs(m_is - L_TRUE) < 4 * se_is and abs(m_pl - L_TRUE) < 4 * se_pl, (m_is, se_is, m_pl, se_pl, L_TRUE)
assert se_is < 0.8 * se_pl, (se_is, se_pl)
print(f"checks passed: means agree ({(m_is - m_pl) / diff_se:+.2f} SE of the difference), SE {se_is:.4f} < 0.8 x {se_pl:.4f}")
""",
    ),
    (
        "md",
        r"""
### The histogram of a real training run

A run with `--config.loss.t_sampling=adaptive` logs the histogram's $K + 1$ $\lambda$ edges and $K$ bin
probabilities to `metrics.jsonl` at each log step (`train/t_histogram/edges`, `train/t_histogram/probs`; TensorBoard
gets it as a histogram). Source, in order: `VDM_ADAPTIVE_WORKDIR` (a workdir); the committed
`experiments/results/adaptive_t_histogram.jsonl` (the histogram rows of a Fashion-MNIST adaptive run), when present;
otherwise — and always with `VDM_NB_TINY=1` — a short `toy2d:small` run trained here through the real CLI.
The plot shows $p(\lambda)$ per unit $\lambda$ at a few logged steps.
""",
    ),
    (
        "code",
        r"""
import json

ADAPTIVE_FILE = REPO / "experiments" / "results" / "adaptive_t_histogram.jsonl"


def train_toy_adaptive():
    workdir = tempfile.mkdtemp(prefix="vdm_nb02_adaptive_")
    steps, every = (40, 10) if TINY else (400, 50)
    cmd = [sys.executable, "-m", "vdm.main", "--config=configs/toy2d.py:small", f"--workdir={workdir}",
           "--config.loss.t_sampling=adaptive", f"--config.training.num_steps={steps}",
           f"--config.training.log_every={every}", f"--config.training.eval_every={steps}",
           f"--config.training.checkpoint_every={steps}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pathlib.Path(workdir) / "metrics.jsonl", f"toy2d:small, {steps} steps, trained here"


if TINY:
    hist_path, hist_source = train_toy_adaptive()
elif os.environ.get("VDM_ADAPTIVE_WORKDIR"):
    hist_path = pathlib.Path(os.environ["VDM_ADAPTIVE_WORKDIR"]) / "metrics.jsonl"
    hist_source = f"VDM_ADAPTIVE_WORKDIR={os.environ['VDM_ADAPTIVE_WORKDIR']}"
elif ADAPTIVE_FILE.exists():
    hist_path, hist_source = ADAPTIVE_FILE, str(ADAPTIVE_FILE.relative_to(REPO))
else:
    hist_path, hist_source = train_toy_adaptive()
logged = {}                                    # step -> (edges, probs); a resumed run may repeat a step: the last wins
with open(hist_path, encoding="utf-8") as f:
    for line in f:
        rec = json.loads(line) if line.strip() else {}
        if "train/t_histogram/probs" in rec:
            logged[rec["step"]] = (np.asarray(rec["train/t_histogram/edges"], np.float64),
                                   np.asarray(rec["train/t_histogram/probs"], np.float64))
steps_logged = sorted(logged)
print(f"{hist_source}: {len(steps_logged)} logged histograms, steps {steps_logged[0]} ... {steps_logged[-1]}, "
      f"{len(logged[steps_logged[-1]][1])} bins")

shown = sorted({steps_logged[int(i)] for i in np.linspace(0, len(steps_logged) - 1, min(5, len(steps_logged)))})
fig, ax = plt.subplots(figsize=(7, 4))
for i, step in enumerate(shown):
    e, p = logged[step]
    ax.stairs(p / np.diff(e), e, color=plt.cm.viridis(i / max(1, len(shown) - 1)), label=f"step {step}")
e_last = logged[steps_logged[-1]][0]
ax.axhline(1 / (e_last[-1] - e_last[0]), color="gray", ls=":", lw=0.8, label="uniform")
ax.set(xlabel="λ = log SNR", ylabel="p(λ) per unit λ", title=hist_source)
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

for step in steps_logged:
    e, p = logged[step]
    assert e.ndim == 1 and p.shape == (len(e) - 1,), (step, e.shape, p.shape)      # K = len(edges) - 1
    assert np.all(np.diff(e) > 0) and np.all(np.isfinite(p)), step
    assert np.all(p >= 0) and abs(p.sum() - 1) < 1e-4, (step, p.min(), p.sum())
print(f"checks passed: at all {len(steps_logged)} logged steps p is a distribution over its {len(e) - 1} lambda bins")
""",
    ),
]
