"""The package's shape, checked: packages in layers that import only downward, no cycles, no facade inside, sizes.

Layers, lowest first (ARCHITECTURE.md): core (pure math) -> infra -> data -> models (with vdm.text) -> sampling
-> evaluation -> config -> tasks -> cli (with vdm.tools and vdm.main). A module may import modules of its own package or of lower layers,
never higher (lazy imports inside functions count too), and no modules import each other around a circle,
within a package as across (ARCHITECTURE.md). Code inside vdm/ imports each name from its home module:
never from one of the public facades (vdm.schedules, vdm.diffusion, ...: the core contract's paths), and never
a name that the module it is imported from merely imports itself. No module of vdm/ is over 500 lines and no
function over 75, as ruff format (120 columns) lays them out (configs/ excepted: a config is one long function).
"""

from __future__ import annotations

import ast
import glob
import importlib
import os

import pytest

from conftest import REPO_ROOT

LAYERS = [
    ("core", ["core"]),
    ("infra", ["infra"]),
    ("data", ["data"]),
    ("models", ["models", "text"]),
    ("sampling", ["sampling"]),
    ("evaluation", ["evaluation"]),
    ("config", ["config"]),
    ("tasks", ["tasks"]),
    ("cli", ["cli", "tools", "main"]),
    ("facades", ["schedules", "diffusion", "parameterization", "objectives", "likelihood", "fid"]),
]
# The public facades of the core contract: {facade: home}; vdm.sampling's package __init__ is one too.
FACADES = {
    "vdm.schedules": "vdm.core.schedules",
    "vdm.diffusion": "vdm.core.gaussian",
    "vdm.parameterization": "vdm.core.parameterization",
    "vdm.objectives": "vdm.core.objectives",
    "vdm.sampling": "vdm.sampling.samplers",
    "vdm.likelihood": "vdm.sampling.likelihood",
    "vdm.fid": "vdm.evaluation.fid",
    "vdm.text": "vdm.text.encoder",
}
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, str]:
    """{'vdm.x' or 'vdm.models.y': path} for every module of the package."""
    out = {}
    for path in glob.glob(os.path.join(REPO_ROOT, "vdm", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = path
    return out


def _layer(module: str) -> int:
    """Layer index of vdm.<package>[.<module>] (vdm.sampling's facade __init__ sits with the facades)."""
    if module in FACADES:
        return len(LAYERS) - 1
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
            subs = {f"{node.module}.{a.name}" for a in node.names}
            known = subs & set(_modules()) if node.module != "vdm" else subs
            names |= known if known == subs else known | {node.module}
    return {n for n in names if n not in ("vdm",) and not n.startswith(module + ".")}


def test_every_module_imports_only_its_own_layer_or_lower():
    violations = []
    for module, path in _modules().items():
        if module == "vdm":
            continue
        mine = _layer(module)
        for imported in _vdm_imports(path, module):
            if _layer(imported) > mine or (imported in FACADES and module not in FACADES):
                violations.append(f"{module} ({LAYERS[mine][0]}) imports {imported} ({LAYERS[_layer(imported)][0]})")
    assert not violations, violations


def test_the_check_catches_an_upward_import(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("def f():\n    from vdm.tasks import loop\n")
    assert _vdm_imports(str(path), "vdm.core.gaussian") == {"vdm.tasks.loop"}
    assert _layer("vdm.tasks.loop") > _layer("vdm.core.gaussian")
    assert _layer("vdm.schedules") > _layer("vdm.main")  # a facade: nothing inside vdm/ may import it


def _imported_modules(path: str, module: str, known: set[str]) -> set[str]:
    """The modules of `known` that the file imports anywhere (lazy imports in functions too):
    `import a.b`, `from a.b import f` -> a.b; `from a import b` -> a.b when that is a module, else a;
    relative imports resolved against the module's package; and the packages that importing a.b runs
    first (a), except those the importer is inside of."""
    package = module if module + ".__init__" in known else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    out |= {".".join(m.split(".")[:i]) for m in out for i in range(1, m.count(".") + 1)}
    return {m for m in out if m in known and m != module and not module.startswith(m + ".")}


def _import_graph(root: str, package: str = "vdm") -> dict[str, set[str]]:
    """{module: the package's modules it imports} for every module under root/package."""
    paths = {}
    for path in glob.glob(os.path.join(root, package, "**", "*.py"), recursive=True):
        paths[os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")] = path
    known = set(paths) | {m + ".__init__" for m, p in paths.items() if p.endswith("__init__.py")}
    return {m: _imported_modules(p, m, known) for m, p in paths.items()}


def _import_cycles(graph: dict[str, set[str]], limit: int = 50) -> list[list[str]]:
    """Every elementary cycle of the graph (up to `limit`), each as [a, b, ..., a] from its smallest module."""
    cycles = []

    def walk(start, node, path, on_path):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                cycles.append(path + [start])
            elif nxt > start and nxt not in on_path and len(cycles) < limit:
                walk(start, nxt, path + [nxt], on_path | {nxt})

    for start in sorted(graph):
        walk(start, start, [start], {start})
    return cycles[:limit]


def test_no_import_cycles_among_vdm_modules():
    cycles = _import_cycles(_import_graph(REPO_ROOT))
    assert not cycles, "import cycles (lazy imports included): " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_catches_a_planted_cycle(tmp_path):
    pkg = tmp_path / "vdm"
    (pkg / "models").mkdir(parents=True)
    for name, text in {
        "__init__.py": "",
        "a.py": "def f():\n    from vdm import b\n",
        "b.py": "import vdm.c\n",
        "c.py": "from vdm.a import f\n",
        "d.py": "from vdm import models\n",
        "e.py": "import vdm.a\n",
        "f.py": "import vdm.models.net\n",
        "models/__init__.py": "from vdm.models import net\n\ndef lazy():\n    import vdm.f\n",
        "models/net.py": "def g():\n    from vdm.d import x\n",
    }.items():
        (pkg / name).write_text(text)
    graph = _import_graph(str(tmp_path))
    assert graph["vdm.a"] == {"vdm.b"} and graph["vdm.models"] == {"vdm.models.net", "vdm.f"}
    assert graph["vdm.f"] == {"vdm.models.net", "vdm.models"} and graph["vdm.models.net"] == {"vdm.d"}
    cycles = [
        ["vdm.a", "vdm.b", "vdm.c", "vdm.a"],
        ["vdm.d", "vdm.models", "vdm.f", "vdm.models.net", "vdm.d"],
        ["vdm.d", "vdm.models", "vdm.models.net", "vdm.d"],
        ["vdm.f", "vdm.models", "vdm.f"],
    ]  # through the package that vdm.f's import runs
    assert _import_cycles(graph) == cycles
    (pkg / "c.py").write_text("x = 1\n")
    assert _import_cycles(_import_graph(str(tmp_path))) == cycles[1:]


@pytest.mark.parametrize("folder", ["vdm", "experiments"])
def test_no_module_over_500_lines_and_no_function_over_75(folder):
    too_long = []
    for path in glob.glob(os.path.join(REPO_ROOT, folder, "**", "*.py"), recursive=True):
        source = open(path).read()
        rel = os.path.relpath(path, REPO_ROOT)
        if source.count("\n") > 500:
            too_long.append(f"{rel}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 75:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def _top_level_names(path: str) -> tuple[set[str], set[str]]:
    """(names a module defines at its top level: def, class, assignment; names it only imports)."""
    defined, imported = set(), set()
    for node in ast.parse(open(path).read()).body:
        for sub in [node] + (node.body + node.orelse if isinstance(node, (ast.If, ast.Try)) else []):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(sub.name)
            elif isinstance(sub, (ast.Assign, ast.AnnAssign)):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                defined |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                imported |= {(a.asname or a.name).split(".")[0] for a in sub.names}
    return defined, imported - defined


def test_code_inside_vdm_imports_each_name_from_its_home_module():
    modules = _modules()
    violations = []
    for module, path in modules.items():
        if module in FACADES:
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vdm.")):
                continue
            source = modules.get(node.module)
            if source is None:
                violations.append(f"{module} imports from {node.module}, which is not a module of vdm")
                continue
            defined, reexported = _top_level_names(source)
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    continue  # a submodule
                if alias.name in reexported or alias.name not in defined:
                    violations.append(f"{module} imports {alias.name} from {node.module}, which only re-exports it")
    assert not violations, violations


@pytest.mark.parametrize("facade,home", sorted(FACADES.items()))
def test_each_public_facade_gives_its_home_modules_objects(facade, home):
    f, h = importlib.import_module(facade), importlib.import_module(home)
    defined, _ = _top_level_names(_modules()[home])
    public = {n for n in defined if not n.startswith("_")} - {"Array", "PyTree", "log"}
    missing = sorted(n for n in public if not hasattr(f, n))
    assert not missing, f"{facade} lacks {missing} of {home}"
    assert all(getattr(f, n) is getattr(h, n) for n in public)


CONTRACT = {
    "vdm.schedules": ["linear_logsnr", "cosine", "ddpm_linear", "alpha_sigma", "Schedule"],
    "vdm.diffusion": ["q_sample", "posterior", "kl_normal"],
    "vdm.parameterization": ["convert"],
    "vdm.objectives": ["elbo", "neg_elbo_terms"],
    "vdm.sampling": ["sample", "ddim_step", "ancestral_step"],
    "vdm.likelihood": ["ode_nll"],
    "vdm.fid": ["inception_features", "fid_from_features", "kid_from_features"],
    "vdm.text": ["load_text_encoder", "TextEncoder"],
}


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_the_core_contract_imports_from_its_documented_paths(module):
    m = importlib.import_module(module)
    assert all(callable(getattr(m, name)) for name in CONTRACT[module])
