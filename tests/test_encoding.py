"""The 8-bit data encodings ('endpoints' k/127.5 - 1, 'bin_centres' (k + 0.5)/128 - 1) are threaded consistently.

Truth is written here from the definitions: the grids x_k, the exact decoder
p(k | z_0) = N(z_0/alpha_0; x_k, e^gamma_0) / sum_j N(z_0/alpha_0; x_j, e^gamma_0) in float64,
and the bin widths 2/255 and 2/256.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import diffusion as D
from vdm import likelihood
from vdm.core.encoding import ENCODINGS, bin_index, bin_width, decode, encode, grid_values
from vdm.data import pipeline
from vdm.infra.metrics import image_grid

K = np.arange(256)
GRIDS = {"endpoints": K / 127.5 - 1.0, "bin_centres": 2.0 * (K + 0.5) / 256.0 - 1.0}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encode_is_the_grid_and_round_trips(encoding):
    x = encode(K.astype(np.uint8), encoding)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, GRIDS[encoding], atol=1e-7)
    np.testing.assert_array_equal(decode(x, encoding), K)
    np.testing.assert_array_equal(image_grid(x.reshape(1, 16, 16, 1), pad=0, encoding=encoding)[..., 0].ravel(), K)
    np.testing.assert_array_equal(np.asarray(jax.jit(bin_index, static_argnums=1)(jnp.asarray(x), encoding)), K)
    np.testing.assert_allclose(np.diff(GRIDS[encoding]), bin_width(encoding), rtol=1e-12)
    assert np.all(np.abs(x) <= 1.0) and x[0] == -x[-1]  # symmetric in [-1, 1]
    # Half a bin off still decodes to k.
    np.testing.assert_array_equal(decode(x + 0.49 * bin_width(encoding), encoding), K)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_grid_values_are_the_grid_in_the_asked_dtype_and_bin_index_inverts_them(encoding, dtype):
    got = grid_values(encoding, dtype)
    assert got.dtype == dtype and got.shape == (256,)
    np.testing.assert_allclose(
        np.asarray(got, np.float64), GRIDS[encoding], atol=1e-7 if dtype == jnp.float32 else 4e-3
    )
    # The data's grid: XLA divides by 127.5 through a reciprocal, so equal up to one float32 ulp of 1.
    np.testing.assert_allclose(
        np.asarray(grid_values(encoding)), encode(K.astype(np.uint8), encoding), rtol=0, atol=2.0**-23
    )
    # Anywhere strictly inside bin k maps to k, beyond the ends to 0 and 255; numpy input works too.
    offsets = np.array([-0.45, 0.0, 0.45]) * bin_width(encoding)
    inside = (GRIDS[encoding][:, None] + offsets).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(bin_index(inside, encoding)), np.repeat(K[:, None], 3, 1))
    assert np.asarray(bin_index(np.array([-1.5, 1.5]), encoding)).tolist() == [0, 255]
    assert bin_index(inside, encoding).dtype == jnp.int32


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decode_of_float64_is_the_nearest_level_at_float64_resolution(encoding):
    # 1e-12 either side of every boundary between levels: below float32's resolution, not float64's.
    edges = GRIDS[encoding][:-1] + 0.5 * bin_width(encoding)
    np.testing.assert_array_equal(decode(edges - 1e-12, encoding), K[:-1])
    np.testing.assert_array_equal(decode(edges + 1e-12, encoding), K[1:])


def test_bad_encoding_names_the_valid_ones():
    for fn in (lambda: grid_values("centres"), lambda: bin_index(0.0, "centres"), lambda: bin_width("centres")):
        with pytest.raises(ValueError, match="endpoints, bin_centres"):
            fn()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_discrete_decoder_is_the_exact_normalised_gaussian_on_the_grid(encoding):
    rng = np.random.default_rng(0)
    x_grid = GRIDS[encoding]
    for gamma_0 in (-13.3, -6.0, 0.0):
        a0 = math.sqrt(1.0 / (1.0 + math.exp(gamma_0)))
        k = rng.integers(0, 256, size=(3, 4))
        z_0 = a0 * (x_grid[k] + math.exp(0.5 * gamma_0) * rng.standard_normal(k.shape))
        logits = -0.5 * (z_0[..., None] / a0 - x_grid) ** 2 / math.exp(gamma_0)
        want_table = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        got = np.asarray(D.categorical_log_probs(jnp.asarray(z_0, jnp.float32), jnp.float32(gamma_0), encoding))
        np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(got, want_table, rtol=5e-5, atol=2e-3 if gamma_0 < -10 else 1e-4)
        x = jnp.asarray(encode(k.astype(np.uint8), encoding))
        ll = D.decoder_log_prob(x, jnp.asarray(z_0, jnp.float32), jnp.float32(gamma_0), "discrete", encoding)
        want = np.take_along_axis(want_table, k[..., None], -1)[..., 0].sum(-1)
        np.testing.assert_allclose(np.asarray(ll), want, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_discretized_gaussian_masses_sum_to_one_on_either_grid(encoding):
    xs = jnp.asarray(encode(K.astype(np.uint8), encoding))
    for mean, scale in [(0.0, 0.3), (0.97, 0.01), (-1.3, 0.2)]:
        lp = D.discretized_gaussian_log_prob(xs, jnp.float32(mean), jnp.log(jnp.float32(scale)), encoding)
        assert float(jnp.exp(lp).sum()) == pytest.approx(1.0, abs=1e-5)
    # An interior bin is [x - Delta/2, x + Delta/2].
    x = GRIDS[encoding][100]
    half = 0.5 * bin_width(encoding)
    mass = 0.5 * (math.erf((x + half) / (0.3 * math.sqrt(2))) - math.erf((x - half) / (0.3 * math.sqrt(2))))
    got = D.discretized_gaussian_log_prob(xs[100], jnp.float32(0.0), jnp.log(jnp.float32(0.3)), encoding)
    assert float(got) == pytest.approx(math.log(mass), rel=1e-4)


def test_ode_dequantisation_offset_is_minus_log_bin_width():
    x = jnp.asarray(encode(np.array([[10, 200, 31]], np.uint8), "endpoints"))
    zero = lambda z, t: jnp.zeros_like(z)
    sched = lambda t: -13.3 + 18.3 * t
    offs = {}
    for e in ENCODINGS:
        xe = jnp.asarray(encode(np.array([[10, 200, 31]], np.uint8), e))
        terms = likelihood.ode_nll(
            zero,
            xe,
            jax.random.PRNGKey(0),
            schedule=sched,
            num_steps=2,
            trace="exact",
            dequantize=True,
            return_terms=True,
            encoding=e,
        )
        offs[e] = float(terms["offset"][0]) if jnp.ndim(terms["offset"]) else float(terms["offset"])
    assert x.shape == (1, 3)
    assert offs["bin_centres"] - offs["endpoints"] == pytest.approx(3 * math.log(128 / 127.5), abs=1e-4)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_dequantised_ode_nll_of_standard_normal_data_is_the_closed_form_with_this_encodings_bin(encoding):
    # For N(0, I) data q(z_t) = N(0, I) at every t: the exact eps-prediction is sigma z, the ODE's drift
    # 1/2 (sigma eps_hat - sigma^2 z) is 0, so -log p(x_deq) = 1/2 (x_deq^2 + log 2 pi) per dim, and the
    # dequantised bound adds -log Delta(encoding) per dim; |x_deq| <= |x| + Delta/2 bounds the x_deq^2 term.
    sched = lambda t: -13.3 + 18.3 * t
    exact = lambda z, t: jnp.sqrt(jax.nn.sigmoid(sched(t)))[:, None] * z
    k = np.array([[127, 128, 127, 128, 127, 128]], np.uint8)  # the grid values nearest 0
    x = jnp.asarray(encode(k, encoding))
    got = likelihood.ode_nll(
        exact, x, jax.random.PRNGKey(3), schedule=sched, num_steps=4, trace="exact", dequantize=True, encoding=encoding
    )
    dims = k.size
    want = dims * (0.5 * math.log(2 * math.pi) - math.log(GRIDS[encoding][1] - GRIDS[encoding][0]))
    slack = dims * 0.5 * (float(jnp.max(jnp.abs(x))) + bin_width(encoding)) ** 2
    assert want - 1e-4 <= float(got[0]) <= want + slack + 1e-4
    assert likelihood.dequant_offset_nats_per_dim(encoding) == pytest.approx(-math.log(bin_width(encoding)))


def test_data_pipeline_encodes_as_configured():
    base = {"dataset": "grid8bit2d", "num_train": 64, "num_test": 16}
    for e in ENCODINGS:
        cfg = {**base, "encoding": e}
        info = pipeline.get_dataset_info(cfg)
        assert info.discrete and info.encoding == e
        batch = next(pipeline.train_iterator(cfg, 32, seed=0))
        levels = encode(np.array([31, 95, 160, 224], np.uint8), e)
        assert np.all(np.isin(batch["x"], levels))
    assert pipeline.get_dataset_info(base).encoding == "endpoints"
    with pytest.raises(ValueError, match="bin_centres"):
        pipeline.get_dataset_info({**base, "encoding": "centres"})
