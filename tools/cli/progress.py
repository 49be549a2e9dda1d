"""Progress bars for long commands (`index`, `ingest`), for a person watching only.

A bar is drawn on stderr, and only when stderr is a terminal and the command was not asked
for `--json`: a script reading stdout, a pipe, a log file or CI gets no bar characters (tqdm,
imported only when a bar is drawn)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any


def wanted(as_json: bool = False) -> bool:
    """Whether to draw bars: not with --json, not when stderr is not a terminal."""
    if as_json:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class _NoBar:
    """What a hidden bar is: every call a no-op (tqdm itself not even imported)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _width() -> dict[str, Any]:
    """tqdm's width: the terminal's, following resizes, or 80 columns when the terminal
    reports none (a bare pseudo-terminal says 0, and tqdm would then draw nothing)."""
    try:
        if os.get_terminal_size(sys.stderr.fileno()).columns > 0:
            return {"dynamic_ncols": True}
    except (OSError, ValueError, AttributeError):
        pass
    return {"ncols": 80}


def bar(show: bool, *, total: int | None, desc: str, unit: str, **kw: Any) -> Any:
    """A tqdm bar on stderr when `show`, else a no-op with the same methods."""
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, **_width(),
                **kw)


def reading(show: bool, stream: Any, total: int, desc: str) -> contextlib.AbstractContextManager:
    """A context giving `stream` with read() advancing a bytes bar (a WARC being read), or
    `stream` itself when no bar is shown."""
    if not show:
        return contextlib.nullcontext(stream)
    from tqdm import tqdm

    return tqdm.wrapattr(stream, "read", total=total, desc=desc, file=sys.stderr, leave=False,
                         **_width())
