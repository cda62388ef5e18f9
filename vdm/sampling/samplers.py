"""Samplers of the variance-preserving diffusion: ancestral, DDIM, SDE, ODE (Heun), PC, DPM-Solver.

`sample` draws z_1 ~ N(0, I) and integrates from t_max = 1 down to t_min = 0 on a grid of `num_steps` intervals,
as ONE lax.scan over the steps (updates in vdm.sampling.solvers, guidance in vdm.sampling.guidance); pure and
traceable: jax.jit it (network parameters as an argument) to compile the whole sampler.

The final denoising step: after the last step reaches z_{t_min}, `final_denoise=True` (default)
returns x0_hat(z_{t_min}, t_min), one extra network evaluation; `final_denoise=False` returns
z_{t_min} / alpha_{t_min}, the mean of VDM's Gaussian decoder. The stochastic samplers add no
noise on their last step (Ho et al. 2020, Alg. 2).

Methods and their options (one record per method in SAMPLERS: runner, option defaults and checks,
default grid and steps, network evaluations):
  ancestral   z_s ~ q(z_s | z_t, x0_hat); variance 'small' (beta_tilde), 'large' (beta = 1 - alpha_t^2/alpha_s^2)
              or 'learned' (denoise_fn returns (pred, v_interp): log-variance between the two, improved-DDPM).
  ddim        deterministic for eta = 0; eta = 1 has the ancestral posterior variance; variance
              'large' or 'learned' puts eta^2 times that variance in its place (capped at sigma_s^2).
  sde         Euler-Maruyama on the reverse VP SDE. Forward: dz = -beta z/2 dt + sqrt(beta) dw
              with alpha_t^2 = exp(-int_0^t beta), so beta = -d log alpha^2/dt = d softplus(gamma)/dt
              = gamma'(t) sigmoid(gamma) = gamma'(t) sigma_t^2 (gamma' by jax.jvp of the schedule).
              Reverse: dz = [-beta z/2 - beta score] dt + sqrt(beta) dw_bar, score = -eps_hat/sigma.
  ode         probability-flow ODE, Heun's method in EDM variables x = z/alpha, dx/dsigma_edm = eps_hat
              (space 'edm', Karras et al. 2022, Alg. 1) or on the flow ODE dz_OT/dtau = eps_hat - x0_hat (space
              'ot'); its Euler step is exactly DDIM (eta = 0) in both. A step to gamma = -inf is Euler only.
  pc          per step: `corrector_steps` annealed Langevin moves at t (signal-to-noise `snr`,
              score_sde's step size), then an ancestral predictor step to s (Song et al. 2021b, Alg. 2-5).
  dpm_solver  multistep DPM-Solver++ (prediction='x0') or DPM-Solver (prediction='eps') of
              `order` 1-3 in lambda = log(alpha/sigma) = -gamma/2 (half the log-SNR; a grid
              uniform in one is uniform in the other); warm-up with lower orders, except that
              order 3 starts with a second-order midpoint step (one extra evaluation) so its
              global order stays 3; lower_order_final lowers the order of the last steps when
              num_steps < 15 (Lu et al. 2022b).
Common options: grid ('uniform_t' | 'uniform_logsnr' | 'edm', with rho | 'uniform_ot': uniform in the OT path's
time, where ddim is Euler on the flow ODE), t_min, t_max, clip_x0, dynamic_threshold (percentile p),
final_denoise, return_trajectory (then returns (x, traj) with traj [N + 1, *shape] the z's on the grid, z_1
first), z_init (the starting latent at t_max instead of a N(0, I) draw, e.g. from `ddim_encode`). Options are
static Python values. `num_evaluations` gives the network evaluations of a call. A config names only the
options it changes (`options_from_config`: None means the method's default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vdm.core.gaussian import VARIANCES, transition
from vdm.core.parameterization import KINDS, to_x0_eps
from vdm.core.schedules import Schedule, alpha_sigma, dgamma_dt, inverse
from vdm.sampling import solvers
from vdm.sampling.solvers import GRIDS, threshold_x0

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Any]

# Options every method takes, and their defaults (grid None: the method's default grid).
COMMON_DEFAULTS = dict(
    grid=None,
    rho=7.0,
    t_min=0.0,
    t_max=1.0,
    clip_x0=False,
    dynamic_threshold=None,
    final_denoise=True,
    return_trajectory=False,
    z_init=None,
)
# (ok(opts), what is valid) for the common options; each method's own checks are in its SAMPLERS entry.
COMMON_CHECKS = (
    (lambda o: o["grid"] in GRIDS, f"grid must be one of {GRIDS}"),
    (lambda o: 0.0 <= o["t_min"] < o["t_max"] <= 1.0, "need 0 <= t_min < t_max <= 1"),
    (lambda o: o["rho"] > 0, "rho must be > 0"),
    (
        lambda o: o["dynamic_threshold"] is None or 0.0 < o["dynamic_threshold"] <= 1.0,
        "dynamic_threshold is a percentile p in (0, 1] (or None)",
    ),
)


# ----------------------------------------------------------------------------- one step
# A step is read_prediction (x0_hat, eps_hat of the network's output) and one vdm.sampling.solvers update: the
# contract steps are those two calls, and the runners make the same two inside their scans (_make_predict).


def read_prediction(
    pred: Array,
    z: Array,
    gamma: Array,
    parameterization: str = "eps",
    *,
    clip_x0: bool = False,
    dynamic_threshold: float | None = None,
) -> tuple[Array, Array]:
    """(x0_hat, eps_hat) from a prediction of kind `parameterization` (z = alpha x0 + sigma eps); with thresholding,
    eps_hat = (z - alpha x0_hat) / sigma follows the modified x0_hat (Saharia et al. 2022, sec. 2.3)."""
    x0, eps = to_x0_eps(pred, z, gamma, parameterization)
    if clip_x0 or dynamic_threshold is not None:
        x0 = threshold_x0(x0, clip=clip_x0, percentile=dynamic_threshold)
        eps = solvers.eps_from_x0(z, x0, gamma)
    return x0, eps


def ddim_step(
    z_t: Array,
    pred: Array,
    gamma_t: Array,
    gamma_s: Array,
    *,
    parameterization: str = "eps",
    eta: float = 0.0,
    key: Array | None = None,
    clip_x0: bool = False,
) -> Array:
    """DDIM update z_t -> z_s (Song et al. 2021a, eq. 12): alpha_s x0 + sqrt(sigma_s^2 - s_eta^2) eps + s_eta noise."""
    if eta != 0.0 and key is None:
        raise ValueError("ddim_step with eta > 0 needs a PRNG key.")
    x0, eps = read_prediction(pred, z_t, gamma_t, parameterization, clip_x0=clip_x0)
    noise = None if key is None else jax.random.normal(key, z_t.shape, z_t.dtype)
    return solvers.ddim_update(x0, eps, gamma_t, gamma_s, eta, noise)


def ancestral_step(
    z_t: Array,
    pred: Array,
    gamma_t: Array,
    gamma_s: Array,
    key: Array,
    *,
    parameterization: str = "eps",
    variance: str = "small",
    v_interp: Array | None = None,
) -> Array:
    """Ancestral update z_s ~ N(posterior mean of q(z_s|z_t, x0_hat), var) (Ho et al. 2020, Alg. 2; VDM eq. 29-30)."""
    x0, _ = read_prediction(pred, z_t, gamma_t, parameterization)
    noise = jax.random.normal(key, z_t.shape, z_t.dtype)
    return solvers.ancestral_update(z_t, x0, gamma_t, gamma_s, noise, variance, v_interp)


# ----------------------------------------------------------------------------- options

# Options only a program can pass (arrays, return types); every other option is a config.sampling key (None: default).
PROGRAM_ONLY_OPTIONS = ("return_trajectory", "z_init")
_OLD_UNSET = {"grid": "", "dynamic_threshold": 0}  # how configs before None-means-default said it


def option_names(method: str) -> tuple[str, ...]:
    """The options of `method` a config can set: COMMON_DEFAULTS, SAMPLERS[method].options, less PROGRAM_ONLY_OPTIONS."""
    return tuple(k for k in {**COMMON_DEFAULTS, **_sampler(method).options} if k not in PROGRAM_ONLY_OPTIONS)


def options_from_config(sampling_config) -> dict:
    """The `sample` options config.sampling sets for its method: a key that is None or absent is left to the
    method's default (older configs: grid '' is the default too, dynamic_threshold 0 is off)."""
    s = sampling_config
    return {k: s[k] for k in option_names(s.method) if s.get(k) not in (None, _OLD_UNSET.get(k))}


