"""Learned reverse variance (improved DDPM): the per-step KL, the hybrid loss, the head, the samplers.

Independent truth: the Gaussian KL written out in float64 numpy from DDPM's posterior formulas;
on Gaussian data x ~ N(0, s^2 I) the L_vlb-optimal isotropic variance of each step in closed form
(Bao et al. 2022, Analytic-DPM, Thm. 1), recovered by fitting a free v per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdm import diffusion, sampling, schedules
from vdm import objectives as O
from vdm.core.discrete_time import hybrid_diffusion_term, step_kl
from vdm.parameterization import split_variance, variance_weight

SCHED = schedules.linear_logsnr(-8.0, 6.0)


def _np_moments(gamma_s, gamma_t):
    """(alpha_s^2, alpha_t^2, beta, beta_tilde) in float64 from abar = sigmoid(-gamma) (Ho et al. 2020, eq. 7)."""
    abar_s, abar_t = 1 / (1 + np.exp(gamma_s)), 1 / (1 + np.exp(gamma_t))
    beta = 1 - abar_t / abar_s
    return abar_s, abar_t, beta, (1 - abar_s) / (1 - abar_t) * beta


def test_step_kl_with_a_learned_variance_is_the_gaussian_kl():
    rng = np.random.default_rng(0)
    gamma_s, gamma_t = -3.0, -1.5
    x, x_hat, eps = rng.normal(size=(3, 50))
    v = rng.uniform(-0.3, 1.3, size=50)  # the 'interp' head is unconstrained
    abar_s, abar_t, beta, beta_tilde = _np_moments(gamma_s, gamma_t)
    z_t = np.sqrt(abar_t) * x + np.sqrt(1 - abar_t) * eps
    # DDPM eq. 7: mu = sqrt(abar_s) beta / (1 - abar_t) x0 + sqrt(abar_t / abar_s) (1 - abar_s) / (1 - abar_t) z_t
    mean = lambda x0: (np.sqrt(abar_s) * beta * x0 + np.sqrt(abar_t / abar_s) * (1 - abar_s) * z_t) / (1 - abar_t)
    sigma2 = np.exp(v * np.log(beta) + (1 - v) * np.log(beta_tilde))
    kl = 0.5 * (np.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1 + (mean(x) - mean(x_hat)) ** 2 / sigma2)
    eps_hat = (z_t - np.sqrt(abar_t) * x_hat) / np.sqrt(1 - abar_t)
    got = step_kl(
        jnp.asarray(eps, jnp.float32),
        jnp.asarray(eps_hat, jnp.float32),
        jnp.float32(gamma_s),
        jnp.float32(gamma_t),
        "learned",
        jnp.asarray(v, jnp.float32),
    )
    np.testing.assert_allclose(np.asarray(got), kl, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("v, fixed", [(0.0, "small"), (1.0, "large")])
def test_discrete_term_with_v_at_an_end_is_the_fixed_variance_term(v, fixed):
    key = jax.random.PRNGKey(1)
    x = jax.random.uniform(key, (64, 6), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    t = O.discretize_t(jax.random.uniform(jax.random.fold_in(key, 2), (64,)), 20)
    pred = lambda z, t: 0.3 * z
    kw = dict(schedule=SCHED, parameterization="eps", num_steps=20)
    learned = O.discrete_diffusion_term(
        lambda z, t: (pred(z, t), jnp.full_like(z, v)), x, eps, t, variance="learned", **kw
    )
    np.testing.assert_allclose(learned, O.discrete_diffusion_term(pred, x, eps, t, variance=fixed, **kw), rtol=1e-5)
    if fixed == "small":  # ... and today's term, T/2 expm1(g_t - g_s) ||eps - eps_hat||^2 (VDM eq. 13)
        g_t, g_s = SCHED(t), SCHED(t - 1 / 20)
        z = jnp.sqrt(jax.nn.sigmoid(-g_t))[:, None] * x + jnp.sqrt(jax.nn.sigmoid(g_t))[:, None] * eps
        want = 10 * jnp.expm1(g_t - g_s) * jnp.sum(jnp.square(eps - pred(z, t)), axis=1)
        np.testing.assert_allclose(learned, want, rtol=1e-4)


def test_hybrid_loss_trains_the_mean_by_its_weighting_and_the_variance_by_lambda_l_vlb_in_bits():
    key = jax.random.PRNGKey(2)
    x = jax.random.uniform(key, (32, 4), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    t = O.discretize_t(jax.random.uniform(jax.random.fold_in(key, 2), (32,)), 10)
    w = jnp.ones((32,))
    kw = dict(schedule=SCHED, parameterization="eps", num_steps=10)

    def losses(a, b):
        fn = lambda z, t: (a * z, jnp.full_like(z, b))
        return hybrid_diffusion_term(fn, x, eps, t, w, hybrid_lambda=0.01, **kw)

    ga = jax.grad(lambda a: jnp.mean(losses(a, 0.3)[0]))(0.5)
    g_mean = jax.grad(
        lambda a: jnp.mean(
            w
            * jnp.sum(
                jnp.square(
                    eps
                    - a
                    * jax.lax.stop_gradient(
                        jnp.sqrt(jax.nn.sigmoid(-SCHED(t)))[:, None] * x
                        + jnp.sqrt(jax.nn.sigmoid(SCHED(t)))[:, None] * eps
                    )
                ),
                axis=1,
            )
        )
    )(0.5)
    np.testing.assert_allclose(ga, g_mean, rtol=1e-5)  # the stop-gradient: L_vlb adds nothing to the mean
    gb = jax.grad(lambda b: jnp.mean(losses(0.5, b)[0]))(0.3)
    gb_vlb = jax.grad(lambda b: jnp.mean(losses(0.5, b)[1]))(0.3)
    np.testing.assert_allclose(gb, 0.01 / np.log(2.0) * gb_vlb, rtol=1e-5)  # lambda multiplies L_vlb in bits
    vlb = losses(0.5, 0.3)[1]  # L_vlb is the discrete ELBO's term with that variance
    fn = lambda z, t: (0.5 * z, jnp.full_like(z, 0.3))
    np.testing.assert_allclose(vlb, O.discrete_diffusion_term(fn, x, eps, t, variance="learned", **kw), rtol=1e-6)


def _optimal_variance(gamma_s, gamma_t, s2):
    """Analytic-DPM (Bao et al. 2022, Thm. 1) for data N(0, s2 I): the optimal isotropic reverse variance
    lambda^2 + (sqrt(bbar_t / a_t) - sqrt(bbar_s - lambda^2))^2 (1 - bbar_t E||grad log q_t||^2 / d), with
    bbar = 1 - abar, a_t = abar_t / abar_s, lambda^2 = beta_tilde and bbar_t E||grad log q_t||^2 = E||eps_hat||^2,
    E||eps_hat||^2 / d = sigma^2 / (alpha^2 s2 + sigma^2)."""
    abar_s, abar_t, beta, beta_tilde = _np_moments(gamma_s, gamma_t)
    e_eps2 = (1 - abar_t) / (abar_t * s2 + 1 - abar_t)
    coef = np.sqrt((1 - abar_t) / (abar_t / abar_s)) - np.sqrt(1 - abar_s - beta_tilde)
    return beta_tilde + coef**2 * (1 - e_eps2), beta, beta_tilde


def test_fitting_a_free_v_per_step_recovers_the_analytic_dpm_optimal_variance():
    """With the exact mean on Gaussian data, minimising L_vlb over one v per step gives Analytic-DPM's variance."""
    s2, T, n, d = 0.25, 10, 16384, 4
    key = jax.random.PRNGKey(3)
    x = jnp.sqrt(s2) * jax.random.normal(key, (n * T, d))
    eps = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    t = jnp.repeat(jnp.arange(1, T + 1) / T, n)

    def exact_eps(z, t):  # E[eps | z_t] for x ~ N(0, s2 I)
        a2, sg2 = jax.nn.sigmoid(-SCHED(t))[:, None], jax.nn.sigmoid(SCHED(t))[:, None]
        return jnp.sqrt(sg2) * z / (a2 * s2 + sg2)

    def loss(r):
        head = lambda z, tt: (
            exact_eps(z, tt),
            jnp.broadcast_to(variance_weight(r[jnp.round(tt * T).astype(int) - 1], "interp")[:, None], z.shape),
        )
        return jnp.mean(
            O.discrete_diffusion_term(
                head, x, eps, t, schedule=SCHED, parameterization="eps", num_steps=T, variance="learned"
            )
        )

    tx = optax.adam(0.05)
    r = jnp.zeros((T,))
    state = tx.init(r)
    step = jax.jit(
        lambda r, s: (lambda g: (lambda u, s2_: (optax.apply_updates(r, u), s2_))(*tx.update(g, s)))(jax.grad(loss)(r))
    )
    for _ in range(200):  # converged: the fit after 200 and after 600 steps agree to 1e-4 relative at every step
        r, state = step(r, state)
    g = np.asarray(SCHED(jnp.arange(T + 1) / T), np.float64)
    want, beta, beta_tilde = _optimal_variance(g[:-1], g[1:], s2)
    got = np.asarray(
        diffusion.step_variance(
            jnp.asarray(g[1:], jnp.float32), jnp.asarray(g[:-1], jnp.float32), "learned", variance_weight(r, "interp")
        ),
        np.float64,
    )
    # The optimum lies strictly between beta_tilde and beta at every step: the fit is informative everywhere.
    assert np.all(want > beta_tilde * 1.001) and np.all(want < beta * 0.999)
    # Monte-Carlo error of the fitted optimum beta_tilde + mean(d^2): relative SE <= sqrt(2 / (n d)) = 0.55%.
    np.testing.assert_allclose(got, want, rtol=0.02)


