"""The package's shape, checked: modules in layers that import only downward, and size limits.

Layers, lowest first (ARCHITECTURE.md): math -> data/infrastructure -> models -> sampling/likelihood
-> config -> the diffusion model -> the loop -> the models' Tasks -> eval/sample modes -> CLI. A module may import modules of its own layer or
lower ones, never higher (lazy imports inside functions count too). No module of vdm/ is over 400
lines and no function over 60 (configs/ excepted: a config is one long function by design).
"""

from __future__ import annotations

import ast
import glob
import os

import pytest

from conftest import REPO_ROOT

LAYERS = [
    ("math", ["schedules", "diffusion", "parameterization", "solvers", "objectives", "encoding", "fileio",
              "feature_metrics"]),
    ("infrastructure", ["data_toy", "data_tfds", "data", "metrics", "checkpoint", "parallel", "torchscript",
                        "fid_weights", "optim"]),
    ("models", ["models"]),
    ("sampling", ["sampling", "guidance", "likelihood", "analytic", "fid"]),
    ("config", ["config_utils", "record"]),
    ("model", ["diffusion_model"]),
    ("loop", ["train"]),
    ("tasks", ["diffusion_task", "train_classifier"]),
    ("modes", ["evaluate"]),
    ("cli", ["main"]),
]
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, str]:
    """{'vdm.x' or 'vdm.models.y': path} for every module of the package."""
    out = {}
    for path in glob.glob(os.path.join(REPO_ROOT, "vdm", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = path
    return out


def _layer(module: str) -> int:
    """Layer index of vdm.<top>[.<sub>]."""
    top = module.split(".")[1]
    if top not in LAYER_OF:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS here and to ARCHITECTURE.md")
    return LAYER_OF[top]


def _vdm_imports(path: str, module: str) -> set[str]:
    """vdm modules imported anywhere in the file (absolute names)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("vdm")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vdm"):
            names.add(node.module)
            if node.module == "vdm":
                names |= {f"vdm.{a.name}" for a in node.names}
    return {n for n in names if n not in ("vdm",) and not n.startswith(module + ".")}


def test_every_module_imports_only_its_own_layer_or_lower():
    violations = []
    for module, path in _modules().items():
        if module == "vdm":
            continue
        mine = _layer(module)
        for imported in _vdm_imports(path, module):
            if _layer(imported) > mine:
                violations.append(f"{module} ({LAYERS[mine][0]}) imports {imported} "
                                  f"({LAYERS[_layer(imported)][0]})")
    assert not violations, violations


def test_the_check_catches_an_upward_import(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("def f():\n    from vdm import train\n")
    assert _vdm_imports(str(path), "vdm.diffusion") == {"vdm.train"}
    assert _layer("vdm.train") > _layer("vdm.diffusion")


@pytest.mark.parametrize("folder", ["vdm", "experiments"])
def test_no_module_over_400_lines_and_no_function_over_60(folder):
    too_long = []
    for path in glob.glob(os.path.join(REPO_ROOT, folder, "**", "*.py"), recursive=True):
        source = open(path).read()
        rel = os.path.relpath(path, REPO_ROOT)
        if source.count("\n") > 400:
            too_long.append(f"{rel}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long