def resolve_options(method: str, options: dict) -> dict:
    """The options of `method` with defaults filled in; unknown methods, options or values raise ValueError."""
    sampler = _sampler(method)
    valid = {**COMMON_DEFAULTS, **sampler.options}
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for method {method!r}; valid options: {sorted(valid)}.")
    opts = {**valid, **options}
    opts["grid"] = opts["grid"] or sampler.grid
    for ok, message in COMMON_CHECKS + sampler.checks:
        if not ok(opts):
            raise ValueError(f"Bad option for method {method!r}: {message}; got {options}.")
    return opts


def _sampler(method: str) -> Sampler:
    if method not in SAMPLERS:
        raise ValueError(f"Unknown sampling method {method!r}; choose one of {METHODS}.")
    return SAMPLERS[method]


def _make_predict(denoise_fn: DenoiseFn, parameterization: str, shape: tuple, opts: dict, learned: bool):
    """(z, t, gamma) -> (x0_hat, eps_hat, v_interp): the network at (z, t), read by read_prediction."""
    batch = shape[0]

    def predict(z, t, gamma):
        out = denoise_fn(z, jnp.full((batch,), t, jnp.float32))
        v = None
        if learned:
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError("variance='learned' needs denoise_fn to return (pred, v_interp).")
            out, v = out
        elif isinstance(out, (tuple, list)):
            raise ValueError("denoise_fn returned a tuple; that is only valid with variance='learned'.")
        if out.shape != tuple(shape):
            raise ValueError(f"denoise_fn returned shape {out.shape}; expected the sample shape {tuple(shape)}.")
        x0, eps = read_prediction(
            out, z, gamma, parameterization, clip_x0=opts["clip_x0"], dynamic_threshold=opts["dynamic_threshold"]
        )
        return x0, eps, v

    return predict


