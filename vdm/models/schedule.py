"""VDM's learned noise schedules (monotone net; learned linear) and the variance-minimising update (Kingma et al. 2021, sec. 5.2, app. I.2).

Schedule. gamma(t) = gamma_min + (gamma_max - gamma_min) * (g(t) - g(0)) / (g(1) - g(0)),
with g a monotone network (VDM's NoiseNet):
    g(t) = l1(t) + l3(sigmoid(l2(l1(t)))),
l1 = Dense(1), l2 = Dense(hidden), l3 = Dense(1, no bias), all kernels made
positive by softplus, so g (hence gamma) is strictly increasing and the
normalisation pins gamma(0) = gamma_min, gamma(1) = gamma_max exactly.
Parameters: params['shape'] (the network) and, with learn_endpoints=True,
params['endpoints'] = {gamma_min, gap_raw}, gamma_max = gamma_min +
softplus(gap_raw) + MIN_GAP > gamma_min always.

Why the mean loss ignores the shape. With a denoiser that sees the noise level
only through gamma (our nets do: they read the rescaled gamma, never t), the
continuous-time diffusion loss for one x is, with t ~ U(0, 1), eps ~ N(0, I),
    L = 1/2 gamma'(t) ||eps - eps_hat(z_gamma(t), gamma(t))||^2,
    E_t E_eps[L] = 1/2 int_0^1 gamma'(t) mse(gamma(t)) dt
                 = 1/2 int_{gamma_min}^{gamma_max} mse(gamma) dgamma,
    mse(gamma) = E_eps ||eps - eps_hat(alpha(gamma) x + sigma(gamma) eps, gamma)||^2,
by the change of variables gamma = gamma(t) (VDM eq. 16-17). The integral
depends on the schedule only through its endpoints, so its gradient w.r.t. the
shape parameters eta is zero. The shape only moves the Monte-Carlo variance:
    grad_eta Var[L] = grad_eta (E[L^2] - E[L]^2) = grad_eta E[L^2] = E[2 L grad_eta L].
Per example, L_i depends on eta through gamma_i = gamma(t_i) (which sets z_t
and the net's conditioning) and gamma'_i = gamma'(t_i), so by the chain rule
    grad_eta L_i = dL_i/dgamma_i grad_eta gamma_i + dL_i/dgamma'_i grad_eta gamma'_i,
and the batch estimate (1/B) sum_i 2 L_i grad_eta L_i is ONE vector-Jacobian
product of eta -> (gamma(t_i), gamma'(t_i))_i with cotangents
(2 L_i dL_i/dgamma_i / B, 2 L_i dL_i/dgamma'_i / B). The trainer gets the two
partials from its single backward pass through the network by treating
gamma_t and gamma'(t) as inputs. The endpoints do change E[L], so they take
the ordinary gradient of the mean loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any

MIN_GAP = 1e-3  # smallest gamma_max - gamma_min the learned endpoints allow


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = log(1 + e^x) = y, i.e. x = log(e^y - 1), for y > 0."""
    if y <= 0:
        raise ValueError(f"inverse_softplus needs y > 0, got {y}")
    return y + math.log(-math.expm1(-y))


