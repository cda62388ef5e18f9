"""The ELBO and the weighted losses against exact answers for Gaussian data.

Data x ~ N(0, diag(s^2)). With the Bayes-optimal denoiser the per-dim eps-MMSE at log-SNR
-gamma is s^2 / (s^2 + e^gamma), so every expectation below has an independent closed form
or a 1-D quadrature, and the exact NLL is that of N(0, s^2).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from vdm import diffusion as D
from vdm import objectives as O
from vdm import schedules as S
from vdm.parameterization import KINDS, to_x0_eps

SCALES = np.array([0.1, 0.5, 1.0, 3.0])
GAMMA_MIN, GAMMA_MAX = -13.3, 5.0


def optimal_eps(z, t, schedule, s=SCALES):
    """E[eps | z_t] for x ~ N(0, s^2): sigma z / (alpha^2 s^2 + sigma^2)."""
    g = schedule(t)[:, None]
    a2, s2 = jax.nn.sigmoid(-g), jax.nn.sigmoid(g)
    return jnp.sqrt(s2) * z / (a2 * jnp.asarray(s, jnp.float32) ** 2 + s2)


def optimal_in(kind, schedule, s=SCALES):
    """The optimal denoiser written directly in each parameterisation (no call to `convert`)."""

    def fn(z, t):
        g = schedule(t)[:, None]
        a2, s2 = jax.nn.sigmoid(-g), jax.nn.sigmoid(g)
        total = a2 * jnp.asarray(s, jnp.float32) ** 2 + s2
        x0 = jnp.sqrt(a2) * s**2 * z / total
        eps = jnp.sqrt(s2) * z / total
        v = jnp.sqrt(a2) * eps - jnp.sqrt(s2) * x0
        return {"eps": eps, "x0": x0, "score": -z / total, "v": v, "flow": eps - x0}[kind]

    return fn


def gaussian_data(n, seed=0, s=SCALES):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, len(s))) * s, jnp.float32)


def exact_nll(x, s=SCALES):
    return np.sum(0.5 * np.log(2 * np.pi * s**2) + 0.5 * np.asarray(x, np.float64) ** 2 / s**2, axis=1)


def eps_mmse(gamma, s=SCALES):
    return np.sum(s**2 / (s**2 + np.exp(gamma)))


def expected_neg_elbo(num_steps, s=SCALES, g0=GAMMA_MIN, g1=GAMMA_MAX):
    """E_x[-ELBO] in closed form: Gaussian decoder, prior KL, and the diffusion term by summation / integral."""
    a1sq, s1sq = 1 / (1 + np.exp(g1)), 1 / (1 + np.exp(-g1))
    rec = len(s) * 0.5 * (np.log(2 * np.pi) + g0 + 1.0)
    prior = np.sum(0.5 * (s1sq + a1sq * s**2 - 1 - np.log(s1sq)))
    if num_steps == 0:
        antiderivative = lambda g: np.sum(g - np.log(s**2 + np.exp(g)))  # d/dg = s^2/(s^2+e^g)
        diff = 0.5 * (antiderivative(g1) - antiderivative(g0))
    else:
        g = g0 + (g1 - g0) * np.arange(num_steps + 1) / num_steps
        diff = sum(0.5 * np.expm1(g[i] - g[i - 1]) * eps_mmse(g[i], s) for i in range(1, num_steps + 1))
    return rec + prior + diff


def mc_neg_elbo_gap(num_steps, n=40_000, seed=0, antithetic=True):
    """Monte-Carlo mean and standard error of -ELBO(x) - NLL(x) from the library's `elbo`."""
    sched = S.linear_logsnr(GAMMA_MIN, GAMMA_MAX)
    x = gaussian_data(n, seed)
    fn = jax.jit(
        lambda x, k: O.elbo(
            lambda z, t: optimal_eps(z, t, sched),
            x,
            k,
            schedule=sched,
            num_steps=num_steps,
            decoder="gaussian",
            antithetic=antithetic,
        )
    )
    terms = fn(x, jax.random.PRNGKey(seed))
    gap = np.asarray(terms["total"], np.float64) - exact_nll(x)
    return gap.mean(), gap.std() / math.sqrt(n), terms


