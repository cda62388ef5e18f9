"""Analytic denoisers for tests: Gaussian data and an isotropic Gaussian mixture.

For data x ~ p(x) and z_t = alpha_t x + sigma_t eps, the noisy marginal q(z_t) is known in
closed form for both families, and so are the optimal denoisers (Tweedie):
    score(z, t) = grad log q(z_t),   eps_hat = -sigma score,   x0_hat = (z + sigma^2 score)/alpha.

- Gaussian data N(mu, diag(s^2)):  q(z_t) = N(alpha mu, alpha^2 s^2 + sigma^2) per dimension,
  eps_hat = sigma (z - alpha mu) / (alpha^2 s^2 + sigma^2). Its probability-flow ODE is linear
  per dimension with the closed-form map
      z_b = alpha_b mu + sqrt(v_b / v_a) (z_a - alpha_a mu),   v = alpha^2 s^2 + sigma^2.
- Mixture sum_k pi_k N(mu_k, s_k^2 I): q(z_t) = sum_k pi_k N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I);
  the score is the responsibility-weighted sum of the component scores, and the responsibilities
  are the exact class posterior p(y = k | z_t).

Also two sample distances: the energy distance (Szekely & Rizzo 2013) and the sliced
Wasserstein-1 distance. Everything is jnp and jit-able, usable inside the samplers' scans.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vdm.core.parameterization import convert
from vdm.core.schedules import Schedule

Array = jax.Array
LOG_2PI = math.log(2.0 * math.pi)


def _var_ab(gamma: Array) -> tuple[Array, Array]:
    """(alpha^2, sigma^2) = (sigmoid(-gamma), sigmoid(gamma))."""
    gamma = jnp.asarray(gamma)
    return jax.nn.sigmoid(-gamma), jax.nn.sigmoid(gamma)


@dataclasses.dataclass(frozen=True)
class GaussianData:
    """x = mean + R diag(std) xi, xi ~ N(0, I): mean, std [D]; rotation R [D, D] orthogonal or None (= I).

    Noise is isotropic, so everything is computed per dimension in the principal coordinates
    u = R^T x (mean_u = R^T mean), where q(u_t) = N(alpha mean_u, alpha^2 std^2 + sigma^2).
    """

    mean: np.ndarray
    std: np.ndarray
    rotation: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(np.size(self.mean))

    def _rot(self) -> Array:
        return jnp.eye(self.dim) if self.rotation is None else jnp.asarray(self.rotation)

    def _to_u(self, z: Array) -> Array:
        return z @ self._rot()

    def _from_u(self, u: Array) -> Array:
        return u @ self._rot().T

    def sample(self, key: Array, n: int) -> Array:
        """n draws, [n, D]."""
        return jnp.asarray(self.mean) + self._from_u(jnp.asarray(self.std) * jax.random.normal(key, (n, self.dim)))

    def marginal(self, gamma: Array) -> tuple[Array, Array]:
        """(mean, var) of q(u_t) = N(alpha mean_u, alpha^2 s^2 + sigma^2) in principal coordinates."""
        a2, s2 = _var_ab(gamma)
        return jnp.sqrt(a2) * self._to_u(jnp.asarray(self.mean)), a2 * jnp.square(jnp.asarray(self.std)) + s2

    def marginal_log_prob(self, z: Array, gamma: Array) -> Array:
        """log q(z_t) per example; z: [B, D], gamma broadcastable to [B, 1]."""
        m, v = self.marginal(gamma)
        return jnp.sum(-0.5 * (LOG_2PI + jnp.log(v) + jnp.square(self._to_u(z) - m) / v), axis=-1)

    def log_prob(self, x: Array) -> Array:
        """log p(x) per example, [B]."""
        v = jnp.square(jnp.asarray(self.std))
        u = self._to_u(x - jnp.asarray(self.mean))
        return jnp.sum(-0.5 * (LOG_2PI + jnp.log(v) + jnp.square(u) / v), axis=-1)

    def eps(self, z: Array, gamma: Array) -> Array:
        """Optimal eps_hat = R [sigma (u - alpha mean_u) / (alpha^2 s^2 + sigma^2)]; gamma broadcastable to z."""
        m, v = self.marginal(gamma)
        return self._from_u(jnp.sqrt(jax.nn.sigmoid(jnp.asarray(gamma))) * (self._to_u(z) - m) / v)

    def ode_map(self, z_a: Array, gamma_a: Array, gamma_b: Array) -> Array:
        """Exact probability-flow ODE map z_a -> z_b: u_b = alpha_b mean_u + sqrt(v_b/v_a)(u_a - alpha_a mean_u)."""
        m_a, v_a = self.marginal(gamma_a)
        m_b, v_b = self.marginal(gamma_b)
        return self._from_u(m_b + jnp.sqrt(v_b / v_a) * (self._to_u(z_a) - m_a))

    def prior_kl(self, gamma_1: Array) -> Array:
        """KL(q(z_1) || N(0, I)) = sum_d 1/2 [v_d + m_d^2 - 1 - log v_d], the ODE likelihood's prior mismatch."""
        m, v = self.marginal(gamma_1)
        return 0.5 * jnp.sum(v + jnp.square(m) - 1.0 - jnp.log(v))


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """x ~ sum_k weights_k N(means_k, stds_k^2 I); means: [K, D], stds: [K], weights: [K] (sum 1)."""

    means: np.ndarray
    stds: np.ndarray
    weights: np.ndarray

    @property
    def dim(self) -> int:
        return int(np.shape(self.means)[1])

    @property
    def num_components(self) -> int:
        return int(np.shape(self.means)[0])

    def sample(self, key: Array, n: int) -> tuple[Array, Array]:
        """(x [n, D], labels [n]) with labels ~ Categorical(weights)."""
        k_lab, k_eps = jax.random.split(key)
        labels = jax.random.choice(k_lab, self.num_components, (n,), p=jnp.asarray(self.weights))
        x = jnp.asarray(self.means)[labels] + jnp.asarray(self.stds)[labels, None] * jax.random.normal(
            k_eps, (n, self.dim)
        )
        return x, labels

    def _component_terms(self, z: Array, gamma: Array) -> tuple[Array, Array, Array]:
        """(log pi_k + log N(z; alpha mu_k, v_k I) [B, K], centred z - alpha mu_k [B, K, D], v_k [B, K])."""
        a2, s2 = _var_ab(jnp.reshape(jnp.asarray(gamma), (-1, 1)))  # [B or 1, 1]
        v = a2 * jnp.square(jnp.asarray(self.stds))[None, :] + s2  # [B, K]
        diff = z[:, None, :] - jnp.sqrt(a2)[:, :, None] * jnp.asarray(self.means)[None]  # [B, K, D]
        logn = -0.5 * (self.dim * (LOG_2PI + jnp.log(v)) + jnp.sum(jnp.square(diff), -1) / v)
        return jnp.log(jnp.asarray(self.weights))[None, :] + logn, diff, v

    def marginal_log_prob(self, z: Array, gamma: Array) -> Array:
        """log q(z_t) per example; z: [B, D]; gamma: scalar or [B]."""
        joint, _, _ = self._component_terms(z, gamma)
        return jax.nn.logsumexp(joint, axis=-1)

    def log_prob(self, x: Array) -> Array:
        """log p(x) per example (the t = 0, gamma = -inf marginal)."""
        return self.marginal_log_prob(x, -jnp.inf)

    def class_log_posterior(self, z: Array, gamma: Array) -> Array:
        """Exact log p(y = k | z_t), [B, K] (the responsibilities of q(z_t)'s components)."""
        joint, _, _ = self._component_terms(z, gamma)
        return jax.nn.log_softmax(joint, axis=-1)

    def score(self, z: Array, gamma: Array) -> Array:
        """grad_z log q(z_t) = -sum_k r_k(z) (z - alpha mu_k) / v_k, [B, D]."""
        joint, diff, v = self._component_terms(z, gamma)
        r = jax.nn.softmax(joint, axis=-1)
        return -jnp.sum((r / v)[:, :, None] * diff, axis=1)

    def eps(self, z: Array, gamma: Array) -> Array:
        """Optimal eps_hat = -sigma score, [B, D]."""
        sigma = jnp.sqrt(jax.nn.sigmoid(jnp.reshape(jnp.asarray(gamma), (-1, 1))))
        return -sigma * self.score(z, gamma)

    def component(self, k: int) -> GaussianMixture:
        """The one-component mixture of class k (the conditional p(x | y = k))."""
        return GaussianMixture(np.asarray(self.means)[k : k + 1], np.asarray(self.stds)[k : k + 1], np.ones((1,)))


