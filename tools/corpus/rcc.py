"""Safe reader for Qt binary resource archives (``.rcc``).

GCompris ships its photos inside ``.rcc`` files. The format (Qt ``rcc`` tool,
versions 1-3) is: a ``qres`` header with offsets to a tree, a data block and a
names block. Every offset read from the file is bounds-checked so a truncated or
hostile archive raises :class:`RccError` instead of reading garbage or looping.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAX_ENTRY_BYTES = 64 * 1024 * 1024  # no single GCompris resource comes near this
MAX_NODES = 200_000
MAX_DEPTH = 32

FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_COMPRESSED_ZSTD = 0x04


class RccError(ValueError):
    """The archive is truncated, corrupt or uses an unsupported feature."""


@dataclass(frozen=True)
class RccEntry:
    path: str
    data: bytes


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def need(self, off: int, n: int) -> None:
        if off < 0 or n < 0 or off + n > len(self.buf):
            raise RccError(f"read of {n} bytes at offset {off} past end ({len(self.buf)})")

    def u16(self, off: int) -> int:
        self.need(off, 2)
        return struct.unpack_from(">H", self.buf, off)[0]

    def u32(self, off: int) -> int:
        self.need(off, 4)
        return struct.unpack_from(">I", self.buf, off)[0]

    def raw(self, off: int, n: int) -> bytes:
        self.need(off, n)
        return self.buf[off : off + n]


def _name(r: _Reader, names_off: int, name_off: int) -> str:
    base = names_off + name_off
    length = r.u16(base)
    raw = r.raw(base + 6, 2 * length)  # skip u16 length + u32 hash
    name = raw.decode("utf-16-be", errors="strict")
    if not name or "/" in name or name in (".", ".."):
        raise RccError(f"invalid entry name {name!r}")
    return name


def _payload(r: _Reader, data_off: int, rel: int, flags: int) -> bytes:
    base = data_off + rel
    size = r.u32(base)
    if size > MAX_ENTRY_BYTES:
        raise RccError(f"entry of {size} bytes exceeds limit")
    blob = r.raw(base + 4, size)
    if flags & FLAG_COMPRESSED_ZSTD:
        raise RccError("zstd-compressed entries are not supported")
    if flags & FLAG_COMPRESSED:
        if len(blob) < 4:
            raise RccError("compressed entry shorter than its length prefix")
        expected = struct.unpack_from(">I", blob, 0)[0]
        if expected > MAX_ENTRY_BYTES:
            raise RccError(f"entry inflates to {expected} bytes, over limit")
        d = zlib.decompressobj()
        try:
            out = d.decompress(blob[4:], expected + 1)
        except zlib.error as exc:
            raise RccError(f"bad zlib stream: {exc}") from exc
        if len(out) != expected or not d.eof:
            raise RccError("compressed entry size mismatch or truncated stream")
        return out
    return blob


def read_rcc(buf: bytes) -> list[RccEntry]:
    """Return all file entries of an rcc archive, sorted by path."""
    r = _Reader(buf)
    if r.raw(0, 4) != b"qres":
        raise RccError("missing 'qres' magic")
    version = r.u32(4)
    if version not in (1, 2, 3):
        raise RccError(f"unsupported rcc version {version}")
    tree_off, data_off, names_off = r.u32(8), r.u32(12), r.u32(16)
    node_size = 14 if version == 1 else 22

    out: list[RccEntry] = []
    seen: set[int] = set()

    def node_at(index: int) -> tuple[int, int]:
        off = tree_off + index * node_size
        r.need(off, node_size)
        return off, r.u16(off + 4)

    def walk(index: int, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise RccError("directory tree too deep")
        if index in seen or len(seen) >= MAX_NODES:
            raise RccError("tree has a cycle or too many nodes")
        seen.add(index)
        off, flags = node_at(index)
        if flags & FLAG_DIRECTORY:
            count, first = r.u32(off + 6), r.u32(off + 10)
            if count > MAX_NODES:
                raise RccError("directory child count too large")
            for child in range(first, first + count):
                coff, _ = node_at(child)
                name = _name(r, names_off, r.u32(coff))
                walk(child, f"{prefix}{name}" if not prefix else f"{prefix}/{name}", depth + 1)
        else:
            out.append(RccEntry(prefix, _payload(r, data_off, r.u32(off + 10), flags)))

    _, root_flags = node_at(0)
    if not root_flags & FLAG_DIRECTORY:
        raise RccError("root node is not a directory")
    walk(0, "", 0)
    return sorted(out, key=lambda e: e.path)


def read_rcc_file(path: str, max_bytes: int = 256 * 1024 * 1024) -> list[RccEntry]:
    """Read an rcc file from disk with a size limit."""
    with open(path, "rb") as fh:
        buf = fh.read(max_bytes + 1)
    if len(buf) > max_bytes:
        raise RccError(f"{path} larger than {max_bytes} bytes")
    return read_rcc(buf)
