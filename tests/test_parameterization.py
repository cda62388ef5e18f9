"""eps, x0, score and v: conversions against the analytic optimal denoiser of Gaussian data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.parameterization import KINDS, convert


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
