"""Gap between the ELBO and the exact NLL on Gaussian data, with the Bayes-optimal denoiser.

x ~ N(0, diag(s^2)) in 4 dims (s = 0.1, 0.5, 1, 3), linear log-SNR schedule on [-13.3, 5],
Gaussian decoder. Prints a Markdown table of E[-ELBO(x) - NLL(x)] (Monte Carlo, with its standard
error) next to its closed form, and the same for the probability-flow ODE NLL (whose expected gap
is the prior mismatch KL(q(z_1) || N(0, I))); writes it to experiments/results/gaussian_elbo_gap.md.

    python experiments/gaussian_elbo_gap.py [--n=200000]
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vdm import likelihood, objectives, schedules

SCALES = np.array([0.1, 0.5, 1.0, 3.0])
G0, G1 = -13.3, 5.0


def closed_form_gap(num_steps: int) -> float:
    """E[-ELBO] - E[NLL] in closed form (decoder, prior and diffusion terms; see tests/test_objectives.py)."""
    s = SCALES
    a1, s1 = 1 / (1 + math.exp(G1)), 1 / (1 + math.exp(-G1))
    rec = len(s) * 0.5 * (math.log(2 * math.pi) + G0 + 1.0)
    prior = np.sum(0.5 * (s1 + a1 * s**2 - 1 - math.log(s1)))
    if num_steps == 0:
        f = lambda g: np.sum(g - np.log(s**2 + np.exp(g)))
        diff = 0.5 * (f(G1) - f(G0))
    else:
        g = G0 + (G1 - G0) * np.arange(num_steps + 1) / num_steps
        diff = sum(
            0.5 * np.expm1(g[i] - g[i - 1]) * np.sum(s**2 / (s**2 + np.exp(g[i]))) for i in range(1, num_steps + 1)
        )
    return rec + prior + diff - np.sum(0.5 * np.log(2 * np.pi * s**2) + 0.5)


def main(argv: list[str]) -> None:
    """Print the gap table for --n examples and write it to experiments/results/gaussian_elbo_gap.md."""
    del argv
    args = flags.FLAGS
    sched = schedules.linear_logsnr(G0, G1)
    s32 = jnp.asarray(SCALES, jnp.float32)

    def denoise(z, t):
        """The Bayes-optimal eps prediction E[eps | z_t] for Gaussian data x ~ N(0, diag(s^2))."""
        g = sched(t)[:, None]
        a2, v2 = jax.nn.sigmoid(-g), jax.nn.sigmoid(g)
        return jnp.sqrt(v2) * z / (a2 * s32**2 + v2)

    x = np.random.default_rng(args.seed).normal(size=(args.n, 4)) * SCALES
    nll = np.sum(0.5 * np.log(2 * np.pi * SCALES**2) + 0.5 * x**2 / SCALES**2, axis=1)
    rows = ["| T | MC E[-ELBO - NLL] (nats) | std. error | closed form |", "|---|---|---|---|"]
    for T in (0, 10, 100, 1000):
        fn = jax.jit(
            lambda x, k: objectives.elbo(
                denoise, x, k, schedule=sched, num_steps=T, decoder="gaussian", antithetic=True
            )["total"]
        )
        gap = np.asarray(fn(jnp.asarray(x, jnp.float32), jax.random.PRNGKey(args.seed + T)), np.float64) - nll
        label = "continuous" if T == 0 else str(T)
        rows.append(
            f"| {label} | {gap.mean():+.4f} | {gap.std() / math.sqrt(args.n):.4f} | {closed_form_gap(T):+.4f} |"
        )
    # The probability-flow ODE likelihood of the same model (vdm.likelihood.ode_nll): its expected
    # gap to the NLL is KL(q(z_1) || N(0, I)) = the closed-form prior mismatch below.
    a1, v1 = 1 / (1 + math.exp(G1)), 1 / (1 + math.exp(-G1))
    prior_mismatch = float(np.sum(0.5 * (a1 * SCALES**2 + v1 - 1 - np.log(a1 * SCALES**2 + v1))))
    n_ode = min(args.n, 4000)
    xo = jnp.asarray(x[:n_ode], jnp.float32)
    for trace in ("exact", "hutchinson"):
        fn = jax.jit(lambda x, k: likelihood.ode_nll(denoise, x, k, schedule=sched, num_steps=64, trace=trace))
        gap = np.asarray(fn(xo, jax.random.PRNGKey(args.seed + 7)), np.float64) - nll[:n_ode]
        rows.append(
            f"| ODE, {trace} trace, 64 RK4 steps, n={n_ode} | {gap.mean():+.4f} | "
            f"{gap.std() / math.sqrt(n_ode):.4f} | {prior_mismatch:+.4f} |"
        )
    table = "\n".join(rows)
    print(table)
    out = pathlib.Path(__file__).parent / "results" / "gaussian_elbo_gap.md"
    out.write_text(f"Gaussian data, 4 dims, n={args.n}, seed={args.seed}\n\n{table}\n")


if __name__ == "__main__":
    flags.DEFINE_integer("n", 200_000, "Gaussian examples")
    flags.DEFINE_integer("seed", 0, "seed of the data and the keys")
    app.run(main)
