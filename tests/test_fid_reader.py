"""The TorchScript reader (vdm.evaluation.torchscript) and the weight cache's checks (vdm.evaluation.fid_weights), without torch.

The archives are written here, opcode by opcode, in the layout `torch.jit.save` uses (a zip with
ROOT/data.pkl, protocol 2, whose tensors are `torch._utils._rebuild_tensor_v2` of persistent-id
storages ROOT/data/N holding raw little-endian bytes), so the test depends on no torch and on no
pickler of ours.
"""

import json
import os
import struct
import zipfile

import numpy as np
import pytest

from vdm.evaluation import fid_weights, torchscript


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)  # BININT


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _tensor(key: str, storage: str, numel: int, offset: int, size, stride) -> bytes:
    pid = _tuple([_str("storage"), _global("torch", storage), _str(key), _str("cpu"), _int(numel)]) + b"Q"
    hooks = _global("collections", "OrderedDict") + b")R"
    args = _tuple(
        [pid, _int(offset), _tuple([_int(s) for s in size]), _tuple([_int(s) for s in stride]), b"\x89", hooks]
    )
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _module(cls: tuple[str, str], items: list[tuple[str, bytes]]) -> bytes:
    state = b"}(" + b"".join(_str(k) + v for k, v in items) + b"u"  # EMPTY_DICT MARK ... SETITEMS
    return _global(*cls) + b")\x81" + state + b"b"  # EMPTY_TUPLE NEWOBJ ... BUILD


def _archive(path, pickle_bytes: bytes, storages: dict[str, bytes], root: str = "tiny") -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{root}/version", "3\n")
        z.writestr(f"{root}/data.pkl", b"\x80\x02" + pickle_bytes + b".")
        for key, raw in storages.items():
            z.writestr(f"{root}/data/{key}", raw)
    return str(path)


def test_reader_reads_back_arrays_exactly(tmp_path):
    w = np.arange(24, dtype="<f4").reshape(2, 3, 4) * 0.37 - 1.1
    ints = np.array([7, -3, 2**40], "<i8")
    inner = _module(
        ("__torch__.tiny", "Conv"),
        [
            ("weight", _tensor("0", "FloatStorage", 24, 0, (2, 3, 4), (12, 4, 1))),
            ("wt", _tensor("0", "FloatStorage", 24, 1, (3, 2), (4, 12))),  # a strided view with an offset
            ("stride", _int(2)),
            (
                "padding",
                _global("torch.jit._pickle", "build_intlist") + _tuple([b"](" + _int(0) + _int(3) + b"e"]) + b"R",
            ),
        ],
    )
    outer = _module(
        ("__torch__.tiny.___torch_mangle_1", "Net"),
        [("training", b"\x89"), ("conv", inner), ("counts", _tensor("1", "LongStorage", 3, 0, (3,), (1,)))],
    )
    path = _archive(tmp_path / "tiny.pt", outer, {"0": w.tobytes(), "1": ints.tobytes()})
    tree = torchscript.read_archive(path)
    assert tree.type_name == "__torch__.tiny.___torch_mangle_1.Net"
    assert tree.attrs["conv"].type_name == "__torch__.tiny.Conv"
    flat = torchscript.flatten(tree)
    assert set(flat) == {"conv.weight", "conv.wt", "conv.stride", "conv.padding", "counts"}
    np.testing.assert_array_equal(flat["conv.weight"], w)
    np.testing.assert_array_equal(flat["conv.wt"], w.reshape(-1)[1:][np.arange(3)[:, None] * 4 + np.arange(2) * 12])
    assert flat["conv.weight"].dtype == np.float32 and flat["counts"].dtype == np.int64
    np.testing.assert_array_equal(flat["counts"], ints)
    assert flat["conv.stride"] == 2 and flat["conv.padding"] == [0, 3]


@pytest.mark.parametrize(
    "module,name",
    [("os", "system"), ("builtins", "eval"), ("torch", "load"), ("__torch__.x", "a b"), ("numpy", "ndarray")],
)
def test_reader_refuses_a_foreign_class(tmp_path, module, name):
    evil = _global(module, name) + _tuple([_str("touch pwned")]) + b"R"
    path = _archive(tmp_path / "evil.pt", _module(("__torch__.m", "M"), [("x", evil)]), {})
    with pytest.raises(torchscript.UnsafePickleError, match="refusing to load global"):
        torchscript.read_archive(path)
    assert not os.path.exists("pwned")


def test_reader_refuses_a_tensor_outside_its_storage(tmp_path):
    pkl = _module(("__torch__.m", "M"), [("w", _tensor("0", "FloatStorage", 4, 2, (2, 2), (2, 1)))])
    path = _archive(tmp_path / "bad.pt", pkl, {"0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(Exception, match="outside its storage"):
        torchscript.read_archive(path)


def test_reader_rejects_a_zip_that_is_no_torchscript_archive(tmp_path):
    path = tmp_path / "plain.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        torchscript.read_archive(str(path))


def test_missing_or_corrupt_weight_cache_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(fid_weights.WeightsError) as err:
        fid_weights.load(str(tmp_path))
    assert "\n" not in str(err.value) and "make fid-weights" in str(err.value)
    np.savez(tmp_path / fid_weights.NPZ_NAME, x=np.zeros(3))
    (tmp_path / fid_weights.INFO_NAME).write_text(json.dumps({"npz_sha256": "0" * 64}))
    with pytest.raises(fid_weights.WeightsError, match="corrupt") as err:
        fid_weights.load(str(tmp_path))
    assert "\n" not in str(err.value) and "python -m vdm.tools.fid prepare" in str(err.value)


def test_the_cached_weights_pass_their_checksum_and_fit_the_network():
    """The cache `make fid-weights` wrote (a dependency of `make test`): sha256 recorded, shapes of InceptionV3."""
    from vdm.models import inception

    flat, digest = fid_weights.load()
    assert len(digest) == 64
    inception.check_params(inception.params_from_torch(flat))
    assert int(flat["conv.stride"]) == 2 and list(flat["mixed_4.tower.conv_1.padding"]) == [0, 3]
    info = json.load(open(os.path.join(fid_weights.cache_dir(), fid_weights.INFO_NAME)))
    assert info["archive_sha1"] == fid_weights.ARCHIVE_SHA1 and info["npz_sha256"] == digest
