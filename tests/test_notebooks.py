"""Every notebook in experiments/notebooks/ executes top to bottom, in the venv's interpreter.

Each notebook runs headless with nbclient and VDM_NB_TINY=1 (small sample sizes). Notebooks end
with plain `assert`s on the numbers they show, so a wrong result fails here like an exception does.
The kernel is pinned to this test's interpreter (sys.executable) through a private kernelspec, and
a cell appended to the executed copy proves it.
"""

import json
import os
import pathlib
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "experiments" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 120
KERNEL_NAME = "vdm-test-python"


def _kernel_manager(tmp_path: pathlib.Path) -> KernelManager:
    """A kernel manager whose only kernelspec launches ipykernel with sys.executable."""
    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vdm test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def test_notebooks_are_found():
    assert NOTEBOOKS, f"no notebooks under {NOTEBOOK_DIR}"


# The two notebooks that train runs through the CLI (minutes each) run in `make test-all`; the others in `make test`.
SLOW_NOTEBOOKS = ("02_compare_objectives", "04_latent_diffusion")


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW_NOTEBOOKS else p for p in NOTEBOOKS],
    ids=[p.stem for p in NOTEBOOKS],
)
def test_notebook_executes_and_its_checks_pass(path, tmp_path, monkeypatch):
    monkeypatch.setenv("VDM_NB_TINY", "1")
    # The kernel runs in experiments/notebooks/; the checkout root on its path (and its subprocesses')
    # imports `experiments` and this checkout's `vdm` without relying on how vdm is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    marker = "KERNEL_EXECUTABLE="
    nb.cells.append(
        nbformat.v4.new_code_cell(
            f"import os, sys\nprint({marker!r} + sys.executable)\nprint('VDM_NB_TINY=' + os.environ['VDM_NB_TINY'])"
        )
    )
    client = NotebookClient(
        nb, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    try:
        client.execute()
    except CellExecutionError as err:  # the failing cell's source and traceback, not the kernel's noise
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)
    text = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
    assert f"{marker}{sys.executable}" in text, f"kernel did not run {sys.executable}: {text!r}"
    assert "VDM_NB_TINY=1" in text
    assert not any(
        out.get("output_type") == "error" for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
