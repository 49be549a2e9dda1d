"""Typed service configuration from the environment, with one-line errors.

Every service subclasses BaseServiceSettings; fields map to upper-case environment variables
(DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, MAGICLENS_*). Defaults point at the local
infrastructure that `task infra:up` starts (runtime/ports.py), so a developer needs no
configuration at all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime import ports
from runtime.errors import ConfigError, ServiceError
from runtime.paths import project_root
from runtime.ports import check_addr

__all__ = ["BaseServiceSettings", "check_addr", "load_settings", "project_root", "run_main"]

S = TypeVar("S", bound="BaseServiceSettings")


class BaseServiceSettings(BaseSettings):
    """Settings every service shares."""

    model_config = SettingsConfigDict(env_prefix="MAGICLENS_", extra="ignore",
                                      populate_by_name=True)

    database_url: str = Field(default_factory=ports.local_database_url,
                              validation_alias="DATABASE_URL")
    kafka_bootstrap_servers: str = Field(default_factory=ports.local_kafka_bootstrap,
                                         validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    data_dir: Path = Field(default_factory=lambda: project_root() / "data")
    blob_uri: str = ""  # default: file://<data_dir>/blobs
    log_level: str = "INFO"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    # The interface the gRPC and metrics ports bind: loopback unless configured (a pod sets
    # 0.0.0.0; deploy/gen_base.py does).
    grpc_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Retention of published outbox rows and of processed-event ids (the latter must outlast
    # any redelivery of the same event, i.e. the topics' retention; 7 days by default).
    outbox_retention_s: float = Field(default=7 * 86400.0, gt=0)
    processed_events_retention_s: float = Field(default=7 * 86400.0, gt=0)
    # The topics this process's outbox relay publishes (comma-separated; empty: all). In the
    # cluster, what the workload's Kafka user may write (deploy/catalog.py).
    outbox_topics: str = ""

    @field_validator("database_url")
    @classmethod
    def _pg_url(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return v

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        for hostport in v.split(","):
            host, _, port = hostport.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"'{hostport}' is not host:port")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return v

    @property
    def blob_root(self) -> str:
        return self.blob_uri or f"file://{self.data_dir / 'blobs'}"


def _env_name(cls: type[BaseSettings], field: str) -> str:
    info = cls.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build settings from the environment; raise ConfigError with one readable line."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            parts.append(f"{_env_name(cls, field)}: {err['msg']}")
        raise ConfigError("bad configuration: " + "; ".join(parts)) from None


def run_main(name: str, fn: Callable[[], int | None]) -> None:
    """Run a service entry point; known failures print one line and exit non-zero."""
    try:
        code = fn()
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(2)
    except ServiceError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)