# ----------------------------------------------------------------------------- the scans (Sampler.run)
# xs holds per-step arrays: t, t_next, g, g_next [N], key [N], last [N] (1.0 on the final step).


def _noise(key, z, last):
    return jax.random.normal(key, z.shape, z.dtype) * (1.0 - last)


def _run_ancestral(predict, z, xs, opts, schedule, trace):
    def body(z, x):
        x0, _, v = predict(z, x["t"], x["g"])
        z = solvers.ancestral_update(z, x0, x["g"], x["g_next"], _noise(x["key"], z, x["last"]), opts["variance"], v)
        return z, (z if trace else None)

    return jax.lax.scan(body, z, xs)


def _run_ddim(predict, z, xs, opts, schedule, trace):
    def body(z, x):
        x0, eps, v = predict(z, x["t"], x["g"])
        noise = _noise(x["key"], z, x["last"]) if opts["eta"] > 0 else None
        z = solvers.ddim_update(x0, eps, x["g"], x["g_next"], opts["eta"], noise, opts["variance"], v)
        return z, (z if trace else None)

    return jax.lax.scan(body, z, xs)


def _run_sde(predict, z, xs, opts, schedule, trace):
    _, dgamma = dgamma_dt(schedule, xs["t"])
    xs = {**xs, "dg": dgamma.astype(z.dtype)}

    def body(z, x):
        _, eps, _ = predict(z, x["t"], x["g"])
        z = solvers.sde_update(z, eps, x["g"], x["dg"], x["t"] - x["t_next"], _noise(x["key"], z, x["last"]))
        return z, (z if trace else None)

    return jax.lax.scan(body, z, xs)


