"""``torch.save``'s zip format written without torch, for the generated ``pytorch_model.bin`` files.

A state dict saved by torch is a zip (stored, not compressed) holding ``<prefix>/data.pkl``, a protocol-2
pickle of ``{name: torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())}``
whose storages are persistent ids ``("storage", torch.FloatStorage, "<key>", "cpu", numel)``, the raw
little-endian storages as ``<prefix>/data/<key>`` (64-byte aligned, as torch aligns them for mmap), and the
small records ``byteorder``, ``version``, ``.format_version`` and ``.storage_alignment``. The pickle is
written opcode by opcode: pickling references to torch's globals with the pickle module would import
torch to check them. ``torch.load(path, weights_only=True)`` reads the result back.
"""
from __future__ import annotations

import pathlib
import struct
import zipfile
from typing import Dict

import numpy as np

# numpy dtype -> torch's legacy storage class name (what torch.save records for each storage)
STORAGE_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage",
                 np.dtype("float64"): "DoubleStorage", np.dtype("int64"): "LongStorage",
                 np.dtype("int32"): "IntStorage", np.dtype("bool"): "BoolStorage"}
ALIGNMENT = 64
# Torch pads a record's local header with an extra field of this id so its data starts aligned.
_PAD_EXTRA_ID = 0x4246  # "FB"


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])  # BININT1
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)  # BININT2
    if -(2 ** 31) <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)  # BININT
    raise ValueError(f"{n} does not fit a 4-byte pickle int")


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _tuple(items) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def state_dict_pickle(state: Dict[str, np.ndarray]) -> bytes:
    """data.pkl of a state dict whose i-th tensor lives in storage key str(i)."""
    out = [b"\x80\x02", b"}", b"("]  # PROTO 2, EMPTY_DICT, MARK
    for key, (name, array) in enumerate(state.items()):
        storage_type = STORAGE_TYPES.get(array.dtype)
        if storage_type is None:
            raise ValueError(f"{name}: dtype {array.dtype} has no torch storage type here")
        numel = int(array.size)
        stride, step = [], 1
        for dim in reversed(array.shape):  # contiguous (row-major) strides, in elements
            stride.append(step)
            step *= int(dim)
        persistent = _tuple([_str("storage"), _global("torch", storage_type), _str(str(key)), _str("cpu"), _int(numel)])
        args = _tuple([persistent + b"Q",  # BINPERSID
                       _int(0), _tuple(_int(int(d)) for d in array.shape), _tuple(_int(s) for s in reversed(stride)),
                       b"\x89",  # NEWFALSE: requires_grad
                       _global("collections", "OrderedDict") + b")R"])  # OrderedDict(): backward hooks
        out += [_str(name), _global("torch._utils", "_rebuild_tensor_v2"), args, b"R"]  # REDUCE
    out += [b"u", b"."]  # SETITEMS, STOP
    return b"".join(out)


def _aligned_info(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """A stored ZipInfo whose data will start on an ALIGNMENT boundary at the archive's current end."""
    info = zipfile.ZipInfo(name)  # date 1980-01-01: reproducible bytes
    info.compress_type = zipfile.ZIP_STORED
    start = zf.start_dir + 30 + len(name.encode("utf-8"))  # 30: the local file header's fixed part
    pad = (-(start + 4)) % ALIGNMENT
    info.extra = struct.pack("<HH", _PAD_EXTRA_ID, pad) + b"Z" * pad
    return info


def save_torch_zip(state: Dict[str, np.ndarray], path: pathlib.Path) -> pathlib.Path:
    """Write ``state`` (name -> numpy array) as torch.save would write the matching tensors."""
    path = pathlib.Path(path)
    prefix = path.stem  # torch names the records after the file ("pytorch_model/...")
    # np.ascontiguousarray would turn a 0-d array into shape (1,)
    state = {k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in state.items()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        records = [(f"{prefix}/data.pkl", state_dict_pickle(state)), (f"{prefix}/.format_version", b"1"),
                   (f"{prefix}/.storage_alignment", str(ALIGNMENT).encode()), (f"{prefix}/byteorder", b"little")]
        records += [(f"{prefix}/data/{key}", memoryview(array.astype(array.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)))
                    for key, array in enumerate(state.values())]
        records.append((f"{prefix}/version", b"3\n"))
        for name, payload in records:
            zf.writestr(_aligned_info(zf, name), payload)
    return path