def test_continuous_elbo_equals_exact_nll_on_gaussian_data():
    """I-MMSE: with the optimal denoiser the continuous -ELBO equals the NLL up to the endpoint terms,
    which for gamma in [-13.3, 5] and these scales are below 1e-3 nats (mostly KL(q(z_1) || N(0, 1)) of
    the s=3 dimension), far inside the Monte-Carlo error."""
    analytic_gap = expected_neg_elbo(0) - np.mean(exact_nll(gaussian_data(10**6, 99)))
    endpoint_gap = expected_neg_elbo(0) - np.sum(0.5 * np.log(2 * np.pi * SCALES**2) + 0.5)
    assert 0 <= endpoint_gap < 1e-3
    mean, se, terms = mc_neg_elbo_gap(0, n=200_000)
    assert abs(mean - endpoint_gap) < 4 * se, (mean, se)
    assert se < 0.1
    assert abs(analytic_gap) < 0.02
    for k in ("reconstruction", "prior", "diffusion", "total"):
        assert terms[k].shape == (200_000,) and terms[k].dtype == jnp.float32


@pytest.mark.parametrize("num_steps", [1, 10, 1000])
def test_discrete_elbo_equals_its_exact_expectation(num_steps):
    x = gaussian_data(40_000, 3)
    sched = S.linear_logsnr(GAMMA_MIN, GAMMA_MAX)
    terms = jax.jit(
        lambda x, k: O.elbo(
            lambda z, t: optimal_eps(z, t, sched), x, k, schedule=sched, num_steps=num_steps, decoder="gaussian"
        )
    )(x, jax.random.PRNGKey(5))
    total = np.asarray(terms["total"], np.float64)
    mc, se = total.mean(), total.std() / math.sqrt(total.size)
    exact = expected_neg_elbo(num_steps)
    # The sample of x adds its own error: compare E_x[-ELBO | x] - NLL(x) to reduce variance.
    gap = total - exact_nll(x)
    gap_exact = exact - np.sum(0.5 * np.log(2 * np.pi * SCALES**2) + 0.5)
    assert abs(gap.mean() - gap_exact) < 4 * gap.std() / math.sqrt(gap.size), (gap.mean(), gap_exact)
    assert abs(mc - exact) < 4 * se + 0.02


def test_more_steps_give_a_tighter_bound():
    exact = [expected_neg_elbo(T) for T in (1, 2, 4, 10, 100, 1000)]
    assert all(a > b for a, b in zip(exact, exact[1:]))
    # The discretisation gap to continuous time closes like 1/T (VDM, sec. 4).
    gaps = [expected_neg_elbo(T) - expected_neg_elbo(0) for T in (100, 1000, 10000)]
    assert gaps[0] / gaps[1] == pytest.approx(10.0, rel=0.1)
    assert gaps[1] / gaps[2] == pytest.approx(10.0, rel=0.05)
    # The library shows the same ordering beyond its Monte-Carlo error.
    means = [mc_neg_elbo_gap(T, n=20_000, seed=7)[:2] for T in (1, 4, 100)]
    for (m_a, se_a), (m_b, se_b) in zip(means, means[1:]):
        assert m_a - m_b > 4 * math.hypot(se_a, se_b)


def test_discrete_step_two_routes_agree():
    """The discrete term / T equals KL(q(z_s|z_t,x) || q(z_s|z_t,x_hat)) from the two posteriors' own means, and
    T/2 expm1(g_t - g_s) ||eps - eps_hat||^2 / T."""
    T = 50
    sched = S.cosine()
    x = gaussian_data(16, 11)
    eps = jax.random.normal(jax.random.PRNGKey(0), x.shape)
    # A deliberately imperfect denoiser, so the KL is not zero.
    denoise = lambda z, t: optimal_eps(z, t, sched) + 0.1 * jnp.sin(3 * z)
    for i in [1, 2, 17, 49, 50]:
        t = jnp.full((16,), i / T, jnp.float32)
        step = O.discrete_diffusion_term(denoise, x, eps, t, schedule=sched, parameterization="eps", num_steps=T) / T
        g_s = sched(jnp.float32((i - 1) / T))
        g_t = sched(jnp.float32(i / T))
        z_t = D.q_sample(x, g_t, eps)
        x_hat, _ = to_x0_eps(denoise(z_t, t), z_t, g_t, "eps")
        m_q, v_q = D.posterior(z_t, x, g_s, g_t)
        m_p, v_p = D.posterior(z_t, x_hat, g_s, g_t)
        kl = D.sum_except_batch(D.kl_normal(m_q, v_q, m_p, v_p))
        np.testing.assert_allclose(step, kl, rtol=2e-3, atol=1e-6)
        eps_hat = denoise(z_t, t)
        np.testing.assert_allclose(
            step, 0.5 * jnp.expm1(g_t - g_s) * D.sum_except_batch((eps - eps_hat) ** 2), rtol=1e-5
        )


