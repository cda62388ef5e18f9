"""Samplers against exact answers: the analytic denoisers of vdm/core/analytic.py.

Truths used: the exact noisy marginals of Gaussian data and of a 2-D Gaussian mixture (so the
exact score), the closed-form probability-flow ODE map of Gaussian data, DDPM's posterior and
DDIM's update written in abar notation (Ho et al. 2020, eq. 6-7; Song et al. 2021a, eq. 12), and
Bayes' rule for guidance (grad log q(z|y) = grad log q(z) + grad log p(y|z)).

Distribution checks use n = 2000 samples: means and variances within 4 standard errors of
the exact moments, and the energy distance to n true samples below 4x its expected value
under the null, 2 E|X - X'| / n (the V-statistic's bias; its null spread is about as large).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import sampling
from vdm import schedules as S
from vdm.core import analytic as A
from vdm.parameterization import convert
from vdm.sampling import guidance, solvers

N = 2000
SCHED = S.linear_logsnr()
MIX = A.default_mixture()
GAUSS = A.GaussianData(np.array([0.5, -0.3]), np.array([0.3, 1.2]))


def mixture_moments(mix):
    w, mu, s = (np.asarray(a) for a in (mix.weights, mix.means, mix.stds))
    mean = w @ mu
    var = w @ (s[:, None] ** 2 + mu**2) - mean**2
    return mean, var


def assert_moments(x, mean, var, k=4.0):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    m_hat, v_hat = x.mean(0), x.var(0)
    se_m = np.sqrt(var / n)
    se_v = ((x - m_hat) ** 2).std(0) / np.sqrt(n)
    assert np.all(np.abs(m_hat - mean) < k * se_m), (m_hat, mean, se_m)
    assert np.all(np.abs(v_hat - var) < k * se_v), (v_hat, var, se_v)


def energy_threshold(ref):
    """4x the null expectation 2 E|X - X'| / n of the energy-distance V-statistic."""
    n = ref.shape[0]
    d = jnp.sqrt(jnp.maximum(jnp.sum((ref[:, None] - ref[None]) ** 2, -1), 1e-30))
    delta = float(jnp.sum(d)) / (n * (n - 1))
    return 4.0 * 2.0 * delta / n


@pytest.fixture(scope="module")
def mixture_ref():
    ref, _ = MIX.sample(jax.random.key(123), N)
    return ref, energy_threshold(ref)


CASES = [
    ("ancestral", 200, {}),
    ("ancestral", 200, {"variance": "large"}),
    ("ddim", 100, {}),
    ("ddim", 100, {"eta": 1.0}),
    ("sde", 500, {}),
    ("ode", 30, {}),
    ("pc", 200, {"snr": 0.16, "corrector_steps": 1}),
    ("dpm_solver", 25, {"order": 2}),
    ("dpm_solver", 25, {"order": 3}),
    ("dpm_solver", 25, {"order": 3, "prediction": "eps"}),
]


@pytest.mark.parametrize("method,steps,opts", CASES, ids=[f"{m}-{n}-{o}" for m, n, o in CASES])
def test_each_method_reproduces_the_mixture(method, steps, opts, mixture_ref):
    ref, threshold = mixture_ref
    fn = A.denoise_fn(MIX, SCHED)
    x = sampling.sample(fn, (N, 2), jax.random.key(7), schedule=SCHED, method=method, num_steps=steps, **opts)
    mean, var = mixture_moments(MIX)
    assert_moments(x, mean, var)
    assert float(A.energy_distance(x, ref)) < threshold


def test_energy_threshold_detects_a_ten_percent_scale_error(mixture_ref):
    ref, threshold = mixture_ref
    other, _ = MIX.sample(jax.random.key(5), N)
    assert float(A.energy_distance(other, ref)) < threshold
    assert float(A.energy_distance(1.1 * other, ref)) > threshold


