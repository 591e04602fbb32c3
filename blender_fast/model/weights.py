"""Checkpoint tensors as numpy arrays, without torch: the graph builder's input (model/onnx_builder.py).

* ``model.safetensors`` (or its shards): the header is parsed here and every tensor is a view over a
  read-only memory map of the file, so reading a 1.7 GB checkpoint allocates nothing until a tensor is
  used (``safetensors.numpy.load_file`` copies every tensor into memory first, and numpy has no
  bfloat16 for it to return). bf16 tensors are widened to float32 exactly (a bf16 is the top half of
  an fp32).
* ``pytorch_model.bin`` (or its shards) in torch's zip format (``torch.save`` since torch 1.6):
  ``<name>/data.pkl`` unpickled by a restricted unpickler that knows only what a state dict holds
  (``torch._utils._rebuild_tensor_v2``, the storage classes, ``collections.OrderedDict``) and refuses
  any other global, naming it and the file; the storages ``<name>/data/<key>`` are stored uncompressed
  and are memory mapped like safetensors. The legacy (pre-1.6, non-zip) format needs torch itself.

Nothing here imports torch; the tests hold every path against ``torch.load``.
"""
from __future__ import annotations

import collections
import json
import mmap
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from .checkpoint import shard_files
from .errors import CheckpointError

# safetensors dtype names -> numpy (BF16 is read as uint16 and widened, see _widen_bf16)
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
# torch storage class names (torch.save's pickle names them) -> numpy
TORCH_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
EXPORT_EXTRA_HINT = "pip install 'blender-fast[export]'"


def read_weights(path) -> dict[str, np.ndarray]:
    """{tensor name: numpy array} of a weights file or shard index (``checkpoint.weights_file``'s answer).

    fp32/fp16 tensors are read-only views over memory maps (nothing is read until used); bf16 ones are
    widened to float32. Errors name the file: a damaged or foreign file is a CheckpointError, never a
    library trace."""
    state: dict[str, np.ndarray] = {}
    for f in shard_files(Path(path)):
        if f.suffix == ".safetensors":
            part = read_safetensors(f)
        elif f.suffix == ".bin":
            part = read_torch_zip(f)
        else:
            raise CheckpointError(f"{f}: unknown weights format (expected .safetensors or .bin)")
        state.update(part)
    return state


def _mapped(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise CheckpointError(f"{path}: cannot read weights (empty file)") from None


def _widen_bf16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly: a bf16 is the upper 16 bits of the fp32 it rounds."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """One .safetensors file's tensors as views over a memory map (bf16 widened to float32)."""
    path = Path(path)
    buf = _mapped(path)
    try:
        if len(buf) < 8:
            raise ValueError("file shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", buf[:8])
        if n > len(buf) - 8:
            raise ValueError(f"header length {n} is beyond the file's {len(buf)} bytes (truncated?)")
        header = json.loads(bytes(buf[8:8 + n]))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {name!r} has dtype {info['dtype']!r} (known: {', '.join(SAFETENSORS_DTYPES)})")
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(s) for s in info["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if end - start != count * np.dtype(dtype).itemsize or base + end > len(buf) or start < 0:
                raise ValueError(f"tensor {name!r}: its data offsets {start}..{end} do not fit its shape {list(shape)} "
                                 f"or the file's {len(buf)} bytes (truncated?)")
            arr = np.frombuffer(buf, dtype=dtype, count=count, offset=base + start).reshape(shape)
            out[name] = _widen_bf16(arr) if info["dtype"] == "BF16" else arr
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as e:
        raise CheckpointError(f"{path}: cannot read weights (not a valid safetensors file: {e})") from None
    return out


class _StorageType:
    """What the restricted unpickler returns for ``torch.FloatStorage`` & co.: just the numpy dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, TORCH_STORAGES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 over a numpy storage: a strided view (copied when not contiguous)."""
    arr, bf16 = storage
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    count = int(np.prod(size, dtype=np.int64))
    if count == 0:
        view = np.zeros(size, dtype=arr.dtype)
    else:
        last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
        if storage_offset < 0 or last >= arr.size:
            raise ValueError(f"a tensor of size {list(size)} at offset {storage_offset} overruns its storage of {arr.size}")
        item = arr.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(arr[storage_offset:], shape=size,
                                               strides=tuple(st * item for st in stride), writeable=False)
        expected = tuple(int(np.prod(size[i + 1:], dtype=np.int64)) for i in range(len(size)))
        if tuple(st for s, st in zip(size, stride) if s > 1) != tuple(e for s, e in zip(size, expected) if s > 1):
            view = np.ascontiguousarray(view)
    return _widen_bf16(view) if bf16 else view


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def read_torch_zip(path: Path) -> dict[str, np.ndarray]:
    """A ``torch.save``d state dict (zip format) without torch: see the module docstring."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: a legacy (non-zip) torch pickle; reading it needs torch: {EXPORT_EXTRA_HINT}")
    buf = _mapped(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {i.filename: i for i in archive.infolist()}
            pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise ValueError(f"expected one <name>/data.pkl in the archive, found {len(pickles)}")
            prefix = pickles[0][: -len("data.pkl")]
            storages: dict[str, tuple] = {}

            def storage(key: str, dtype) -> np.ndarray:
                info = infos.get(f"{prefix}data/{key}")
                if info is None:
                    raise ValueError(f"storage {key!r} is missing from the archive")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(f"storage {key!r} is compressed (torch writes storages uncompressed)")
                # The member's data starts after its local header (30 bytes + name + extra field).
                local = buf[info.header_offset:info.header_offset + 30]
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise ValueError(f"storage {key!r}: bad local file header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                if start + info.file_size > len(buf):
                    raise ValueError(f"storage {key!r} runs past the end of the file (truncated?)")
                return np.frombuffer(buf, dtype=dtype, count=info.file_size // np.dtype(dtype).itemsize, offset=start)

            class Unpickler(pickle.Unpickler):
                def find_class(self, module, name):
                    if module == "torch" and name in TORCH_STORAGES:
                        return _StorageType(name)
                    found = _ALLOWED_GLOBALS.get((module, name))
                    if found is None:
                        raise pickle.UnpicklingError(
                            f"refusing global {module}.{name}: a state dict holds only tensors "
                            "(torch._utils._rebuild_tensor_v2, torch.*Storage, collections.OrderedDict)")
                    return found

                def persistent_load(self, pid):
                    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                            and isinstance(pid[1], _StorageType)):
                        raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
                    kind, key = pid[1], str(pid[2])
                    if key not in storages:
                        storages[key] = (storage(key, kind.dtype), kind.name == "BFloat16Storage")
                    return storages[key]

            with archive.open(pickles[0]) as f:
                state = Unpickler(f).load()
    except (pickle.UnpicklingError, ValueError, KeyError, TypeError, IndexError, EOFError, AttributeError,
            zipfile.BadZipFile, struct.error) as e:
        raise CheckpointError(f"{path}: cannot read weights without torch ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return dict(state)