class PositiveDense(nn.Module):
    """y = x @ softplus(K) (+ b): a Dense layer whose kernel is elementwise positive."""

    features: int
    use_bias: bool = True
    kernel_init: Callable[..., Array] = nn.initializers.normal(1.0)
    bias_init: Callable[..., Array] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [N, F_in] -> [N, features]."""
        raw = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        y = x @ jax.nn.softplus(raw)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


class MonotoneNet(nn.Module):
    """g(t) = l1(t) + l3(sigmoid(l2(l1(t)))), positive kernels: strictly increasing in t (VDM NoiseNet)."""

    hidden: int = 1024

    @nn.compact
    def __call__(self, t: Array) -> Array:
        """t: [N] -> g: [N]."""
        h1 = PositiveDense(1, kernel_init=nn.initializers.constant(inverse_softplus(1.0)), name="l1")(t[:, None])
        h2 = PositiveDense(self.hidden, bias_init=nn.initializers.normal(1.0), name="l2")(h1)
        # Small positive output weights: the schedule starts close to linear.
        h3 = PositiveDense(
            1, use_bias=False, kernel_init=nn.initializers.constant(inverse_softplus(1.0 / self.hidden)), name="l3"
        )(jax.nn.sigmoid(h2))
        return (h1 + h3)[:, 0]


class Endpoints(nn.Module):
    """Learned (gamma_min, gamma_max) with gamma_max = gamma_min + softplus(gap_raw) + MIN_GAP."""

    gamma_min_init: float = -13.3
    gamma_max_init: float = 5.0

    @nn.compact
    def __call__(self) -> tuple[Array, Array]:
        gap0 = self.gamma_max_init - self.gamma_min_init - MIN_GAP
        gmin = self.param("gamma_min", nn.initializers.constant(self.gamma_min_init), ())
        gap_raw = self.param("gap_raw", nn.initializers.constant(inverse_softplus(gap0)), ())
        return gmin, gmin + (jax.nn.softplus(gap_raw) + MIN_GAP)


class LearnedSchedule(nn.Module):
    """Learned monotone gamma(t) with exact endpoints; `lambda t: sched.apply(p, t)` is a Schedule."""

    gamma_min_init: float = -13.3
    gamma_max_init: float = 5.0
    learn_endpoints: bool = False
    hidden: int = 1024

    def setup(self) -> None:
        if not self.gamma_max_init - self.gamma_min_init > MIN_GAP:
            raise ValueError(
                f"need gamma_max_init > gamma_min_init + {MIN_GAP}, got {self.gamma_min_init}, {self.gamma_max_init}"
            )
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        self.shape = MonotoneNet(self.hidden)
        if self.learn_endpoints:
            self.endpoints = Endpoints(self.gamma_min_init, self.gamma_max_init)

    def gamma_range(self) -> tuple[Array, Array]:
        """(gamma_min, gamma_max): learned scalars or the fixed initial values."""
        if self.learn_endpoints:
            return self.endpoints()
        return (jnp.float32(self.gamma_min_init), jnp.float32(self.gamma_max_init))

    def __call__(self, t: Array) -> Array:
        """gamma(t) = gamma_min (1 - r) + gamma_max r, r = (g(t)-g(0))/(g(1)-g(0)); t any shape."""
        t = jnp.asarray(t, dtype=jnp.float32)
        flat = t.reshape(-1)
        g = self.shape(jnp.concatenate([flat, jnp.array([0.0, 1.0], jnp.float32)]))
        g_t, g0, g1 = g[:-2], g[-2], g[-1]
        r = (g_t - g0) / (g1 - g0)
        # Floating point may leave r(0), r(1) an ulp off 0, 1; fix the value only,
        # keeping the derivative of the smooth r (so jvp gives gamma'(0), gamma'(1)).
        fix = jnp.where(flat == 0.0, -r, jnp.where(flat == 1.0, 1.0 - r, 0.0))
        r = r + jax.lax.stop_gradient(fix)
        gmin, gmax = self.gamma_range()
        return (gmin * (1.0 - r) + gmax * r).reshape(t.shape)


class LearnedLinearSchedule(nn.Module):
    """gamma(t) = b + |w| t with learned scalars w, b (google-research/vdm 'learnable_scalar'); a Schedule when bound.

    Init w = gamma_max - gamma_min, b = gamma_min, so it starts as linear_logsnr(gamma_min,
    gamma_max); learned gamma(0) = b, gamma(1) = b + |w|. Strictly increasing whenever w != 0.
    Params: {'w': [], 'b': []} (the reference stores shape [1]; the names match its decay mask).
    Both take the ordinary gradient of the mean loss: only the endpoints change E[L].
    """

    gamma_min_init: float = -13.3
    gamma_max_init: float = 5.0

    @nn.compact
    def __call__(self, t: Array) -> Array:
        """t: any shape -> gamma(t), same shape, float32."""
        if not self.gamma_max_init > self.gamma_min_init:
            raise ValueError(f"need gamma_max_init > gamma_min_init, got {self.gamma_min_init}, {self.gamma_max_init}")
        w = self.param("w", nn.initializers.constant(self.gamma_max_init - self.gamma_min_init), ())
        b = self.param("b", nn.initializers.constant(self.gamma_min_init), ())
        return b + jnp.abs(w) * jnp.asarray(t, jnp.float32)

    def gamma_range(self) -> tuple[Array, Array]:
        """(gamma(0), gamma(1)) = (b, b + |w|)."""
        return self(jnp.float32(0.0)), self(jnp.float32(1.0))