def test_sliced_wasserstein_of_a_shift():
    """W1 of a 1-D shift by c.theta is |c.theta|; over uniform directions in 2-D, E|c.theta| = 2|c|/pi."""
    x, _ = MIX.sample(jax.random.key(0), 500)
    c = jnp.array([0.3, -0.4])
    assert float(A.sliced_wasserstein(x, x, jax.random.key(1))) == 0.0
    got = float(jax.jit(A.sliced_wasserstein, static_argnums=3)(x, x + c, jax.random.key(1), 2048))
    assert abs(got - 2 * 0.5 / math.pi) < 0.015, got  # 4 standard errors over directions


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("method,steps", [("ancestral", 100), pytest.param("dpm_solver", 15, marks=pytest.mark.slow)])
def test_every_parameterization_samples_gaussian_data(kind, method, steps):
    fn = A.denoise_fn(GAUSS, SCHED, kind)
    x = sampling.sample(
        fn, (N, 2), jax.random.key(3), schedule=SCHED, parameterization=kind, method=method, num_steps=steps
    )
    assert_moments(x, GAUSS.mean, GAUSS.std**2)


# ----------------------------------------------------------------------------- convergence

ORDER_DATA = A.GaussianData(np.array([0.5, -0.3, 0.0, 1.0]), np.array([0.2, 0.5, 1.0, 2.0]))
ORDER_CASES = [
    ("ddim", {}, 1.0),
    ("ode", {}, 2.0),
    ("dpm_solver", {"order": 2}, 2.0),
    pytest.param("dpm_solver", {"order": 2, "prediction": "eps"}, 2.0, marks=pytest.mark.slow),
    ("dpm_solver", {"order": 3}, 3.0),
    pytest.param("dpm_solver", {"order": 3, "prediction": "eps"}, 3.0, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("method,opts,order", ORDER_CASES)
def test_ode_solvers_converge_at_their_order_to_the_exact_flow(method, opts, order):
    """Endpoint error against the closed-form PF-ODE map of Gaussian data; log-log slope ~ -order."""
    if method == "dpm_solver":
        opts = {**opts, "lower_order_final": False}
    fn = A.denoise_fn(ORDER_DATA, SCHED)
    steps = np.array([8, 16, 32])
    errors = []
    for n in steps:
        _, traj = sampling.sample(
            fn,
            (64, 4),
            jax.random.key(0),
            schedule=SCHED,
            method=method,
            num_steps=int(n),
            grid="uniform_logsnr",
            final_denoise=False,
            return_trajectory=True,
            **opts,
        )
        exact = ORDER_DATA.ode_map(traj[0], SCHED(1.0), SCHED(0.0))
        errors.append(float(jnp.max(jnp.abs(traj[-1] - exact))))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert np.all(np.diff(errors) < 0), errors
    assert -order - 1.3 < slope < -order + 0.4, (slope, errors)


def test_sde_weak_error_falls_with_steps():
    data = A.GaussianData(np.array([0.3]), np.array([0.5]))
    fn = A.denoise_fn(data, SCHED)
    n = 20000
    errs = []
    for steps in (25, 400):
        x = np.asarray(
            sampling.sample(fn, (n, 1), jax.random.key(1), schedule=SCHED, method="sde", num_steps=steps), np.float64
        )
        errs.append(abs(x.var() - 0.25))
    se = 0.25 * math.sqrt(2.0 / n)
    assert errs[0] > 4 * se and errs[1] < 4 * se and errs[1] < errs[0] / 3, (errs, se)


# ----------------------------------------------------------------------------- DDIM


def test_ddim_is_deterministic_given_z1_and_inverts_by_its_own_ode():
    data = A.GaussianData(np.array([0.4, -0.2]), np.array([0.3, 0.8]), rotation=np.array([[0.8, -0.6], [0.6, 0.8]]))
    fn = A.denoise_fn(data, SCHED)
    x = data.sample(jax.random.key(0), 256)
    z = jax.random.normal(jax.random.key(1), x.shape)
    a = sampling.sample(fn, x.shape, jax.random.key(2), schedule=SCHED, method="ddim", num_steps=20, z_init=z)
    b = sampling.sample(fn, x.shape, jax.random.key(3), schedule=SCHED, method="ddim", num_steps=20, z_init=z)
    np.testing.assert_array_equal(a, b)
    errs = []
    for steps in (50, 200):
        z1 = sampling.ddim_encode(fn, x, schedule=SCHED, num_steps=steps)
        exact_z1 = data.ode_map(jnp.sqrt(jax.nn.sigmoid(-SCHED(0.0))) * x, SCHED(0.0), SCHED(1.0))
        assert float(jnp.max(jnp.abs(z1 - exact_z1))) < 20.0 / steps
        x_rec = sampling.sample(
            fn,
            x.shape,
            jax.random.key(4),
            schedule=SCHED,
            method="ddim",
            num_steps=steps,
            z_init=z1,
            final_denoise=False,
        )
        errs.append(float(jnp.max(jnp.abs(x_rec - x))))
    assert errs[1] < 0.05 and errs[1] < errs[0] / 3, errs


def test_the_ddim_and_ancestral_samplers_step_through_the_contract_steps():
    """sample(method='ddim' | 'ancestral') equals a Python loop of ddim_step / ancestral_step on the same grid,
    keys and network outputs (the ancestral loop up to its last step, which adds no noise)."""
    fn = A.denoise_fn(GAUSS, SCHED, "x0")
    n, shape, key = 6, (64, 2), jax.random.key(3)
    t, g = solvers.time_grid(SCHED, n, "uniform_t")
    keys = jax.random.split(jax.random.split(key)[1], n)
    z1 = jax.random.normal(jax.random.key(4), shape)
    for method, step in (
        (
            "ddim",
            lambda z, p, i: sampling.ddim_step(
                z, p, g[i], g[i + 1], parameterization="x0", eta=0.5, key=keys[i], clip_x0=True
            ),
        ),
        ("ancestral", lambda z, p, i: sampling.ancestral_step(z, p, g[i], g[i + 1], keys[i], parameterization="x0")),
    ):
        opts = {"eta": 0.5, "clip_x0": True} if method == "ddim" else {}
        _, traj = sampling.sample(
            fn,
            shape,
            key,
            schedule=SCHED,
            parameterization="x0",
            method=method,
            num_steps=n,
            z_init=z1,
            return_trajectory=True,
            **opts,
        )
        z = z1
        for i in range(n - 1):
            z = step(z, fn(z, jnp.full((shape[0],), t[i])), i)
            np.testing.assert_allclose(traj[i + 1], z, rtol=1e-5, atol=1e-6, err_msg=f"{method} step {i}")


def test_the_table_has_one_complete_record_per_method():
    """Each SAMPLERS entry's defaults pass its own checks, its grid is a grid, and METHODS is the table's keys."""
    assert sampling.METHODS == tuple(sampling.SAMPLERS)
    for method, rec in sampling.SAMPLERS.items():
        opts = sampling.resolve_options(method, {})
        assert opts["grid"] == rec.grid in solvers.GRIDS and rec.num_steps >= 1
        assert {k: opts[k] for k in rec.options} == rec.options
        assert set(sampling.option_names(method)) == set(opts) - set(sampling.PROGRAM_ONLY_OPTIONS)


def _abar(g):
    return float(jax.nn.sigmoid(-g))


def test_ddim_step_matches_the_paper_in_abar_notation():
    g_t, g_s = 1.5, -0.7
    ab_t, ab_s = _abar(g_t), _abar(g_s)
    z = jax.random.normal(jax.random.key(0), (5, 3))
    eps = jax.random.normal(jax.random.key(1), (5, 3))
    key = jax.random.key(2)
    eta = 0.5
    x0 = (z - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    var = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    expect = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s - var) * eps + math.sqrt(var) * jax.random.normal(key, z.shape)
    got = sampling.ddim_step(z, eps, g_t, g_s, eta=eta, key=key)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        sampling.ddim_step(z, eps, g_t, g_s), sampling.ddim_step(z, eps, g_t, g_s, eta=0.0, key=key)
    )
    # eta = 1 is the ancestral step: DDPM's posterior mean and variance beta_tilde.
    np.testing.assert_allclose(
        sampling.ddim_step(z, eps, g_t, g_s, eta=1.0, key=key),
        sampling.ancestral_step(z, eps, g_t, g_s, key),
        rtol=1e-5,
        atol=1e-5,
    )


def test_ancestral_step_is_ddpm_posterior_sampling():
    g_t, g_s = 0.8, -1.1
    ab_t, ab_s = _abar(g_t), _abar(g_s)
    a_t, beta = ab_t / ab_s, 1 - ab_t / ab_s
    z = jax.random.normal(jax.random.key(0), (4, 6))
    x0 = jax.random.uniform(jax.random.key(1), (4, 6), minval=-1, maxval=1)
    key = jax.random.key(2)
    noise = jax.random.normal(key, z.shape)
    mean = math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(a_t) * (1 - ab_s) / (1 - ab_t) * z
    beta_tilde = (1 - ab_s) / (1 - ab_t) * beta
    got = sampling.ancestral_step(z, x0, g_t, g_s, key, parameterization="x0")
    np.testing.assert_allclose(got, mean + math.sqrt(beta_tilde) * noise, rtol=1e-5, atol=1e-5)
    got = sampling.ancestral_step(z, x0, g_t, g_s, key, parameterization="x0", variance="large")
    np.testing.assert_allclose(got, mean + math.sqrt(beta) * noise, rtol=1e-5, atol=1e-5)
    v = 0.3
    got = sampling.ancestral_step(z, x0, g_t, g_s, key, parameterization="x0", variance="learned", v_interp=v)
    mixed = math.exp(v * math.log(beta) + (1 - v) * math.log(beta_tilde))
    np.testing.assert_allclose(got, mean + math.sqrt(mixed) * noise, rtol=1e-5, atol=1e-5)


def test_learned_variance_hook_interpolates_small_and_large():
    fn = A.denoise_fn(GAUSS, SCHED)
    kw = dict(schedule=SCHED, method="ancestral", num_steps=20)
    key = jax.random.key(9)
    for v, name in ((0.0, "small"), (1.0, "large")):
        learned = sampling.sample(lambda z, t: (fn(z, t), jnp.full_like(z, v)), (64, 2), key, variance="learned", **kw)
        np.testing.assert_allclose(
            learned, sampling.sample(fn, (64, 2), key, variance=name, **kw), rtol=1e-4, atol=1e-5
        )
    with pytest.raises(ValueError, match="v_interp"):
        sampling.sample(fn, (4, 2), key, variance="learned", **kw)


# ----------------------------------------------------------------------------- grids and edges


def test_time_grids():
    for sched in (SCHED, S.cosine()):
        t, g = solvers.time_grid(sched, 10, "uniform_logsnr")
        assert float(t[0]) == 1.0 and float(t[-1]) == 0.0 and np.all(np.diff(t) < 0)
        np.testing.assert_allclose(np.diff(g), np.full(10, (g[-1] - g[0]) / 10), atol=1e-3)
        t, g = solvers.time_grid(sched, 12, "edm", rho=7.0)
        s_max, s_min = math.exp(float(sched(1.0)) / 2), math.exp(float(sched(0.0)) / 2)
        i = np.arange(13) / 12
        sig = (s_max ** (1 / 7) + i * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
        np.testing.assert_allclose(np.exp(np.asarray(g) / 2), sig, rtol=2e-3)
    t, _ = solvers.time_grid(SCHED, 4, "uniform_t")
    np.testing.assert_allclose(t, [1.0, 0.75, 0.5, 0.25, 0.0])


def infinite_start_schedule(t):
    """gamma(t) = 6 + 8 log t: gamma(0) = -inf (alpha = 1, sigma = 0), gamma(1) = 6."""
    return 6.0 + 8.0 * jnp.log(jnp.asarray(t, jnp.float32))


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "method,opts",
    [
        ("ancestral", {}),
        pytest.param("ddim", {}, marks=SLOW),
        pytest.param("ode", {}, marks=SLOW),
        pytest.param("sde", {}, marks=SLOW),
        pytest.param("pc", {}, marks=SLOW),
        ("dpm_solver", {"order": 3}),
        pytest.param("dpm_solver", {"prediction": "eps"}, marks=SLOW),
        ("ddim", {"grid": "uniform_logsnr"}),
        ("ddim", {"grid": "edm"}),
        ("ddim", {"grid": "uniform_ot"}),
        ("ode", {"space": "ot", "grid": "uniform_ot"}),
    ],
)
def test_schedules_with_gamma0_minus_infinity(method, opts):
    data = A.GaussianData(np.array([0.5, -0.3]), np.array([0.3, 0.6]))
    fn = A.denoise_fn(data, infinite_start_schedule)
    steps = {"sde": 400, "pc": 200, "ancestral": 200, "ddim": 200}.get(method, 40)
    x = sampling.sample(
        fn, (N, 2), jax.random.key(0), schedule=infinite_start_schedule, method=method, num_steps=steps, **opts
    )
    assert np.all(np.isfinite(x))
    assert_moments(x, data.mean, data.std**2)


def test_one_scan_and_the_evaluation_count():
    """The number of Python calls to denoise_fn while tracing does not grow with num_steps (one
    lax.scan), and the evaluations executed equal num_evaluations."""
    fn = A.denoise_fn(GAUSS, SCHED)
    for method, opts in [
        ("ancestral", {}),
        ("ddim", {}),
        ("sde", {}),
        ("ode", {}),
        ("pc", {"corrector_steps": 2}),
        ("dpm_solver", {"order": 2}),
        ("dpm_solver", {"order": 3}),
    ]:
        calls = {"trace": 0, "run": 0}

        def counted(z, t):
            calls["trace"] += 1
            jax.debug.callback(lambda: calls.__setitem__("run", calls["run"] + 1))
            return fn(z, t)

        def run(steps, key):
            return sampling.sample(counted, (8, 2), key, schedule=SCHED, method=method, num_steps=steps, **opts)

        traces = []
        for steps in (3, 9):
            calls["trace"] = 0
            jax.make_jaxpr(lambda k: run(steps, k))(jax.random.key(0))
            traces.append(calls["trace"])
        assert traces[0] == traces[1], (method, traces)
        jax.block_until_ready(run(3, jax.random.key(0)))
        assert calls["run"] == sampling.num_evaluations(method, 3, schedule=SCHED, **opts), method


def test_jit_matches_eager_and_trajectory_shape():
    fn = A.denoise_fn(MIX, SCHED)
    kw = dict(schedule=SCHED, method="pc", num_steps=10)
    eager = sampling.sample(fn, (16, 2), jax.random.key(0), **kw)
    jitted = jax.jit(lambda k: sampling.sample(fn, (16, 2), k, **kw))(jax.random.key(0))
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)
    z = jax.random.normal(jax.random.key(1), (16, 2))
    x, traj = sampling.sample(
        fn,
        (16, 2),
        jax.random.key(0),
        schedule=SCHED,
        method="ddim",
        num_steps=10,
        z_init=z,
        return_trajectory=True,
        final_denoise=False,
    )
    assert traj.shape == (11, 16, 2)
    np.testing.assert_array_equal(traj[0], z)
    np.testing.assert_allclose(x, traj[-1] / jnp.sqrt(jax.nn.sigmoid(-SCHED(0.0))), rtol=1e-6)


