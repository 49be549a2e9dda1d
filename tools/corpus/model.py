"""Data model shared by the corpus sources, page builder and writers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Asset:
    """One image of the corpus. ``produce`` renders it lazily (cached on disk)."""

    id: str  # stable, e.g. "emoji/openmoji-line/1F64B"; also the file stem under img/
    source: str  # source key, see sources.SOURCES
    produce: Callable[[], tuple[bytes, str]]  # -> (encoded bytes, extension)
    cache_key: str  # changes whenever the source bytes or render parameters change
    alt: str
    caption: str
    truth: dict[str, Any]
    credit: str = ""
    license: str = ""


@dataclass
class Figure:
    asset_id: str
    caption: str
    text: str = ""  # optional paragraph beside the figure


@dataclass
class Page:
    """A web page grouping related images, the way real sites co-locate them."""

    id: str  # e.g. "landmarks/france"; the URL is pages/<id>.html
    title: str
    source: str
    kind: str  # landmarks | emoji-style | emoji-variants | emoji-styles | flags | gallery | animals
    intro: list[str]
    figures: list[Figure]
    sections: list[tuple[str, list[Figure]]] = field(default_factory=list)
    split: str = "train"

    @property
    def path(self) -> str:
        return f"pages/{self.id}.html"

    def all_figures(self) -> list[Figure]:
        out = list(self.figures)
        for _, figs in self.sections:
            out.extend(figs)
        return out


def stable_hash(text: str) -> int:
    """Deterministic 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def slug(text: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")[:80] or "x"
