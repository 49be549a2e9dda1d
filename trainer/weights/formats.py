"""Which weight-file formats we read, told apart without loading anything (stdlib only, so
the CLI can refuse a pickle before uploading it without importing JAX)."""

from __future__ import annotations

from pathlib import Path

PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin")


def looks_like_pickle(head: bytes, name: str = "") -> bool:
    """A pickle by its name or its first bytes (protocol 2+ opens with PROTO 0x80 n; an
    empty msgpack map is 0x80 alone, so the byte after it tells them apart)."""
    if Path(name).suffix.lower() in PICKLE_SUFFIXES:
        return True
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def convert_command(path: str | Path, config: str) -> str:
    """The one command that turns a released .pkl into the safe msgpack file."""
    out = Path(path).with_suffix(".msgpack").name
    return f"python -m trainer.weights.released {path} --config {config} --msgpack {out}"


def pickle_refusal(path: str | Path, config: str) -> str:
    """The one line that refuses a pickle and says how to convert it."""
    return (f"{path} is a pickle (the released .pkl format), which import never unpickles; "
            f"convert it once with `{convert_command(path, config)}` and import the .msgpack")
