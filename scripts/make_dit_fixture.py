"""Write tests/fixtures/dit_reference.npz: facebookresearch/DiT's own forward pass on fixed inputs, tiny configs.

Not part of the package and not run by the tests (they only read the .npz): it runs their models.py, read at run
time from a checkout or a bare git directory of facebookresearch/DiT (never copied here), in a scratch venv
outside this repository:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy pillow
    /tmp/torchvenv/bin/pip install --no-deps timm
    /tmp/torchvenv/bin/python scripts/make_dit_fixture.py --dit=<DiT checkout or its .git directory>

Their models.py imports timm (PatchEmbed, Attention, Mlp); timm imports torchvision names at import time, and no
torchvision build matches the CPU torch, so when torchvision is missing this script puts a stand-in package on
sys.path (in a temporary folder) whose names fail if called: DiT calls none of them (no batch norm, no data).

Each config (CONFIGS) builds their DiT(**kwargs) and replaces every parameter with random non-zero values (their
init zeroes adaLN and the final layer, which would make the output 0 whatever the mapping), keeps their fixed
sin-cos pos_embed, and runs model.eval() forward on fixed x [B, C, H, W], fractional timesteps t in [0, 1000)
and labels y (the null class y = num_classes where the config has one). Saved per config NAME: NAME/kwargs
(JSON), NAME/sd/<their parameter name>, NAME/x (NHWC, as vdm lays images out), NAME/t, NAME/y, NAME/out (NHWC).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), os.pardir, "tests", "fixtures", "dit_reference.npz")
CONFIGS = {  # their DiT(...) keyword arguments: learn_sigma and the null class both ways, two patch sizes
    "sigma": dict(
        input_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=48,
        depth=2,
        num_heads=4,
        mlp_ratio=4.0,
        class_dropout_prob=0.1,
        num_classes=10,
        learn_sigma=True,
    ),
    "plain": dict(
        input_size=8,
        patch_size=4,
        in_channels=1,
        hidden_size=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        class_dropout_prob=0.0,
        num_classes=10,
        learn_sigma=False,
    ),
}
TIMESTEPS = np.array([0.0, 1.0, 3.7, 250.25, 500.0, 998.5, 999.0, 999.9], np.float32)
STANDIN = '''"""Stand-in torchvision (scripts/make_dit_fixture.py): names timm imports at import time; calling one fails."""


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(name)


def _placeholder(name):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"torchvision stand-in: {name} is not available")

    return _Meta(name, (), {"__init__": fail, "__call__": fail})


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _placeholder(name)
'''


def _torchvision_standin(folder: str) -> None:
    """A package torchvision (with ops.misc, datasets, transforms[.functional]) of placeholders under `folder`."""
    for sub in ("", "ops", "datasets", "transforms"):
        os.makedirs(os.path.join(folder, "torchvision", sub), exist_ok=True)
    text = {"__init__.py": STANDIN, "ops/__init__.py": "", "ops/misc.py": "from torchvision import *  # noqa\n"}
    for sub in ("datasets", "transforms"):
        text[f"{sub}/__init__.py"] = "from torchvision import __getattr__  # noqa: F401\n"
    text["transforms/functional.py"] = text["transforms/__init__.py"]
    text["ops/misc.py"] = text["transforms/__init__.py"]
    for name, body in text.items():
        with open(os.path.join(folder, "torchvision", name), "w") as f:
            f.write(body)


def _load_models(dit: str, folder: str):
    """Their models.py as a module: DIT/models.py of a checkout, else `git show HEAD:models.py` of a git dir."""
    path = os.path.join(dit, "models.py")
    if not os.path.exists(path):
        path = os.path.join(folder, "models.py")
        source = subprocess.run(["git", "--git-dir", dit, "show", "HEAD:models.py"], check=True, capture_output=True)
        with open(path, "wb") as f:
            f.write(source.stdout)
    spec = importlib.util.spec_from_file_location("dit_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(models, name: str, kwargs: dict, seed: int) -> dict[str, np.ndarray]:
    """Their DiT(**kwargs) with random parameters, run on fixed inputs: the fixture entries of config `name`."""
    import torch

    torch.manual_seed(seed)
    model = models.DiT(**kwargs).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname != "pos_embed":  # their fixed sin-cos buffer (a parameter without gradient)
                fan_in = p.shape[1] if p.ndim == 2 else (int(np.prod(p.shape[1:])) if p.ndim > 2 else 16)
                p.copy_(torch.randn_like(p) * (1.0 / np.sqrt(fan_in)) + 0.02)
    rng = np.random.default_rng(seed)
    b, c, s = TIMESTEPS.size, kwargs["in_channels"], kwargs["input_size"]
    x = rng.standard_normal((b, c, s, s)).astype(np.float32)
    top = kwargs["num_classes"] + (1 if kwargs["class_dropout_prob"] > 0 else 0)  # the null class where they have one
    y = (np.arange(b) * 3 % top).astype(np.int64)
    if top > kwargs["num_classes"]:
        y[-1] = kwargs["num_classes"]
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(TIMESTEPS), torch.from_numpy(y)).numpy()
    entries = {f"{name}/sd/{k}": v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    entries.update(
        {
            f"{name}/kwargs": np.array(json.dumps(kwargs)),
            f"{name}/x": x.transpose(0, 2, 3, 1),
            f"{name}/t": TIMESTEPS,
            f"{name}/y": y.astype(np.int32),
            f"{name}/out": out.transpose(0, 2, 3, 1),
        }
    )
    print(f"{name}: out {out.shape}, |out| max {np.abs(out).max():.3f}, std {out.std():.3f}")
    return entries


def main() -> None:
    """Parse the flags, run their code on each config, write the .npz."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit", required=True, help="a facebookresearch/DiT checkout or its git directory")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if importlib.util.find_spec("torchvision") is None:
            _torchvision_standin(folder)
            sys.path.insert(0, folder)
        models = _load_models(args.dit, folder)
        entries = {}
        for seed, (name, kwargs) in enumerate(CONFIGS.items()):
            entries.update(_record(models, name, kwargs, seed))
    np.savez_compressed(args.out, **entries)
    print(f"wrote {os.path.normpath(args.out)} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
