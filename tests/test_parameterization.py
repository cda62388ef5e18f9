"""eps, x0, score, v and flow: conversions against the analytic optimal denoiser of Gaussian data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import schedules
from vdm.parameterization import KINDS, convert, scale_input


def _gaussian_optimal_predictions(z, gamma, s):
    """The Bayes-optimal predictions for x ~ N(0, s^2), written separately per kind (no conversion)."""
    a2 = jax.nn.sigmoid(-gamma)
    s2 = jax.nn.sigmoid(gamma)
    total = a2 * s**2 + s2  # Var(z)
    return {
        "x0": jnp.sqrt(a2) * s**2 * z / total,  # E[x | z]
        "eps": jnp.sqrt(s2) * z / total,  # E[eps | z]
        "score": -z / total,  # d/dz log N(z; 0, total)
        "v": (jnp.sqrt(a2 * s2) - jnp.sqrt(a2 * s2) * s**2) * z / total,  # E[alpha eps - sigma x | z]
        "flow": (jnp.sqrt(s2) - jnp.sqrt(a2) * s**2) * z / total,  # E[eps - x | z] = Cov(eps - x, z) z / Var(z)
    }


def _setup(n=64):
    key = jax.random.PRNGKey(1)
    z = jax.random.normal(key, (n, 3)) * 1.7
    gamma = jnp.linspace(-9.0, 7.0, n)[:, None]
    s = jnp.array([0.2, 1.0, 2.5])
    return z, gamma, s


@pytest.mark.parametrize("source", KINDS)
@pytest.mark.parametrize("target", KINDS)
def test_convert_maps_optimal_predictions_to_each_other(source, target):
    z, gamma, s = _setup()
    preds = _gaussian_optimal_predictions(z, gamma, s)
    got = convert(preds[source], z, gamma, source=source, target=target)
    np.testing.assert_allclose(got, preds[target], rtol=2e-3, atol=2e-4 * float(jnp.abs(preds[target]).max()))


@pytest.mark.parametrize("source", KINDS)
@pytest.mark.parametrize("target", KINDS)
def test_convert_round_trips(source, target):
    key = jax.random.PRNGKey(2)
    z = jax.random.normal(key, (128, 4))
    gamma = jax.random.uniform(jax.random.PRNGKey(3), (128, 1), minval=-6.0, maxval=6.0)
    pred = jax.random.normal(jax.random.PRNGKey(4), (128, 4))
    back = convert(convert(pred, z, gamma, source=source, target=target), z, gamma, source=target, target=source)
    np.testing.assert_allclose(back, pred, rtol=1e-3, atol=1e-3)


def test_convert_jits_float32_and_rejects_unknown_kinds():
    z, gamma, s = _setup(8)
    out = jax.jit(lambda p, z, g: convert(p, z, g, source="v", target="score"))(z, z, gamma)
    assert out.dtype == jnp.float32
    with pytest.raises(ValueError, match="choose one of"):
        convert(z, z, gamma, source="epsilon", target="x0")


def test_flow_is_the_ot_velocity_and_the_ot_input_is_the_ot_paths_z():
    """DESIGN.md's contract at the VP point z = alpha x + sigma eps: flow = eps - x reads back as eps and x exactly, and
    the 'ot' input z / (alpha + sigma) is (1 - t) x + t eps at the OT path's t = sigmoid(gamma / 2)."""
    key = jax.random.PRNGKey(5)
    x, eps = jax.random.normal(key, (2, 256, 3))
    gamma = jax.random.uniform(jax.random.PRNGKey(6), (256, 1), minval=-8.0, maxval=8.0)
    alpha, sigma = schedules.alpha_sigma(gamma)
    z = alpha * x + sigma * eps
    np.testing.assert_allclose(convert(eps - x, z, gamma, source="flow", target="eps"), eps, atol=2e-5)
    np.testing.assert_allclose(convert(eps - x, z, gamma, source="flow", target="x0"), x, atol=2e-5)
    for kind, truth in (("eps", eps), ("x0", x), ("v", alpha * eps - sigma * x)):
        np.testing.assert_allclose(convert(truth, z, gamma, source=kind, target="flow"), eps - x, atol=5e-4)
    t = 1.0 / (1.0 + jnp.exp(-0.5 * gamma))
    np.testing.assert_allclose(scale_input(z, gamma, "ot"), (1 - t) * x + t * eps, atol=1e-5)
    np.testing.assert_allclose(schedules.ot_time(gamma), t, rtol=1e-6)
    assert scale_input(z, gamma, "none") is z
    with pytest.raises(ValueError, match="choose one of"):
        scale_input(z, gamma, "edm")
