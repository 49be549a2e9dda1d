"""Start a suite process, wait for a condition, stop it: the one way tests do each.

Waits poll a positive signal (a row, a port answering, a log line) until a deadline, and
fail with what was awaited and, when the process died, the tail of its log.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from runtime import rpc

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it), and one this test process
    has not handed out before: the OS may offer a port again as soon as its probe socket
    closes, and two servers of one test must not be given the same one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def log_tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-chars:]


def wait_for(condition: Callable[[], T], timeout: float, what: str, *, interval: float = 0.2,
             proc: subprocess.Popen | None = None, log: Path | None = None) -> T:
    """Poll `condition()` until it returns something truthy, and return that.

    AssertionError naming `what` after `timeout` seconds, or as soon as `proc` has exited
    (with the tail of `log`)."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited (code {proc.returncode}) while waiting for "
                                 f"{what}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n"
                                 f"{log_tail(log)}".rstrip())
        time.sleep(interval)


def start_command(command: list[str], *, env: dict[str, str], log: Path | None = None,
                  cwd: Path = ROOT) -> subprocess.Popen:
    """Run `command` in the checkout; its stdout and stderr appended to `log` (discarded
    without one)."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - child's
    try:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        if log is not None:
            out.close()


def start(module: str, *args: str, env: dict[str, str], log: Path | None = None,
          python: str | Path = sys.executable, cwd: Path = ROOT) -> subprocess.Popen:
    """`python -m module args...` in the checkout (output to `log`, as start_command)."""
    return start_command([str(python), "-m", module, *args], env=env, log=log, cwd=cwd)


def stop(proc: subprocess.Popen, timeout: float = 30.0,
         sig: signal.Signals = signal.SIGTERM) -> int:
    """Send `sig` (graceful stop), wait up to `timeout`, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def kill(proc: subprocess.Popen) -> int:
    """SIGKILL (a crash: no chance to clean up); the exit code."""
    return stop(proc, 0, signal.SIGKILL)


@contextlib.contextmanager
def running(module: str, *args: str, env: dict[str, str], log: Path | None = None,
            stop_timeout: float = 30.0, **kwargs) -> Iterator[subprocess.Popen]:
    """A process for the duration of a `with` block, stopped gracefully at its end."""
    proc = start(module, *args, env=env, log=log, **kwargs)
    try:
        yield proc
    finally:
        stop(proc, stop_timeout)


def wait_grpc(port: int, timeout: float = 90.0, *, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> grpc.Channel:
    """A channel to 127.0.0.1:port once a server accepts connections there; it sends the
    local admin token (runtime/auth.py), as the CLI does."""
    channel = rpc.channel(f"127.0.0.1:{port}")

    def ready() -> bool:
        try:
            grpc.channel_ready_future(channel).result(timeout=0.5)
        except grpc.FutureTimeoutError:
            return False
        return True

    wait_for(ready, timeout, f"a gRPC server on port {port}", interval=0, proc=proc, log=log)
    return channel


def wait_log(log: Path, needle: str, timeout: float, *,
             proc: subprocess.Popen | None = None) -> None:
    """Until `needle` appears in `log` (a process says it is ready)."""
    wait_for(lambda: log.exists() and needle.encode() in log.read_bytes(), timeout,
             f"{needle!r} in {log.name}", proc=proc, log=log)
