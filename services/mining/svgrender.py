"""Rasterise SVG in a worker process whose address space is capped.

The canvas checks in `imaging` refuse the SVGs we know to be expensive before rendering, but
an SVG is a program (filters, patterns, nested groups) and resvg allocates what it needs: an
allocation the check did not foresee would grow the miner itself. So the render runs in a
child process under RLIMIT_AS. resvg aborts its process when an allocation fails, which here
kills only the child: the miner refuses the image and starts a fresh child. A render that
runs past its time limit is killed the same way.

One child per miner process, used by one render at a time (SVGs are a small share of the
images); it is started lazily by `forkserver`, so it never inherits the miner's threads.
"""

from __future__ import annotations

import multiprocessing
import resource
import threading
from multiprocessing.connection import Connection

DEFAULT_MEMORY_CAP_BYTES = 512 * 1024 * 1024
DEFAULT_TIMEOUT_S = 20.0


class RenderRefused(Exception):
    """The render was not made; the message says why (recorded as the image's reason)."""


def _serve(conn: Connection, cap_bytes: int) -> None:
    """The child's loop: (svg text, width) in, ("ok", png) or ("error", name) out."""
    import resvg_py  # imported in the child only: the parent never renders

    resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
    while True:
        try:
            text, width = conn.recv()
        except EOFError:
            return
        try:
            png = resvg_py.svg_to_bytes(svg_string=text, width=width, skip_system_fonts=True)
            conn.send(("ok", bytes(png)))
        except BaseException as exc:  # resvg raises panics as BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            conn.send(("error", type(exc).__name__))


class SvgRenderer:
    """A capped render worker; thread-safe (renders are serialised)."""

    def __init__(self, memory_cap_bytes: int = DEFAULT_MEMORY_CAP_BYTES,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.memory_cap_bytes = memory_cap_bytes
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self.restarts = 0  # children replaced after a kill (memory cap or timeout)

    def _start(self) -> None:
        ctx = multiprocessing.get_context("forkserver")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, self.memory_cap_bytes),
                           name="svg-render", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent

    def _discard(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None
        self.restarts += 1

    def render(self, text: str, width: int) -> bytes:
        """PNG bytes of `text` rendered `width` px wide, or RenderRefused."""
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            assert self._conn is not None and self._proc is not None
            try:
                self._conn.send((text, width))
                if not self._conn.poll(self.timeout_s):
                    self._discard()
                    raise RenderRefused(f"SVG render took longer than {self.timeout_s:g} s")
                status, value = self._conn.recv()
            except (EOFError, OSError):
                self._proc.join(5)
                code = self._proc.exitcode
                self._discard()
                raise RenderRefused(
                    f"SVG render exceeded the {self.memory_cap_bytes >> 20} MiB memory cap"
                    if code is not None and code < 0 else
                    f"SVG render worker died (exit {code})") from None
            if status != "ok":
                raise RenderRefused(f"SVG render failed ({value})")
            return value

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._discard()
                self.restarts -= 1


_renderers: dict[tuple[int, float], SvgRenderer] = {}
_renderers_lock = threading.Lock()


def renderer_for(memory_cap_bytes: int, timeout_s: float) -> SvgRenderer:
    """The process's renderer for these limits (one child shared by every miner thread)."""
    key = (memory_cap_bytes, timeout_s)
    with _renderers_lock:
        if key not in _renderers:
            _renderers[key] = SvgRenderer(memory_cap_bytes, timeout_s)
        return _renderers[key]
