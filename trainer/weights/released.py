"""Safe loading of the released MagicLens checkpoints (`magic_lens_clip_{base,large}.pkl`).

The files are a pickled `bytes` object holding `flax.serialization.to_bytes(params)`. A plain
`pickle.load` would execute whatever the file asks for, so we accept exactly one top-level
bytes object: no globals, no REDUCE, no containers.

The safe format is the pickle's own payload, `flax.serialization.to_bytes(params)` on its own
(msgpack: plain data, nothing to execute). `magiclens models import` accepts only that and
refuses pickles; converting once is

    python -m trainer.weights.released magic_lens_clip_base.pkl --config base --msgpack base.msgpack

(`--out DIR` writes our Orbax checkpoint format instead, see trainer.checkpoints).
"""

from __future__ import annotations

import argparse
import io
import pickle
from pathlib import Path
from typing import Any

import flax.serialization
import flax.traverse_util

from trainer.models.magiclens import RELEASED_CONFIGS
from trainer.weights.formats import looks_like_pickle

MAX_FILE_BYTES = 4 * 1024**3  # large is ~1.9 GB in float32

# Opcodes a pickle of one bytes object may use (protocols 0-5); anything else is refused.
_ALLOWED_OPS = {
    "PROTO", "FRAME", "STOP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
}


class UnsafePickleError(ValueError):
    """The file is not a pickled bytes object."""


class _BytesOnlyUnpickler(pickle.Unpickler):
    """Refuses every global lookup; combined with the opcode scan nothing but bytes loads."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"refusing global {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing persistent id in a weights file")


def _check_opcodes(data: bytes) -> None:
    import pickletools

    try:
        for op, _arg, _pos in pickletools.genops(data):
            if op.name not in _ALLOWED_OPS:
                raise UnsafePickleError(f"refusing pickle opcode {op.name}")
    except UnsafePickleError:
        raise
    except Exception as e:  # malformed stream
        raise UnsafePickleError(f"malformed pickle: {e}") from e


def load_payload(path: str | Path) -> bytes:
    """The msgpack payload inside a released `.pkl`, or UnsafePickleError."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UnsafePickleError(f"{path} is {size} bytes, over the {MAX_FILE_BYTES} limit")
    data = path.read_bytes()
    _check_opcodes(data)
    obj = _BytesOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, bytes | bytearray):
        raise UnsafePickleError(f"expected a bytes payload, got {type(obj).__name__}")
    return bytes(obj)


def restore_payload(payload: bytes, target: Any) -> Any:
    """Params with the structure of `target` from `flax.serialization.to_bytes(params)` bytes.

    msgpack carries only data (flax's ndarray extension is dtype, shape and raw bytes), so
    nothing runs while reading it. `target` may hold ShapeDtypeStructs; every leaf must be
    present with the same shape and be a numeric array (float, bfloat16, integer); leaves are
    cast to the target's dtype. Raises ValueError naming the first mismatches.
    """
    import numpy as np

    if looks_like_pickle(payload[:16]):
        raise ValueError("a pickle, not a flax msgpack params file (convert it first)")
    if not payload or not (0x80 <= payload[0] <= 0x8F or payload[0] in (0xDE, 0xDF)):
        raise ValueError("not a flax msgpack params file (it does not start with a map)")
    try:
        state = flax.serialization.msgpack_restore(payload)
    except Exception as e:  # truncated or malformed msgpack
        raise ValueError(f"unreadable msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise ValueError("not a flax msgpack params file (the top level is not a map)")
    # The released tree is the inner params dict; tolerate a {'params': ...} wrapper.
    if set(state) == {"params"} and "params" not in _keys(target):
        state = state["params"]
    flat_t = flax.traverse_util.flatten_dict(_as_dict(target), sep="/")
    flat_s = flax.traverse_util.flatten_dict(state, sep="/")
    missing = sorted(set(flat_t) - set(flat_s))
    extra = sorted(set(flat_s) - set(flat_t))
    if missing or extra:
        raise ValueError(f"param tree mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, leaf in flat_t.items():
        v = flat_s[k]
        dtype = np.asarray(v).dtype if isinstance(v, np.ndarray | float | int) else None
        # float, int, or ml_dtypes' bfloat16/float8 (numpy kind "V": half-precision exports)
        if dtype is None or not (dtype.kind in "fiu" or dtype.name.startswith(("bfloat16",
                                                                              "float8"))):
            raise ValueError(f"{k}: not a numeric array ({getattr(dtype, 'name', type(v))})")
        if tuple(np.shape(v)) != tuple(leaf.shape):
            raise ValueError(f"{k}: file has {np.shape(v)}, model wants {leaf.shape}")
    return flax.traverse_util.unflatten_dict(
        {k: np.asarray(flat_s[k], dtype=leaf.dtype) for k, leaf in flat_t.items()}, sep="/"
    )


def load_released(path: str | Path, target: Any) -> Any:
    """Params with the structure of `target` from a released `.pkl` (restricted unpickler)."""
    return restore_payload(load_payload(path), target)


def _as_dict(tree: Any) -> dict:
    return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree


def _keys(tree: Any) -> set:
    return set(tree) if hasattr(tree, "keys") else set()


def save_released_format(params: Any, path: str | Path) -> None:
    """Write params the way the released files are written (pickled to_bytes payload)."""
    payload = flax.serialization.to_bytes(params)
    Path(path).write_bytes(pickle.dumps(payload, protocol=4))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", help="magic_lens_clip_{base,large}.pkl")
    parser.add_argument("--config", choices=list(RELEASED_CONFIGS), default="base",
                        help="base | large (clip_tiny: the same tree at test size)")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="output checkpoint directory (Orbax)")
    out.add_argument("--msgpack", help="output file: the safe format `magiclens models import` "
                     "takes (the payload alone, checked against the config)")
    args = parser.parse_args(argv)

    from trainer.checkpoints import save_params
    from trainer.models.magiclens import abstract_params, arch_meta, build_model

    model, preprocessor = build_model(args.config)
    target = abstract_params(model, preprocessor.image_size)
    params = load_released(args.path, target)
    if args.msgpack:
        Path(args.msgpack).write_bytes(flax.serialization.to_bytes(params))
        print(f"wrote {args.msgpack}; import it with: magiclens models import {args.msgpack} "
              f"--config {args.config}")
        return
    out = save_params(args.out, params, {"config": args.config, "source": str(args.path),
                                         **arch_meta(model.config)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