def test_split_variance_reads_the_heads():
    out = jnp.concatenate([jnp.ones((2, 3)), jnp.zeros((2, 3))], axis=-1)
    pred, v = split_variance(out, "interp")
    assert pred.shape == (2, 3) and np.allclose(v, 0.5)
    assert np.allclose(split_variance(out + 1.0, "sigmoid")[1], jax.nn.sigmoid(1.0))
    assert split_variance(out, "none") == (out, None)
    with pytest.raises(ValueError, match="interp"):
        variance_weight(out, "softplus")


def test_ddim_with_the_learned_variance_at_v0_is_ddim_with_the_posterior_variance():
    fn = lambda z, t: 0.5 * z
    key = jax.random.PRNGKey(4)
    kw = dict(schedule=SCHED, method="ddim", num_steps=8, eta=0.7)
    learned = sampling.sample(lambda z, t: (fn(z, t), jnp.zeros_like(z)), (16, 3), key, variance="learned", **kw)
    np.testing.assert_allclose(learned, sampling.sample(fn, (16, 3), key, **kw), rtol=1e-5, atol=1e-6)
    large = sampling.sample(lambda z, t: (fn(z, t), jnp.ones_like(z)), (16, 3), key, variance="learned", **kw)
    np.testing.assert_allclose(large, sampling.sample(fn, (16, 3), key, variance="large", **kw), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(large)) and not np.allclose(large, learned)