def _run_ode(predict, z, xs, opts, schedule, trace):
    def body(z, x):
        x0, eps, _ = predict(z, x["t"], x["g"])
        z_euler = solvers.edm_euler(z, eps, x["g"], x["g_next"])  # = DDIM: Euler in EDM's and the OT path's variables

        def heun(_):
            x0_next, eps_next, _ = predict(z_euler, x["t_next"], x["g_next"])
            return solvers.heun_update(opts["space"], z, (x0, eps), (x0_next, eps_next), x["g"], x["g_next"])

        z = jax.lax.cond(jnp.isfinite(x["g_next"]), heun, lambda _: z_euler, None)
        return z, (z if trace else None)

    return jax.lax.scan(body, z, xs)


def _run_pc(predict, z, xs, opts, schedule, trace):
    steps = int(opts["corrector_steps"])

    def body(z, x):
        keys = jax.random.split(x["key"], steps + 1)
        _, sigma = alpha_sigma(x["g"])
        retention = jnp.square(transition(x["g_next"], x["g"])[0])  # alpha_t^2 / alpha_s^2
        for k in range(steps):  # static, small: corrector moves at time t
            _, eps, _ = predict(z, x["t"], x["g"])
            noise = jax.random.normal(keys[k], z.shape, z.dtype)
            z = solvers.langevin_update(z, -eps / sigma, noise, opts["snr"], retention)
        x0, _, _ = predict(z, x["t"], x["g"])
        z = solvers.ancestral_update(z, x0, x["g"], x["g_next"], _noise(keys[-1], z, x["last"]))
        return z, (z if trace else None)

    return jax.lax.scan(body, z, xs)


def _run_dpm(predict, z, xs, opts, schedule, trace):
    order, num = int(opts["order"]), xs["t"].shape[0]
    idx = np.arange(num)
    allowed = np.minimum(order, idx + 1)  # warm-up: history of idx previous steps
    if opts["lower_order_final"] and num < 15:
        allowed = np.minimum(allowed, num - idx)
    xs = {**xs, "order": jnp.asarray(allowed)}
    use_x0 = opts["prediction"] == "x0"

    def model(z, t, g):
        x0, eps, _ = predict(z, t, g)
        return x0, (x0 if use_x0 else eps)

    def body(carry, x):
        z, m1, m2, g1, g2 = carry
        x0, m0 = model(z, x["t"], x["g"])
        o = jnp.where(jnp.isfinite(x["g_next"]), x["order"], 1)  # h = inf: only the first-order step is defined
        z_new = solvers.dpm_multistep_update(z, (m0, m1, m2), (x["g"], g1, g2), x["g_next"], o, opts["prediction"])
        if not use_x0:  # eps form cannot reach sigma = 0
            z_new = jnp.where(jnp.isfinite(x["g_next"]), z_new, x0)
        return (z_new, m0, m1, x["g"], g1), (z_new if trace else None)

    g0 = xs["g"][0]
    carry = (z, jnp.zeros_like(z), jnp.zeros_like(z), g0 + 1.0, g0 + 2.0)
    if order < 3 or num < 2:
        (z, *_), traj = jax.lax.scan(body, carry, xs)
        return z, traj
    # Order 3: a first-order first step would cap the global order at 2, so the first step is a
    # second-order single step through the log-SNR midpoint (one extra evaluation).
    first = jax.tree.map(lambda a: a[0], xs)
    t_mid = inverse(schedule, 0.5 * (first["g"] + first["g_next"]), opts["t_min"], opts["t_max"])
    g_mid = schedule(t_mid).astype(z.dtype)
    _, m0 = model(z, first["t"], first["g"])
    z_mid = solvers.dpm_multistep_update(
        z, (m0, m0, m0), (first["g"], g0 + 1.0, g0 + 2.0), g_mid, 1, opts["prediction"]
    )
    _, m_mid = model(z_mid, t_mid, g_mid)  # forward point: same divided difference
    z1 = solvers.dpm_multistep_update(
        z, (m0, m_mid, m0), (first["g"], g_mid, g0 + 2.0), first["g_next"], 2, opts["prediction"]
    )
    carry = (z1, m0, jnp.zeros_like(z), first["g"], g0 + 1.0)
    (z, *_), traj = jax.lax.scan(body, carry, jax.tree.map(lambda a: a[1:], xs))
    return z, (jnp.concatenate([z1[None], traj]) if trace else None)


