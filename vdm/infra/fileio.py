"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO


def atomic_write(path: str, write: Callable[[IO], None], *, binary: bool = False, mode: int = 0o644) -> None:
    """Call write(f) on a temporary file in path's folder, then os.replace it onto `path` (POSIX rename is atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text))


def load_sibling(file: str, name: str):
    """The module NAME.py in the folder of `file`, loaded by its path (configs/ is no package: configs/base.py)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"vdm_loaded_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
