"""VDM++'s adaptive noise schedule and the importance-sampled ELBO, through the diffusion model and the CLI.

Independent truth: Gaussian data x ~ N(0, diag(s^2)) with its exact eps-predictor
eps_hat = sigma z / (alpha^2 s^2 + sigma^2), so the model is fixed and known; a weighted loss and the
ELBO are the same integrals under every t-sampling, and the estimators must agree within their
Monte-Carlo standard errors.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, run_cli
from vdm.config import validation
from vdm.core import t_sampling
from vdm.data import pipeline
from vdm.data.toy_sets import gaussian_scales
from vdm.infra import parallel
from vdm.schedules import dgamma_dt
from vdm.tasks import diffusion_model as dm
from vdm.tasks.diffusion_task import elbo_over_split


class ExactGaussianEps(nn.Module):
    """E[eps | z_t] for x ~ N(0, diag(scales^2)): sigma z / (alpha^2 s^2 + sigma^2) (no parameters)."""

    scales: tuple

    @nn.compact
    def __call__(self, z, gamma, y=None, train=False):
        a2, s2 = jax.nn.sigmoid(-gamma)[:, None], jax.nn.sigmoid(gamma)[:, None]
        return jnp.sqrt(s2) * z / (a2 * jnp.square(jnp.asarray(self.scales)) + s2)


def _exact_model(**loss):
    """The toy2d:gaussian model (8 dims) with the exact denoiser in place of the MLP, and `loss` keys set."""
    c = load_config("toy2d", "gaussian")
    for k, v in loss.items():
        c.loss[k] = v
    c.training.batch_size = 20_000
    validation.validate(c, device_count=1)
    model = dm.build(c, pipeline.get_dataset_info(c.data))
    return dataclasses.replace(model, network=ExactGaussianEps(tuple(gaussian_scales(c.data.dim)))), c


def _batch(n, dim, seed):
    x = gaussian_scales(dim) * np.random.default_rng(seed).standard_normal((n, dim))
    return {"x": jnp.asarray(x, jnp.float32), "label": jnp.zeros((n,), jnp.int32), "index": jnp.arange(n)}


def _mean_se(v):
    v = np.asarray(v, np.float64)
    return v.mean(), v.std(ddof=1) / np.sqrt(len(v)), v.var(ddof=1)


@pytest.mark.parametrize("weighting", ["elbo", "sigmoid", "edm"])
def test_adaptive_t_keeps_the_loss_and_lowers_its_variance_for_each_weighting(weighting):
    """Same expectation as uniform t within 4 SE; the histogram of W * loss (a pilot of the same model) lowers the variance."""
    n, params = 20_000, {"model": {}}
    uniform, c = _exact_model(weighting=weighting, t_sampling="uniform")
    adaptive, _ = _exact_model(weighting=weighting, t_sampling="adaptive")
    batch = _batch(n, c.data.dim, 0)
    plain = uniform.loss_terms(params, batch, jax.random.PRNGKey(1))["diffusion"]
    pilot_key = jax.random.PRNGKey(2)  # the histogram, from a pilot of uniform draws
    pilot_t = uniform.noise(batch, pilot_key, train=True)["t"]
    gamma, dgamma = dgamma_dt(uniform.fixed_schedule, pilot_t)
    values = t_sampling.integrand(uniform.loss_terms(params, batch, pilot_key)["diffusion"], 1.0, dgamma)
    edges, _ = adaptive.t_distribution(t_sampling.init_histogram(c.loss.adaptive_bins))
    hist = t_sampling.fit(t_sampling.bin_index(-gamma, edges), values, c.loss.adaptive_bins)
    weighted = adaptive.loss_terms(params, batch, jax.random.PRNGKey(3), stats={dm.T_HISTOGRAM: hist})["diffusion"]
    (m_u, se_u, var_u), (m_a, se_a, var_a) = _mean_se(plain), _mean_se(weighted)
    assert abs(m_a - m_u) < 4 * np.hypot(se_u, se_a), (m_u, se_u, m_a, se_a)
    assert var_a < 0.5 * var_u, var_a / var_u  # measured: 0.26 (elbo), 0.23 (sigmoid), 0.29 (edm)


def test_importance_sampled_eval_elbo_has_the_plain_mean_and_a_smaller_se():
    """eval.t_sampling='importance' (pilot on the train split) against the plain estimator over the same test split."""
    results = {}
    for ts in ("uniform", "importance"):
        model, c = _exact_model()
        c.eval.t_sampling = ts
        results[ts] = elbo_over_split(model, parallel.make_mesh(), {"model": {}}, jax.random.PRNGKey(4), {})
    plain, imp = results["uniform"], results["importance"]
    assert plain["eval/num_examples"] == imp["eval/num_examples"] == c.data.num_test
    assert imp["eval/pilot_examples"] == c.eval.pilot_examples and "eval/pilot_examples" not in plain
    assert abs(imp["eval/bpd"] - plain["eval/bpd"]) < 4 * np.hypot(plain["eval/bpd_se"], imp["eval/bpd_se"])
    assert imp["eval/bpd_se"] < 0.7 * plain["eval/bpd_se"], (imp["eval/bpd_se"], plain["eval/bpd_se"])  # measured 0.52


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_the_adaptive_histogram_resumes_bit_identically(tmp_path):
    """4 steps in one run and 2 + 2 with a resume in between: the same histogram, losses and final bits/dim, to the bit."""
    base = ["--config=configs/toy2d.py:small", "--config.loss.t_sampling=adaptive"]
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    assert run_cli(base + [f"--workdir={whole}"]).returncode == 0
    first = run_cli(base + [f"--workdir={split}", "--config.training.num_steps=2"])
    assert first.returncode == 0, first.stderr[-2000:]
    proc = run_cli(base + [f"--workdir={split}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_step = lambda rows, key: {r["step"]: r[key] for r in rows if key in r}
    for key in ("train/t_histogram/probs", "train/loss", "train/diffusion_var"):
        a, b = by_step(_rows(whole), key), by_step(_rows(split), key)
        assert a[3] == b[3] and a[4] == b[4], key
    probs = np.asarray(by_step(_rows(whole), "train/t_histogram/probs")[4])
    edges = by_step(_rows(whole), "train/t_histogram/edges")[4]
    assert len(edges) == len(probs) + 1 and abs(probs.sum() - 1) < 1e-5 and probs.min() > 0
    assert not np.allclose(probs, probs.mean())  # it moved from uniform
    evals = lambda rows: [r["eval/bpd"] for r in rows if "eval/bpd" in r]
    assert evals(_rows(whole))[-1] == evals(_rows(split))[-1]
