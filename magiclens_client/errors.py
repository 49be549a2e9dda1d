"""A failed call as an exception named after its gRPC status.

Every class is a `runtime.rpc.RpcFailure` (one readable line, plus `code`, `service` and
`addr`), so callers that already handle RpcFailure (the CLI's exit codes, the gateway's HTTP
statuses) handle these unchanged, and a script can catch the one it cares about."""

from __future__ import annotations

from runtime.rpc import RpcFailure


class MagicLensError(RpcFailure):
    """Any failed MagicLens call; `code` is the gRPC status name (e.g. "NOT_FOUND")."""


class InvalidRequest(MagicLensError, ValueError):
    """The request is wrong (INVALID_ARGUMENT, OUT_OF_RANGE, or refused before sending)."""


class NotFound(MagicLensError, LookupError):
    """The query's pool image id (or the thing asked about) does not exist (NOT_FOUND)."""


class Unauthenticated(MagicLensError):
    """No token, or one the service does not know (UNAUTHENTICATED)."""


class PermissionDenied(MagicLensError):
    """The token's role may not make this call, e.g. a read token deleting (PERMISSION_DENIED)."""


class FailedPrecondition(MagicLensError):
    """The service cannot do it in its present state (FAILED_PRECONDITION, ALREADY_EXISTS)."""


class RateLimited(MagicLensError):
    """Too many requests from this caller; retry later (RESOURCE_EXHAUSTED)."""


class Unavailable(MagicLensError, ConnectionError):
    """Nothing answers at the address, or the service is down (UNAVAILABLE)."""


class DeadlineExceeded(MagicLensError, TimeoutError):
    """The service did not answer within the call's timeout (DEADLINE_EXCEEDED)."""


class Unimplemented(MagicLensError):
    """The service does not implement this call (UNIMPLEMENTED)."""


class ServiceFailed(MagicLensError):
    """The service failed (INTERNAL, UNKNOWN, and every other status)."""


BY_CODE: dict[str, type[MagicLensError]] = {
    "INVALID_ARGUMENT": InvalidRequest,
    "OUT_OF_RANGE": InvalidRequest,
    "NOT_FOUND": NotFound,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "FAILED_PRECONDITION": FailedPrecondition,
    "ALREADY_EXISTS": FailedPrecondition,
    "RESOURCE_EXHAUSTED": RateLimited,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "UNIMPLEMENTED": Unimplemented,
}


def error_for(exc: RpcFailure) -> MagicLensError:
    """The typed exception for a failed call (its message and status kept)."""
    cls = BY_CODE.get(exc.code, ServiceFailed)
    return cls(str(exc), exc.code, exc.service, exc.addr)
