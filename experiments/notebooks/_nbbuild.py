"""Shared by the _build_XX.py scripts: turn a list of ("md" | "code", source) cells into a notebook,
optionally execute it with nbclient, and write it."""

from __future__ import annotations

import argparse
import pathlib
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """The notebook object, cells stripped of their leading/trailing blank lines."""
    nb = new_notebook(
        cells=[new_markdown_cell(src.strip()) if kind == "md" else new_code_cell(src.strip()) for kind, src in cells]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main(cells: list[tuple[str, str]], out: pathlib.Path, description: str, *, timeout: int = 600) -> None:
    """Command line of a build script: write `out` from `cells`; --execute also runs it and stores outputs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--execute", action="store_true", help="execute and store the outputs")
    args = parser.parse_args()
    nb = build(cells)
    if args.execute:
        from nbclient import NotebookClient

        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(out.parent)}}
        ).execute()
        for cell in nb.cells:  # drop run-specific metadata so rebuilds diff cleanly
            cell.metadata.pop("execution", None)
    nbformat.validate(nb)
    nbformat.write(nb, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB), python {sys.executable}")