# ----------------------------------------------------------------------------- the table


class Sampler(NamedTuple):
    """One sampler method: its runner, its own options (defaults and checks), default grid and steps, its NFE."""

    run: Callable  # (predict, z_1, xs, opts, schedule, trace) -> (z_{t_min}, the z's per step or None)
    options: dict  # its own options and their defaults (every method also takes COMMON_DEFAULTS)
    checks: tuple  # (ok(opts), what is valid) for its own options
    grid: str  # the time grid when the option grid is None
    num_steps: int  # steps when sample() is given none
    evaluations: Callable  # (num_steps, opts, schedule or None) -> network evaluations of the steps


def _ode_evaluations(n: int, opts: dict, schedule: Schedule | None) -> int:
    """Heun: two per step, one on a last step to gamma(t_min) = -inf (Euler only; `schedule` tells, None: finite)."""
    last_finite = schedule is None or bool(jnp.isfinite(schedule(jnp.float32(opts["t_min"]))))
    return 2 * n - (0 if last_finite else 1)


SAMPLERS = {
    "ancestral": Sampler(
        _run_ancestral,
        dict(variance="small"),
        ((lambda o: o["variance"] in VARIANCES, f"variance must be one of {VARIANCES}"),),
        grid="uniform_t",
        num_steps=1000,
        evaluations=lambda n, o, schedule: n,
    ),
    "ddim": Sampler(
        _run_ddim,
        dict(eta=0.0, variance="small"),
        (
            (lambda o: 0.0 <= o["eta"] <= 1.0, "eta must lie in [0, 1]"),
            (lambda o: o["variance"] in VARIANCES, f"variance must be one of {VARIANCES}"),
        ),
        grid="uniform_t",
        num_steps=50,
        evaluations=lambda n, o, schedule: n,
    ),
    "sde": Sampler(_run_sde, {}, (), grid="uniform_t", num_steps=1000, evaluations=lambda n, o, schedule: n),
    "ode": Sampler(
        _run_ode,
        dict(space="edm"),
        ((lambda o: o["space"] in solvers.ODE_SPACES, f"space must be one of {solvers.ODE_SPACES}"),),
        grid="edm",
        num_steps=18,
        evaluations=_ode_evaluations,
    ),
    "pc": Sampler(
        _run_pc,
        dict(snr=0.16, corrector_steps=1),
        (
            (lambda o: o["snr"] > 0, "snr must be > 0"),
            (
                lambda o: int(o["corrector_steps"]) == o["corrector_steps"] >= 0,
                "corrector_steps must be an integer >= 0",
            ),
        ),
        grid="uniform_t",
        num_steps=1000,
        evaluations=lambda n, o, schedule: n * (int(o["corrector_steps"]) + 1),
    ),
    "dpm_solver": Sampler(
        _run_dpm,
        dict(order=2, prediction="x0", lower_order_final=True),
        (
            (lambda o: o["order"] in (1, 2, 3), "order must be 1, 2 or 3"),
            (lambda o: o["prediction"] in ("x0", "eps"), "prediction must be 'x0' (DPM-Solver++) or 'eps'"),
        ),
        grid="uniform_logsnr",
        num_steps=20,  # order 3: one extra evaluation (the midpoint of its first step)
        evaluations=lambda n, o, schedule: n + int(o["order"] == 3 and n >= 2),
    ),
}
METHODS = tuple(SAMPLERS)


# ----------------------------------------------------------------------------- entry point