DenoiseFn = Callable[[Array, Array], Array]


def denoise_fn(data: GaussianData | GaussianMixture, schedule: Schedule, parameterization: str = "eps") -> DenoiseFn:
    """The exact denoiser (z [B, D], t [B]) -> prediction of kind `parameterization` for `data`."""

    def fn(z: Array, t: Array) -> Array:
        gamma = schedule(t)[:, None]
        eps = data.eps(z, gamma) if isinstance(data, GaussianData) else data.eps(z, gamma[:, 0])
        return convert(eps, z, gamma, source="eps", target=parameterization)

    return fn


def conditional_denoise_fn(
    mixture: GaussianMixture, schedule: Schedule, parameterization: str = "eps"
) -> Callable[[Array, Array, Array], Array]:
    """Exact (z, t, y) -> prediction for p(x | y) = component y; y == K (the null label) gives p(x)."""
    num = mixture.num_components
    comps = [mixture.component(k) for k in range(num)]

    def fn(z: Array, t: Array, y: Array) -> Array:
        gamma = schedule(t)
        per_class = jnp.stack([c.eps(z, gamma) for c in comps] + [mixture.eps(z, gamma)], axis=0)
        eps = jnp.take_along_axis(per_class, jnp.asarray(y)[None, :, None], axis=0)[0]
        return convert(eps, z, gamma[:, None], source="eps", target=parameterization)

    return fn


