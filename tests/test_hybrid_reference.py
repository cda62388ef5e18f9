"""Improved DDPM's L_hybrid against openai/improved-diffusion's own `training_losses` on fixed inputs.

The fixture (tests/fixtures/hybrid_improved_diffusion.npz) was written by scripts/make_hybrid_fixture.py with their
GaussianDiffusion (cosine betas, T = 1000, EPSILON, LEARNED_RANGE, RESCALED_MSE) in a scratch torch venv; no torch
here. Their per-example loss is mean_dims (eps - eps_hat)^2 + (T / 1000) KL_t / ln 2 / D; ours is the sum over the D
dimensions, so ours / D must equal theirs. The truth is their code in float64 ('loss64', ...; their float32 run
agrees with it to ~2e-6). Their step k (0-based) is our t = (k + 1) / T; k = 0, their decoder term, is not in the
fixture (vdm's model has a latent z_0 with its own reconstruction term there).
"""

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from vdm import objectives as O
from vdm import schedules
from vdm.parameterization import variance_weight

RTOL = 2e-5  # float32
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hybrid_improved_diffusion.npz")


def _ours(ref, hybrid_units="bits"):
    """vdm's hybrid terms on the fixture's inputs: their step k is our t = (k + 1) / T on their betas' exact schedule."""
    num_steps = ref["betas"].size
    schedule = schedules.from_betas(ref["betas"])
    eps_hat, v = jnp.asarray(ref["eps_hat"]), variance_weight(jnp.asarray(ref["raw_v"]), "interp")
    x = jnp.asarray(ref["x"])
    t = jnp.asarray((ref["k"] + 1) / num_steps, jnp.float32)
    return O.neg_elbo_terms(
        lambda z, t: (eps_hat, v),
        x,
        t,
        jnp.asarray(ref["noise"]),
        jnp.zeros_like(x),
        schedule=schedule,
        weighting="simple",
        num_steps=num_steps,
        hybrid_lambda=0.001,
        hybrid_units=hybrid_units,
    )


def test_hybrid_loss_equals_improved_diffusion_training_losses_on_fixed_inputs():
    ref = np.load(FIXTURE)
    dims = ref["x"][0].size
    terms = _ours(ref)
    np.testing.assert_allclose(np.asarray(terms["diffusion"]) / dims, ref["loss64"], rtol=RTOL)
    # the two parts: their vb = (T / 1000) mean KL / ln 2 = 0.001 L_vlb / (D ln 2), L_vlb = T sum KL in nats
    np.testing.assert_allclose(np.asarray(terms["vlb"]) * 0.001 / (dims * math.log(2.0)), ref["vb64"], rtol=RTOL)
    mse = (np.asarray(terms["diffusion"]) - 0.001 / math.log(2.0) * np.asarray(terms["vlb"])) / dims
    np.testing.assert_allclose(mse, ref["mse64"], rtol=RTOL)
    np.testing.assert_allclose(ref["loss"], ref["loss64"], rtol=1e-5)  # their float32 run, for scale
    # the fix is visible at this tolerance: lambda on nats would change each loss by (1 - ln 2) vb >> RTOL loss
    assert np.all((1 - math.log(2.0)) * ref["vb64"] > 20 * RTOL * ref["loss64"])


def test_the_loss_before_the_fix_lambda_on_nats_does_not_match_and_is_off_by_ln2_in_the_variance_term():
    ref = np.load(FIXTURE)
    dims = ref["x"][0].size
    old = np.asarray(_ours(ref, hybrid_units="nats")["diffusion"]) / dims
    assert np.all(np.abs(old - ref["loss64"]) > 20 * RTOL * ref["loss64"])
    np.testing.assert_allclose(old, ref["mse64"] + math.log(2.0) * ref["vb64"], rtol=RTOL)
    with pytest.raises(ValueError, match="choose one of"):
        _ours(ref, hybrid_units="bit")
