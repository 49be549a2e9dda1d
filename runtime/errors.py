"""Errors that services report as one clear line instead of a traceback."""


class ServiceError(RuntimeError):
    """Base: the message is meant for a person, on one line."""


class ConfigError(ServiceError):
    """The environment holds a missing or malformed setting."""


class UnavailableError(ServiceError):
    """A dependency (PostgreSQL, Kafka, Triton, a shard) cannot be reached."""
