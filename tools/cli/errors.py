"""CLI failures as one line and an exit code (no tracebacks for anything a user can cause)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1       # a service or database is unreachable, or an operation failed
EXIT_USAGE = 2        # bad arguments, missing files, bad configuration
EXIT_NOT_BUILT = 3    # the backend this subcommand needs does not exist in this checkout


class CliError(Exception):
    """A failure the user should read as one line; `code` is the process exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED, grpc_code: str = "") -> None:
        super().__init__(" ".join(str(message).split()))
        self.code = code
        self.grpc_code = grpc_code  # the gRPC status name when a call failed


class UsageError(CliError):
    def __init__(self, message: str, grpc_code: str = "") -> None:
        super().__init__(message, EXIT_USAGE, grpc_code)


class NotBuiltError(CliError):
    def __init__(self, message: str, grpc_code: str = "") -> None:
        super().__init__(message, EXIT_NOT_BUILT, grpc_code)
