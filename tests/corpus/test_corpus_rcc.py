"""The .rcc unpacker on archives built here per Qt's documented layout."""

from __future__ import annotations

import struct
import zlib

import pytest

from tools.corpus.rcc import RccError, read_rcc


def _name(n: str) -> bytes:
    raw = n.encode("utf-16-be")
    return struct.pack(">HI", len(n), 0) + raw


def make_rcc(files: dict[str, tuple[bytes, bool]], version: int = 2) -> bytes:
    """Build a one-directory archive: root/ -> dir 'res' -> files (sorted)."""
    names = b""
    name_off: dict[str, int] = {}
    for n in ["res", *sorted(files)]:
        name_off[n] = len(names)
        names += _name(n)
    data = b""
    data_off: dict[str, int] = {}
    for n in sorted(files):
        payload, compress = files[n]
        blob = struct.pack(">I", len(payload)) + zlib.compress(payload) if compress else payload
        data_off[n] = len(data)
        data += struct.pack(">I", len(blob)) + blob
    extra = b"\0" * 8 if version >= 2 else b""
    tree = struct.pack(">IHII", 0, 0x02, 1, 1) + extra  # root dir, 1 child starting at 1
    tree += struct.pack(">IHII", name_off["res"], 0x02, len(files), 2) + extra
    for n in sorted(files):
        flags = 0x01 if files[n][1] else 0
        tree += struct.pack(">IHHHI", name_off[n], flags, 0, 0, data_off[n]) + extra
    header_len = 24 if version >= 3 else 20
    tree_off = header_len
    data_start = tree_off + len(tree)
    names_start = data_start + len(data)
    header = b"qres" + struct.pack(">IIII", version, tree_off, data_start, names_start)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + tree + data + names


FILES = {"a.txt": (b"hello rcc", False), "b.bin": (bytes(range(256)) * 40, True)}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_roundtrip(version: int) -> None:
    entries = read_rcc(make_rcc(FILES, version))
    assert [e.path for e in entries] == ["res/a.txt", "res/b.bin"]
    assert entries[0].data == b"hello rcc"
    assert entries[1].data == FILES["b.bin"][0]


def test_rcc_rejects_truncated() -> None:
    buf = make_rcc(FILES)
    for cut in (3, 10, 30, len(buf) - 5, len(buf) // 2):
        with pytest.raises(RccError):
            read_rcc(buf[:cut])


def test_rcc_rejects_corrupt() -> None:
    assert read_rcc(make_rcc(FILES))  # sanity: intact archive parses
    with pytest.raises(RccError):
        read_rcc(b"qreX" + make_rcc(FILES)[4:])
    # Corrupt the zlib stream of the compressed entry.
    buf = bytearray(make_rcc(FILES))
    idx = buf.find(zlib.compress(FILES["b.bin"][0])[:6])
    buf[idx + 2 : idx + 12] = b"\xff" * 10
    with pytest.raises(RccError):
        read_rcc(bytes(buf))
    # A directory that lists itself as its own child must not loop forever.
    buf = bytearray(make_rcc(FILES))
    tree_off = struct.unpack_from(">I", buf, 8)[0]
    struct.pack_into(">II", buf, tree_off + 22 + 6, 1, 1)  # 'res' -> child index 1 (itself)
    with pytest.raises(RccError):
        read_rcc(bytes(buf))
    # A length field pointing past the end of the file.
    buf = bytearray(make_rcc(FILES))
    data_off = struct.unpack_from(">I", buf, 12)[0]
    struct.pack_into(">I", buf, data_off, 10**7)
    with pytest.raises(RccError):
        read_rcc(bytes(buf))