@pytest.mark.parametrize("kind", KINDS)
def test_elbo_is_identical_across_parameterisations(kind):
    sched = S.linear_logsnr(GAMMA_MIN, GAMMA_MAX)
    x = gaussian_data(512, 4)
    key = jax.random.PRNGKey(8)
    ref = O.elbo(optimal_in("eps", sched), x, key, schedule=sched, decoder="gaussian")
    got = O.elbo(optimal_in(kind, sched), x, key, schedule=sched, parameterization=kind, decoder="gaussian")
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-3, atol=2e-3)


def test_antithetic_t_covers_the_interval_evenly():
    t = np.sort(np.asarray(O.sample_t(jax.random.PRNGKey(0), 100, antithetic=True)))
    np.testing.assert_allclose(np.diff(t), 0.01, atol=1e-5)
    assert 0.0 <= t.min() < 0.01


def _weighted_loss(denoise, x, key, *, schedule, weighting, antithetic=True, **kwargs):
    """The diffusion term of O.neg_elbo_terms under `weighting`, at t ~ U(0, 1) (antithetic) and eps ~ N(0, I)."""
    k_t, k_eps = jax.random.split(key)
    t = O.sample_t(k_t, x.shape[0], antithetic=antithetic)
    eps = jax.random.normal(k_eps, x.shape)
    return O.neg_elbo_terms(
        denoise,
        x,
        t,
        eps,
        jnp.zeros_like(x),
        schedule=schedule,
        weighting=weighting,
        decoder="gaussian",
        weighting_kwargs=kwargs,
    )["diffusion"]


def _expected_weighted(weighting, schedule_np, dschedule_np, s=SCALES, bias=-2.0, snr_gamma=5.0):
    """E[L_w] from each loss's own definition, by quadrature over t."""

    def integrand(t):
        g, dg = schedule_np(t), dschedule_np(t)
        a2, s2 = 1 / (1 + np.exp(g)), 1 / (1 + np.exp(-g))
        e_mmse = np.sum(s**2 / (s**2 + np.exp(g)))  # E||eps - eps_hat||^2
        x_mmse = np.sum(s**2 * s2 / (a2 * s**2 + s2))  # E||x - x_hat||^2
        snr = np.exp(-g)
        lam = -g
        a, sg = np.sqrt(a2), np.sqrt(s2)
        u_mmse = np.sum(1 + s**2 - (sg - a * s**2) ** 2 / (a2 * s**2 + s2))  # E||(eps - x) - E[eps - x | z]||^2
        return {
            "elbo": 0.5 * dg * e_mmse,  # VDM eq. 17
            "simple": e_mmse,  # Ho et al. 2020
            "snr": max(snr, 1.0) * x_mmse,  # Salimans & Ho 2022
            "min_snr": min(snr, snr_gamma) * x_mmse,  # Hang et al. 2023
            "sigmoid": 0.5 * dg / (1 + np.exp(lam - bias)) * e_mmse,  # sigmoid(-lambda + b), default b = -2
            # EDM: E_{ln sigma ~ N(-1.2, 1.2^2)} [(sigma^2 + 0.25)/(0.25 sigma^2) ||x - x_hat||^2] / 2,
            # written as a density over t through lambda = -2 ln sigma.
            "edm": 0.5
            * dg
            * np.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2)
            / (2.4 * np.sqrt(2 * np.pi))
            * (np.exp(g) + 0.25)
            / (0.25 * np.exp(g))
            * x_mmse,
            "flow": u_mmse,  # flow matching's velocity MSE at uniform t (Lipman et al. 2023)
            "eps_cosine": 0.5 * dg / (np.pi * np.cosh(lam / 2)) * e_mmse,  # w = sech(lambda/2) / pi
            "v_cosine": 0.5 * dg * 2 / np.pi * np.exp(-lam / 2) * e_mmse,  # w = (2/pi) e^{-lambda/2}
        }[weighting]

    return integrate.quad(integrand, 0.0, 1.0, limit=500, points=[0.5])[0]


