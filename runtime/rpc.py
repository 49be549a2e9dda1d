"""Client side of a unary gRPC call: a failure becomes one readable line plus its status.

Why here: the CLI and the web gateway both call the suite's services and must word
failures the same way; each then maps the gRPC status to its own outcome (an exit code,
an HTTP status). Nothing here knows about either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from runtime import auth, tracing
from runtime.errors import ServiceError
from runtime.limits import MAX_GRPC_MESSAGE_BYTES

T = TypeVar("T")
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class RpcFailure(ServiceError):
    """A call that failed: one line for a person, and the gRPC status name (`code`)."""

    def __init__(self, message: str, code: str, service: str, addr: str) -> None:
        super().__init__(" ".join(str(message).split()))
        self.code, self.service, self.addr = code, service, addr


def channel(addr: str, role: str = auth.ADMIN, token: str | None = None) -> grpc.Channel:
    """A channel to one of the suite's services that sends this process's bearer token
    (runtime/auth.py: MAGICLENS_TOKEN, else the local token file's `role` token), over TLS
    when MAGICLENS_TLS_CA is set."""
    ch = auth.secure_channel(addr, role=role, token=token, options=[
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),
    ])
    return tracing.traced_channel(ch)  # carries the trace when tracing is on


def unavailable_message(service: str, addr: str) -> str:
    return f"{service} service at {addr} is unavailable (start it with ./taskw up)"


def _message(service: str, addr: str, code: grpc.StatusCode | None, details: str,
             timeout: float) -> str:
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{service} service at {addr} did not answer within {timeout:g}s"
    if code in _UNREACHABLE:
        return unavailable_message(service, addr)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return f"{service} service rejected the request: {details}"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"{service} service: {details or 'not found'}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (f"{service} service at {addr} refused the call: {details} (set MAGICLENS_TOKEN "
                "to a token the service accepts)")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"{service} service refused: {details}"
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
        return f"{service} service refused: {details}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (f"{service} service at {addr} does not implement this call "
                f"yet{': ' + details if details else ''}")
    return f"{service} service at {addr} failed ({name}): {details}"


def call(service: str, addr: str, fn: Callable[..., T], request: object, timeout: float) -> T:
    """Run one unary call; raise RpcFailure (one line + status name) when it fails."""
    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        details = " ".join(details.split())[:300]
        raise RpcFailure(_message(service, addr, code, details, timeout),
                         code.name if code is not None else "UNKNOWN", service, addr) from None