def test_thresholding():
    x0 = jnp.array([[0.5, -0.2, 0.1, 3.0], [0.2, -0.4, 0.3, 0.1]])
    np.testing.assert_allclose(solvers.threshold_x0(x0, clip=True), jnp.clip(x0, -1, 1))
    got = solvers.threshold_x0(x0, percentile=1.0)  # s = max |x0| per example, floored at 1
    np.testing.assert_allclose(got, jnp.stack([x0[0] / 3.0, x0[1]]), rtol=1e-6)
    wide = A.GaussianData(np.array([0.0, 0.0]), np.array([2.0, 2.0]))
    fn = A.denoise_fn(wide, SCHED)
    for opts in ({"clip_x0": True}, {"dynamic_threshold": 0.9}):
        x = sampling.sample(fn, (256, 2), jax.random.key(0), schedule=SCHED, method="ddim", num_steps=10, **opts)
        assert float(jnp.max(jnp.abs(x))) <= 1.0 + 1e-6


def test_bad_options_raise_naming_the_valid_ones():
    fn = A.denoise_fn(GAUSS, SCHED)
    kw = dict(schedule=SCHED, num_steps=2)
    with pytest.raises(ValueError, match="dpm_solver"):
        sampling.sample(fn, (2, 2), jax.random.key(0), method="euler", **kw)
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['etaa'\] for method 'ddim'; valid options: .*'eta'"):
        sampling.sample(fn, (2, 2), jax.random.key(0), method="ddim", etaa=0.0, **kw)
    with pytest.raises(ValueError, match="Unknown option.*'snr'"):  # another method's option
        sampling.resolve_options("ddim", {"snr": 0.1})
    with pytest.raises(ValueError, match="uniform_logsnr"):
        sampling.sample(fn, (2, 2), jax.random.key(0), method="ddim", grid="log", **kw)
    with pytest.raises(ValueError, match="eta must lie"):
        sampling.sample(fn, (2, 2), jax.random.key(0), method="ddim", eta=2.0, **kw)
    with pytest.raises(ValueError, match="order"):
        sampling.sample(fn, (2, 2), jax.random.key(0), method="dpm_solver", order=4, **kw)
    with pytest.raises(ValueError, match="learned"):
        sampling.sample(lambda z, t: (fn(z, t), z), (2, 2), jax.random.key(0), **kw)
    with pytest.raises(ValueError, match="positive integer"):
        sampling.sample(fn, (2, 2), jax.random.key(0), schedule=SCHED, num_steps=0)


