"""gRPC calls with the CLI's error contract: every RpcError becomes one readable CliError."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from services.cli import backends
from services.cli.errors import CliError, NotBuiltError, UsageError

T = TypeVar("T")
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def channel(addr: str) -> grpc.Channel:
    return grpc.insecure_channel(addr, options=[
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),
    ])


def unavailable_message(service: str, addr: str) -> str:
    return f"{service} service at {addr} is unavailable (start it with ./taskw up)"


def call(service: str, addr: str, fn: Callable[..., T], request: object, timeout: float) -> T:
    """Run one unary call; map transport and status failures to one-line errors."""
    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        details = " ".join(details.split())[:300]
        name = code.name if code is not None else "UNKNOWN"
        if code in _UNREACHABLE:
            if code == grpc.StatusCode.UNAVAILABLE and not backends.is_built(service):
                raise NotBuiltError(
                    f"{backends.describe(service)} is not built yet, and nothing answers at "
                    f"{addr}", name) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CliError(f"{service} service at {addr} did not answer within "
                               f"{timeout:g}s", grpc_code=name) from None
            raise CliError(unavailable_message(service, addr), grpc_code=name) from None
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
            raise UsageError(f"{service} service rejected the request: {details}",
                             name) from None
        if code == grpc.StatusCode.NOT_FOUND:
            raise CliError(f"{service} service: {details or 'not found'}",
                           grpc_code=name) from None
        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
            raise CliError(f"{service} service refused: {details}", grpc_code=name) from None
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise NotBuiltError(f"{service} service at {addr} does not implement this call "
                                f"yet{': ' + details if details else ''}", name) from None
        raise CliError(f"{service} service at {addr} failed ({name}): {details}",
                       grpc_code=name) from None
