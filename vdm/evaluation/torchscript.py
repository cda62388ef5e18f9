"""Read the tensors of a TorchScript archive without torch, through a restricted unpickler.

A TorchScript archive (`torch.jit.save`) is a zip holding, under one top folder `ROOT/`:
`ROOT/data.pkl`, the module tree pickled (protocol 2): each module an object of a class
`__torch__.<path> <Name>` whose state is a dict of attributes and sub-modules; each tensor
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, where
`storage` is a persistent id `('storage', torch.<Type>Storage, key, location, numel)` naming the raw
little-endian bytes in `ROOT/data/<key>`; lists of ints as `torch.jit._pickle.build_intlist`.
`ROOT/code/__torch__/...py` is the forward pass as TorchScript source.

A pickle is a program: `pickle.load` on an untrusted file can run anything. `read_archive`
never does: its unpickler knows the handful of globals above, turns `__torch__` classes into inert
`ScriptModule` records (a type name and a dict, no code), builds numpy arrays from the storages,
and refuses every other global with `UnsafePickleError`.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile
from typing import Any

import numpy as np

# torch storage type -> little-endian numpy dtype of its bytes.
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": None,
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
_TORCH_CLASS = re.compile(r"__torch__(\.[A-Za-z_][A-Za-z0-9_]*)*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global this reader does not allow (it would run code)."""


class ScriptModule:
    """An inert record of one pickled TorchScript module: its class name and its attributes.

    The unpickler makes one subclass per `__torch__` class name (its `type_name`); pickle creates
    instances with `__new__` and fills them through `__setstate__`, neither of which runs file code.
    """

    type_name = "ScriptModule"
    attrs: dict[str, Any] = {}

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{self.type_name}: expected a dict state, got {type(state).__name__}.")
        self.attrs = dict(state)

    def __repr__(self) -> str:
        return f"ScriptModule({self.type_name}, {sorted(self.attrs)})"


class _StorageType:
    """The marker `torch.<Name>Storage` stands for: only its dtype matters."""

    def __init__(self, name: str):
        dtype = STORAGE_DTYPES.get(name)
        if dtype is None:
            raise UnsafePickleError(
                f"unsupported storage type torch.{name}; supported: "
                f"{sorted(k for k, v in STORAGE_DTYPES.items() if v)}."
            )
        self.name, self.dtype = name, np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_unused) -> np.ndarray:
    """A numpy copy of storage[offset:] viewed with `size` and `stride` (both in elements)."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length.")
    if any(s <= 0 for s in size):
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
        raise pickle.UnpicklingError(
            f"tensor (offset {offset}, size {size}, stride {stride}) reaches "
            f"outside its storage of {storage.size} elements."
        )
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride))
    return np.array(view)


def _build_intlist(values) -> list[int]:
    return [int(v) for v in values]


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals of a TorchScript module tree."""

    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self._archive, self._root, self._storages, self._classes = archive, root, {}, {}

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch.jit._pickle" and name == "build_intlist":
            return _build_intlist
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if _TORCH_CLASS.fullmatch(module) and _IDENT.fullmatch(name):
            if full not in self._classes:  # an inert record type named after the class
                self._classes[full] = type(name, (ScriptModule,), {"type_name": full})
            return self._classes[full]
        raise UnsafePickleError(
            f"refusing to load global {full!r}: a TorchScript tensor archive "
            f"needs only torch storages, tensors and __torch__ module records."
        )

    def persistent_load(self, pid) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"unknown persistent id {pid!r:.100}.")
        _, stype, key, _location, numel = pid
        if not _IDENT.fullmatch("k" + str(key)):
            raise UnsafePickleError(f"bad storage key {key!r}.")
        if key not in self._storages:
            raw = self._archive.read(f"{self._root}/data/{key}")
            if len(raw) != int(numel) * stype.dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key}: {len(raw)} bytes, expected {numel} x {stype.dtype.itemsize}."
                )
            self._storages[key] = np.frombuffer(raw, stype.dtype)
        return self._storages[key]


def read_archive(path_or_file) -> ScriptModule:
    """The module tree of a TorchScript zip (`ROOT/data.pkl` + `ROOT/data/N`) as ScriptModule records of numpy arrays."""
    with zipfile.ZipFile(path_or_file) as archive:
        pkls = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ValueError(f"{path_or_file}: not a TorchScript archive (expected one ROOT/data.pkl, found {pkls}).")
        root = pkls[0].split("/")[0]
        result = _Unpickler(io.BytesIO(archive.read(pkls[0])), archive, root).load()
    if not isinstance(result, ScriptModule):
        raise ValueError(f"{path_or_file}: data.pkl holds a {type(result).__name__}, not a module.")
    return result


def flatten(module: ScriptModule, prefix: str = "") -> dict[str, Any]:
    """{'a.b.weight': array, 'a.b.stride': 2, ...}: every array and int/list attribute of the tree, by dotted path."""
    out: dict[str, Any] = {}
    for key, value in module.attrs.items():
        path = f"{prefix}{key}"
        if isinstance(value, ScriptModule):
            out.update(flatten(value, path + "."))
        elif isinstance(value, (np.ndarray, int, list, tuple)) and not isinstance(value, bool):
            out[path] = value
    return out