def class_log_prob_fn(mixture: GaussianMixture, schedule: Schedule) -> Callable[[Array, Array, Array], Array]:
    """Exact noisy classifier (z, t, y) -> log p(y | z_t), [B]."""

    def fn(z: Array, t: Array, y: Array) -> Array:
        logp = mixture.class_log_posterior(z, schedule(t))
        return jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=1)[:, 0]

    return fn


def energy_distance(x: Array, y: Array) -> Array:
    """Squared energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic), x: [n, D], y: [m, D]."""

    def mean_dist(a, b):
        d2 = jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)
        return jnp.mean(jnp.sqrt(jnp.maximum(d2, 1e-30)))

    return 2.0 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def sliced_wasserstein(x: Array, y: Array, key: Array, num_projections: int = 64) -> Array:
    """Sliced Wasserstein-1: mean over random unit directions of the 1-D W1 of the projections (n = m)."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal sample shapes, got {x.shape} and {y.shape}.")
    dirs = jax.random.normal(key, (x.shape[1], num_projections))
    dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
    px, py = jnp.sort(x @ dirs, axis=0), jnp.sort(y @ dirs, axis=0)
    return jnp.mean(jnp.abs(px - py))


def default_mixture() -> GaussianMixture:
    """The 2-D test mixture: three isotropic components of unequal weight and width."""
    return GaussianMixture(
        means=np.array([[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]]),
        stds=np.array([0.15, 0.25, 0.2]),
        weights=np.array([0.5, 0.3, 0.2]),
    )
