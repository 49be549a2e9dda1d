"""Safe loading of the released MagicLens checkpoints (`magic_lens_clip_{base,large}.pkl`).

The files are a pickled `bytes` object holding `flax.serialization.to_bytes(params)`. A plain
`pickle.load` would execute whatever the file asks for, so we accept exactly one top-level
bytes object: no globals, no REDUCE, no containers.

CLI: `python -m trainer.weights.released PATH --config base --out DIR` converts to our
Orbax checkpoint format (see trainer.checkpoints).
"""

from __future__ import annotations

import argparse
import io
import pickle
from pathlib import Path
from typing import Any

import flax.serialization

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


def load_released(path: str | Path, target: Any) -> Any:
    """Params with the structure of `target` (e.g. from `abstract_params` or `init_params`).

    `target` may hold ShapeDtypeStructs; every leaf must be present with the same shape.
    """
    import numpy as np

    state = flax.serialization.msgpack_restore(load_payload(path))
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
        if tuple(np.shape(flat_s[k])) != tuple(leaf.shape):
            raise ValueError(f"{k}: file has {np.shape(flat_s[k])}, model wants {leaf.shape}")
    return flax.traverse_util.unflatten_dict(
        {k: np.asarray(flat_s[k], dtype=leaf.dtype) for k, leaf in flat_t.items()}, sep="/"
    )


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
    parser.add_argument("--config", choices=["base", "large"], default="base")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    args = parser.parse_args(argv)

    from trainer.checkpoints import save_params
    from trainer.models.magiclens import abstract_params, arch_meta, build_model

    model, preprocessor = build_model(args.config)
    target = abstract_params(model, preprocessor.image_size)
    params = load_released(args.path, target)
    out = save_params(args.out, params, {"config": args.config, "source": str(args.path),
                                         **arch_meta(model.config)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