def sample(
    denoise_fn: DenoiseFn,
    shape: tuple[int, ...],
    key: Array,
    *,
    schedule: Schedule,
    parameterization: str = "eps",
    method: str = "ancestral",
    num_steps: int | None = None,
    **options,
) -> Array | tuple[Array, Array]:
    """Draw x [*shape] from the reverse diffusion with one of METHODS (see the module docstring).

    denoise_fn(z [*shape], t [B]) returns a prediction of kind `parameterization` (for
    variance='learned', a pair (pred, v_interp in [0, 1])). num_steps defaults per method
    (SAMPLERS[method].num_steps). Returns x, or (x, traj [N + 1, *shape]) with return_trajectory=True.
    """
    opts = resolve_options(method, options)
    if parameterization not in KINDS:
        raise ValueError(f"Unknown parameterization {parameterization!r}; choose one of {KINDS}.")
    num_steps = SAMPLERS[method].num_steps if num_steps is None else num_steps
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
    shape = tuple(int(d) for d in shape)
    if len(shape) < 1 or shape[0] < 1:
        raise ValueError(f"shape must be (batch, ...) with batch >= 1, got {shape}.")
    num_steps = int(num_steps)

    t, g = solvers.time_grid(
        schedule, num_steps, opts["grid"], t_min=opts["t_min"], t_max=opts["t_max"], rho=opts["rho"]
    )
    key_init, key_steps = jax.random.split(key)
    if opts["z_init"] is None:
        z = jax.random.normal(key_init, shape)
    else:
        z = jnp.asarray(opts["z_init"])
        if z.shape != shape:
            raise ValueError(f"z_init has shape {z.shape}; expected the sample shape {shape}.")
    g = g.astype(z.dtype)
    xs = {
        "t": t[:-1],
        "t_next": t[1:],
        "g": g[:-1],
        "g_next": g[1:],
        "key": jax.random.split(key_steps, num_steps),
        "last": (jnp.arange(num_steps) == num_steps - 1).astype(z.dtype),
    }
    learned = opts.get("variance") == "learned"
    predict = _make_predict(denoise_fn, parameterization, shape, opts, learned)
    z_end, traj = SAMPLERS[method].run(predict, z, xs, opts, schedule, opts["return_trajectory"])

    if opts["final_denoise"]:
        x, _, _ = predict(z_end, t[-1], g[-1])
    else:
        x = z_end / alpha_sigma(g[-1])[0]
    if opts["return_trajectory"]:
        return x, jnp.concatenate([z[None], traj], axis=0)
    return x


def num_evaluations(method: str, num_steps: int, *, schedule: Schedule | None = None, **options) -> int:
    """Network evaluations one `sample` call makes (including the final denoising step).

    For 'ode' the last step is Euler only if gamma(t_min) = -inf, which needs `schedule` to tell.
    """
    opts = resolve_options(method, options)
    return SAMPLERS[method].evaluations(int(num_steps), opts, schedule) + int(bool(opts["final_denoise"]))


def ddim_encode(
    denoise_fn: DenoiseFn,
    x: Array,
    *,
    schedule: Schedule,
    parameterization: str = "eps",
    num_steps: int = 50,
    grid: str = "uniform_t",
    t_min: float = 0.0,
    t_max: float = 1.0,
    rho: float = 7.0,
) -> Array:
    """DDIM inversion x -> z_{t_max}: the eta = 0 update run forward in time from z_{t_min} = alpha_{t_min} x
    (Song et al. 2021a, sec. 4.3). Decoding with sample(method='ddim', z_init=z, final_denoise=False)
    on the same grid inverts it up to the discretisation error."""
    if parameterization not in KINDS:
        raise ValueError(f"Unknown parameterization {parameterization!r}; choose one of {KINDS}.")
    t, g = solvers.time_grid(schedule, int(num_steps), grid, t_min=t_min, t_max=t_max, rho=rho)
    t, g = t[::-1], g[::-1].astype(x.dtype)
    predict = _make_predict(denoise_fn, parameterization, x.shape, dict(COMMON_DEFAULTS), False)

    def body(z, xs):
        t_cur, g_cur, g_next = xs
        x0, eps, _ = predict(z, t_cur, g_cur)
        return solvers.ddim_update(x0, eps, g_cur, g_next, 0.0, None), None

    z, _ = jax.lax.scan(body, alpha_sigma(g[0])[0] * x, (t[:-1], g[:-1], g[1:]))
    return z