# ----------------------------------------------------------------------------- guidance


def test_cfg_w0_is_the_conditional_model_and_guidance_is_eps_space():
    cond = A.conditional_denoise_fn(MIX, SCHED, "x0")
    cond_eps = A.conditional_denoise_fn(MIX, SCHED, "eps")
    null = MIX.num_components
    z = jax.random.normal(jax.random.key(0), (64, 2))
    t = jax.random.uniform(jax.random.key(1), (64,))
    y = jax.random.randint(jax.random.key(2), (64,), 0, null)
    np.testing.assert_array_equal(jax.jit(guidance.cfg_denoise_fn(cond, null, 0.0))(z, t, y), jax.jit(cond)(z, t, y))
    w = 2.5
    guided = jax.jit(guidance.cfg_denoise_fn(cond, null, w, y=y))(z, t)
    g = SCHED(t)[:, None]
    cond_eps = jax.jit(cond_eps)
    expect = (1 + w) * cond_eps(z, t, y) - w * cond_eps(z, t, jnp.full_like(y, null))
    np.testing.assert_allclose(convert(guided, z, g, source="x0", target="eps"), expect, rtol=1e-4, atol=1e-4)


def test_classifier_guidance_scale_one_is_the_exact_conditional():
    """grad log q(z_t|y) = grad log q(z_t) + grad log p(y|z_t) (Bayes)."""
    z = jax.random.normal(jax.random.key(0), (128, 2))
    t = jax.random.uniform(jax.random.key(1), (128,), minval=0.05, maxval=1.0)
    y = jnp.full((128,), 2)
    for kind in ("eps", "v"):
        fn = guidance.classifier_guided_denoise_fn(
            A.denoise_fn(MIX, SCHED, kind), A.class_log_prob_fn(MIX, SCHED), y, 1.0, SCHED, kind
        )
        np.testing.assert_allclose(fn(z, t), A.conditional_denoise_fn(MIX, SCHED, kind)(z, t, y), rtol=1e-3, atol=1e-3)


def test_classifier_guidance_moves_samples_to_the_class_monotonically():
    y_class, n = 2, 1000
    means = jnp.asarray(MIX.means)

    @jax.jit
    def fraction(scale):
        fn = guidance.classifier_guided_denoise_fn(
            A.denoise_fn(MIX, SCHED), A.class_log_prob_fn(MIX, SCHED), jnp.full((n,), y_class), scale, SCHED
        )
        x = sampling.sample(fn, (n, 2), jax.random.key(0), schedule=SCHED, method="ddim", num_steps=50)
        nearest = jnp.argmin(jnp.sum((x[:, None] - means[None]) ** 2, -1), axis=1)
        return jnp.mean(nearest == y_class)

    fractions = [float(fraction(scale)) for scale in (0.0, 0.5, 1.0, 4.0)]
    w = float(MIX.weights[y_class])
    assert abs(fractions[0] - w) < 4 * math.sqrt(w * (1 - w) / n), fractions
    assert fractions[0] < fractions[1] < fractions[2] and np.all(np.diff(fractions) >= 0), fractions
    assert fractions[2] > 0.97, fractions