@pytest.mark.parametrize("weighting", sorted(O.WEIGHTINGS))
@pytest.mark.parametrize("schedule_name", ["linear_logsnr", "cosine"])
def test_weighted_losses_match_their_definitions(weighting, schedule_name):
    if schedule_name == "linear_logsnr":
        sched = S.linear_logsnr(GAMMA_MIN, GAMMA_MAX)
        g_np = lambda t: GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t
        dg_np = lambda t: GAMMA_MAX - GAMMA_MIN
    else:
        sched = S.cosine(gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX)
        c = np.pi / 2 / 1.008
        raw = lambda t: np.log(np.sin(t * c)) + np.log(np.sin((t + 0.016) * c)) - 2 * np.log(np.sin((1 - t) * c))
        g_np = lambda t: float(np.clip(raw(t), GAMMA_MIN, GAMMA_MAX))
        dg_np = lambda t: (
            0.0
            if not GAMMA_MIN < raw(t) < GAMMA_MAX
            else c * (1 / np.tan(t * c) + 1 / np.tan((t + 0.016) * c) + 2 / np.tan((1 - t) * c))
        )
    x = gaussian_data(50_000, 21)
    loss = jax.jit(
        lambda x, k: _weighted_loss(lambda z, t: optimal_eps(z, t, sched), x, k, schedule=sched, weighting=weighting)
    )(x, jax.random.PRNGKey(2))
    loss = np.asarray(loss, np.float64)
    expected = _expected_weighted(weighting, g_np, dg_np)
    se = loss.std() / math.sqrt(loss.size)
    assert abs(loss.mean() - expected) < 4 * se + 1e-3 * abs(expected), (loss.mean(), expected, se)


def test_schedule_free_weightings_do_not_depend_on_the_schedule():
    """Kingma & Gao: for w(lambda) alone the loss is 1/2 int w mmse dlambda, whatever the schedule between the ends."""
    lin = _expected_weighted("sigmoid", lambda t: GAMMA_MIN + 18.3 * t, lambda t: 18.3)
    sq = _expected_weighted("sigmoid", lambda t: GAMMA_MIN + 18.3 * t**2, lambda t: 36.6 * t)
    assert lin == pytest.approx(sq, rel=1e-6)
    x = gaussian_data(50_000, 5)
    warped = lambda t: GAMMA_MIN + 18.3 * jnp.square(t)
    loss = _weighted_loss(
        lambda z, t: optimal_eps(z, t, warped), x, jax.random.PRNGKey(1), schedule=warped, weighting="sigmoid"
    )
    assert abs(float(loss.mean()) - lin) < 4 * float(loss.std()) / math.sqrt(50_000)


@pytest.mark.parametrize("weighting,kwargs", [("sigmoid", {"bias": 1.5}), ("min_snr", {"snr_gamma": 1.0})])
def test_weighting_hyperparameters_are_used(weighting, kwargs):
    """A non-default sigmoid bias / min-SNR gamma gives its own quadrature value, not the default's."""
    sched = S.linear_logsnr(GAMMA_MIN, GAMMA_MAX)
    g_np, dg_np = (lambda t: GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t), (lambda t: GAMMA_MAX - GAMMA_MIN)
    x = gaussian_data(50_000, 23)
    loss = np.asarray(
        jax.jit(
            lambda x, k: _weighted_loss(
                lambda z, t: optimal_eps(z, t, sched), x, k, schedule=sched, weighting=weighting, **kwargs
            )
        )(x, jax.random.PRNGKey(4))
    )
    expected = _expected_weighted(weighting, g_np, dg_np, **kwargs)
    default = _expected_weighted(weighting, g_np, dg_np)
    se = loss.std() / math.sqrt(loss.size)
    assert abs(loss.mean() - expected) < 4 * se + 1e-3 * abs(expected), (loss.mean(), expected, se)
    assert abs(expected - default) > 20 * se  # the check can tell the two apart


def test_bits_per_dim_and_errors():
    assert float(O.bits_per_dim(784 * math.log(2.0) * 3.5, 784)) == pytest.approx(3.5)
    sched = S.linear_logsnr()
    x = gaussian_data(4)
    with pytest.raises(ValueError, match="choose one of"):
        _weighted_loss(lambda z, t: z, x, jax.random.PRNGKey(0), schedule=sched, weighting="lsimple")
    with pytest.raises(ValueError, match="Unknown decoder 'bernoulli'; valid: categorical, discretized_gaussian"):
        O.elbo(lambda z, t: z, x, jax.random.PRNGKey(0), schedule=sched, decoder="bernoulli")
    with pytest.raises(ValueError, match="expected the shape of z"):
        O.elbo(lambda z, t: z[:, :2], x, jax.random.PRNGKey(0), schedule=sched)
    with pytest.raises(ValueError, match="num_steps"):
        O.elbo(lambda z, t: z, x, jax.random.PRNGKey(0), schedule=sched, num_steps=-3)
