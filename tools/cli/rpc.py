"""gRPC calls with the CLI's error contract: a failed call is one CliError line whose exit
code says what kind of failure it was (runtime/rpc.py words the message)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from runtime import rpc
from runtime.rpc import RpcFailure, channel
from tools.cli import backends
from tools.cli.errors import CliError, NotBuiltError, UsageError

__all__ = ["call", "channel", "cli_error"]

T = TypeVar("T")


def cli_error(exc: RpcFailure) -> CliError:
    """The CliError (and exit code) for a failed call."""
    if exc.code == "UNAVAILABLE" and not backends.is_built(exc.service):
        return NotBuiltError(f"{backends.describe(exc.service)} is not built yet, and nothing "
                             f"answers at {exc.addr}", exc.code)
    if exc.code in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
        return UsageError(str(exc), exc.code)
    if exc.code == "UNIMPLEMENTED":
        return NotBuiltError(str(exc), exc.code)
    return CliError(str(exc), grpc_code=exc.code)


def call(service: str, addr: str, fn: Callable[..., T], request: object, timeout: float) -> T:
    """Run one unary call; a failure raises the matching CliError."""
    try:
        return rpc.call(service, addr, fn, request, timeout)
    except RpcFailure as exc:
        raise cli_error(exc) from None
