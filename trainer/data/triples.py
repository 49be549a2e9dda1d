"""Training triples (query image, instruction, target image): a small source protocol and a
JSONL reader. The Postgres reader (lead) implements the same `TripleSource` protocol.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

MAX_LINE_BYTES = 64 * 1024
MAX_INSTRUCTION_CHARS = 2000
MAX_TRIPLES = 10_000_000
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs


@dataclass(frozen=True)
class Triple:
    query_image: str  # path (or any key the image loader understands)
    instruction: str
    target_image: str
    # Optional, for hard negatives and weighting: the page the pair came from (other targets
    # of the same query on it are negatives for a specific instruction) and the writer's
    # specificity score (None: unknown, treated as specific).
    page: str = ""
    specificity: float | None = None
    # The writer's relation label ("skin_tone", "neighbour", "category"...; "" unknown), for
    # relation-balanced sampling.
    relation: str = ""


@runtime_checkable
class TripleSource(Protocol):
    """Anything that can list its triples and say how many there are."""

    def __iter__(self) -> Iterator[Triple]: ...

    def __len__(self) -> int: ...


class JsonlTriples:
    """`{"query_image": path, "instruction": str, "target_image": path}` per line.

    Relative paths resolve against the file's folder. Lines are validated (types, sizes).
    """

    def __init__(self, path: str | Path, limit: int | None = None):
        self.path = Path(path)
        base = self.path.parent
        triples: list[Triple] = []
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if len(raw) > MAX_LINE_BYTES:
                    raise ValueError(f"{self.path}:{lineno}: line longer than {MAX_LINE_BYTES}")
                if not raw.strip():
                    continue
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError(f"{self.path}:{lineno}: expected an object")
                vals = [rec.get(k) for k in ("query_image", "instruction", "target_image")]
                if not all(isinstance(v, str) and v for v in vals):
                    raise ValueError(f"{self.path}:{lineno}: query_image, instruction and "
                                     "target_image must be non-empty strings")
                if len(vals[1]) > MAX_INSTRUCTION_CHARS:
                    raise ValueError(f"{self.path}:{lineno}: instruction too long")
                q, t = (str(base / v) if not Path(v).is_absolute() else v
                        for v in (vals[0], vals[2]))
                page, spec = rec.get("page", ""), rec.get("specificity")
                relation = rec.get("relation", "")
                if not isinstance(page, str) or len(page) > 200:
                    raise ValueError(f"{self.path}:{lineno}: page must be a short string")
                if not isinstance(relation, str) or len(relation) > 200:
                    raise ValueError(f"{self.path}:{lineno}: relation must be a short string")
                if spec is not None and (isinstance(spec, bool)
                                         or not isinstance(spec, int | float)):
                    raise ValueError(f"{self.path}:{lineno}: specificity must be a number")
                triples.append(Triple(q, vals[1], t, page,
                                      None if spec is None else float(spec), relation))
                if len(triples) > MAX_TRIPLES or (limit and len(triples) >= limit):
                    break
        self._triples = triples

    def __iter__(self) -> Iterator[Triple]:
        return iter(self._triples)

    def __len__(self) -> int:
        return len(self._triples)


def write_jsonl(path: str | Path, triples: list[Triple]) -> Path:
    """Export triples (paths relative to the file where possible)."""
    path = Path(path)
    base = path.parent.resolve()
    with path.open("w") as f:
        for t in triples:
            rec = {}
            for k in ("query_image", "instruction", "target_image"):
                v = getattr(t, k)
                if k != "instruction":
                    p = Path(v).resolve()
                    v = str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
                rec[k] = v
            if t.page:
                rec["page"] = t.page
            if t.specificity is not None:
                rec["specificity"] = t.specificity
            if t.relation:
                rec["relation"] = t.relation
            f.write(json.dumps(rec) + "\n")
    return path


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB with a pixel-count limit."""
    with Image.open(path) as im:
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{path}: {im.width}x{im.height} exceeds {MAX_IMAGE_PIXELS} pixels")
        return im.convert("RGB")


def as_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


def read_captions(path: str | Path, limit: int = MAX_TRIPLES) -> list[tuple[str, str]]:
    """`{"image": path, "text": str}` per line (alt texts / captions for the alignment stage)."""
    path = Path(path)
    out = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES}")
            rec = json.loads(raw)
            img, text = (rec.get("image"), rec.get("text")) if isinstance(rec, dict) else (0, 0)
            if not (isinstance(img, str) and isinstance(text, str) and img and text
                    and len(text) <= MAX_INSTRUCTION_CHARS):
                raise ValueError(f"{path}:{lineno}: need non-empty 'image' and 'text' strings")
            out.append((img if Path(img).is_absolute() else str(path.parent / img), text))
            if len(out) >= limit:
                break
    return out