@pytest.mark.parametrize("variance", ["small", "large", "learned"])
def test_a_step_of_zero_length_has_kl_zero_and_a_finite_gradient(variance):
    """Where a clipped schedule is flat (gamma_s = gamma_t), q(z_s | z_t, x) = p(z_s | z_t): KL 0, no NaN in training."""
    eps, eps_hat = jnp.ones((3,)), jnp.zeros((3,))
    g = jnp.float32(20.0)
    kl = lambda e, v: jnp.sum(step_kl(eps, e, g, g, variance, v))
    assert float(kl(eps_hat, jnp.full((3,), 0.5))) == 0.0
    grads = jax.grad(kl, argnums=(0, 1))(eps_hat, jnp.full((3,), 0.5))
    assert all(np.all(np.isfinite(np.asarray(a))) for a in grads)


def test_hybrid_end_to_end_train_eval_with_each_variance_and_sample_with_the_learned_one(tmp_path):
    """toy2d:small with a variance head and L_hybrid: trains (train/vlb logged), the T-step ELBO takes every variance,
    the ancestral and DDIM (eta = 1) samplers take the learned one (the head from the run's record: the config file
    given at eval/sample time has none)."""
    import json
    import os

    from conftest import run_cli

    wd = str(tmp_path)
    hybrid = [
        "--config=configs/toy2d.py:small",
        f"--workdir={wd}",
        "--config.model.variance_head=interp",
        "--config.loss.objective=hybrid",
        "--config.loss.weighting=simple",
        "--config.loss.num_steps=100",
    ]
    proc = run_cli(hybrid)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    assert all(np.isfinite(r["train/vlb"]) and r["train/vlb"] > 0 for r in rows if "train/loss" in r)
    from conftest import load_config
    from vdm.cli import modes
    from vdm.config import record

    def given(**keys):  # what --mode=eval/sample runs for `--config=configs/toy2d.py:small --config.K=V ...`
        config = load_config("toy2d", "small")
        for dotted, value in keys.items():
            section, name = dotted.split("__")
            config[section][name] = value
        return record.inference_config(wd, config, [k.replace("__", ".") for k in keys])[0]

    proc = run_cli(  # the learned variance through the command line, the fixed ones in this process (the same path)
        [
            "--config=configs/toy2d.py:small",
            f"--workdir={wd}",
            "--mode=eval",
            "--config.eval.num_steps=10",
            "--config.eval.variance=learned",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bpd = {"learned": json.loads(proc.stdout[proc.stdout.index("{") :])["eval/bpd"]}
    for variance in ("small", "large"):
        bpd[variance] = modes.evaluate(given(eval__num_steps=10, eval__variance=variance), wd)["eval/bpd"]
    assert all(np.isfinite(v) for v in bpd.values()) and len(set(bpd.values())) == 3, bpd
    proc = run_cli(
        [
            "--config=configs/toy2d.py:small",
            f"--workdir={wd}",
            "--mode=sample",
            "--config.sampling.method=ancestral",
            "--config.sampling.variance=learned",
            "--config.sampling.num_steps=5",
            "--config.sampling.num_samples=16",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = [proc.stdout.strip().splitlines()[-1]]
    ddim = dict(sampling__method="ddim", sampling__eta=1.0, sampling__variance="learned", sampling__num_steps=5)
    pngs.append(modes.sample(given(**ddim, sampling__num_samples=16), wd))
    for png in pngs:
        samples = np.load(png[:-4] + ".npz")["samples"]
        assert samples.shape == (16, 2) and np.all(np.isfinite(samples))
    proc = run_cli(
        [f"--workdir={tmp_path / 'nohead'}", "--config=configs/toy2d.py:small", "--config.sampling.variance=learned"]
    )
    assert proc.returncode != 0 and "needs a model with a variance head" in proc.stderr
    assert not os.path.exists(tmp_path / "nohead" / "checkpoints")
