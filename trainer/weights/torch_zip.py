"""Read PyTorch state dicts (``torch.save`` files) into numpy without torch and without
executing arbitrary pickles.

Why: our pretrained towers ship as ``.pth`` files inside PyPI wheels, and we do not want torch
at run time nor ``pickle.load`` on files we did not write. A state dict needs only a handful of
globals, so the unpickler below allows exactly those and raises on anything else.

Both on-disk formats are supported:
- the zip format (torch >= 1.6): ``<root>/data.pkl`` plus one raw file per storage
  ``<root>/data/<key>``;
- the legacy format (torch < 1.6): consecutive pickles (magic number, protocol version,
  system info, the object, the list of storage keys) followed by each storage as an int64
  element count and its raw bytes.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAX_FILE_BYTES = 8 << 30  # refuse anything larger than 8 GiB
MAX_PICKLE_BYTES = 64 << 20  # the object pickle of a state dict is small
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# torch storage class name -> numpy dtype (little endian, as torch writes them).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    # bfloat16 has no numpy dtype; read the raw 16 bits and widen to float32 later.
    "BFloat16Storage": np.dtype("<u2"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a checkpoint asks for a global that a plain state dict never needs."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    """A flat storage, filled in once its bytes are read."""

    type: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    """A strided view into a storage; materialised after all storages are read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise pickle.UnpicklingError(f"storage {self.storage.key} was never read")
        n = int(np.prod(self.size)) if self.size else 1
        if n == 0:
            return np.zeros(self.size, dtype=_numpy_dtype(self.storage.type))
        last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride, strict=True))
        if self.offset < 0 or last >= flat.size or any(st < 0 for st in self.stride):
            raise pickle.UnpicklingError("tensor view lies outside its storage")
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(st * item for st in self.stride),
            writeable=False,
        )
        out = np.array(view, copy=True)
        if self.storage.type.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _numpy_dtype(t: _StorageType) -> np.dtype:
    return np.dtype(np.float32) if t.name == "BFloat16Storage" else t.dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("_rebuild_tensor_v2 got something that is not a storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(v, int) for v in (*size, *stride))):
        raise UnsafePickleError("malformed tensor metadata")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _TensorRef):
        raise UnsafePickleError("_rebuild_parameter got something that is not a tensor")
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows only the globals of a state dict; persistent ids become storage placeholders."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"global {module}.{name} is not allowed in a state dict") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafePickleError("storage views (legacy view_metadata) are not supported")
        if not (isinstance(storage_type, _StorageType) and isinstance(key, str)
                and isinstance(numel, int) and numel >= 0):
            raise UnsafePickleError("malformed storage persistent id")
        st = self._storages.get(key)
        if st is None:
            st = self._storages[key] = _Storage(storage_type, key, numel)
        elif st.type != storage_type:
            raise UnsafePickleError(f"storage {key} used with two dtypes")
        return st


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.materialise()
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _plain_load(f: BinaryIO) -> Any:
    """Unpickle metadata records of the legacy format: plain data only, no globals."""

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise UnsafePickleError(f"global {module}.{name} not allowed in a header")

    return _NoGlobals(f).load()


def _load_zip(zf: zipfile.ZipFile) -> Any:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise pickle.UnpicklingError("zip checkpoint without exactly one <root>/data.pkl")
    root = pkls[0][: -len("data.pkl")]
    if any(n.startswith(root + "code/") for n in zf.namelist()):
        raise pickle.UnpicklingError(
            "this is a TorchScript archive, not a state dict: re-save it with "
            "torch.save(model.state_dict(), path)")
    info = zf.getinfo(pkls[0])
    if info.file_size > MAX_PICKLE_BYTES:
        raise pickle.UnpicklingError("data.pkl too large for a state dict")
    has_order = root + "byteorder" in zf.namelist()
    order = zf.read(root + "byteorder").decode() if has_order else "little"
    if order != "little":
        raise pickle.UnpicklingError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), storages).load()
    for key, st in storages.items():
        name = f"{root}data/{key}"
        want = st.numel * st.type.dtype.itemsize
        if zf.getinfo(name).file_size != want:
            raise pickle.UnpicklingError(f"storage {key}: size mismatch")
        st.data = np.frombuffer(zf.read(name), dtype=st.type.dtype)
    return _materialise(obj)


def _load_legacy(f: BinaryIO, file_size: int) -> Any:
    if _plain_load(f) != LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a torch checkpoint (bad magic number)")
    if _plain_load(f) != 1001:
        raise pickle.UnpicklingError("unsupported legacy protocol version")
    sys_info = _plain_load(f)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
        raise pickle.UnpicklingError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(f, storages).load()
    keys = _plain_load(f)
    if not (isinstance(keys, list) and set(keys) == set(storages)):
        raise pickle.UnpicklingError("storage key list does not match the object")
    for key in keys:
        st = storages[key]
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * st.type.dtype.itemsize
        if numel != st.numel or f.tell() + nbytes > file_size:
            raise pickle.UnpicklingError(f"storage {key}: size mismatch")
        buf = f.read(nbytes)
        st.data = np.frombuffer(buf, dtype=st.type.dtype)
    return _materialise(obj)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a ``torch.save``d state dict as ``{name: numpy array}`` (restricted unpickling)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes exceeds the {MAX_FILE_BYTES} byte limit")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            obj = _load_zip(zf)
    else:
        with path.open("rb") as f:
            obj = _load_legacy(f, size)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError("checkpoint does not hold a dict")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise pickle.UnpicklingError(f"entry {k!r:.60} is not a named tensor")
        out[k] = v
    return out
