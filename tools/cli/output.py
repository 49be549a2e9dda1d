"""Print a result as text for people or as one JSON document for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        text = human(data)
        if text:
            print(text)


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain left-aligned text table (no dependency needed for a few columns)."""
    cells = [header, *rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
