"""Gateway settings (`MAGICLENS_GATEWAY_*`, `MAGICLENS_SEARCH_ADDR`) on top of the runtime's."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from runtime import ports
from runtime.config import BaseServiceSettings, check_addr
from runtime.limits import MAX_INSTRUCTION_CHARS, MAX_QUERY_IMAGE_BYTES


class GatewaySettings(BaseServiceSettings):
    search_addr: str = ports.SEARCH_ADDR  # the search root (MAGICLENS_SEARCH_ADDR)
    gateway_host: str = ports.LOCAL_HOST
    gateway_port: int = Field(default=ports.GATEWAY.http, ge=0, le=65535)
    gateway_max_upload_bytes: int = Field(default=MAX_QUERY_IMAGE_BYTES, ge=1024,
                                          le=30 * 1024 * 1024)
    gateway_max_instruction_chars: int = Field(default=MAX_INSTRUCTION_CHARS, ge=1, le=10_000)
    gateway_examples_file: Path | None = None  # default: <data_dir>/demo/examples.json
    gateway_search_timeout_s: float = Field(default=20.0, gt=0, le=300)
    gateway_status_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # Connections and time (uvicorn, see app.py): a connection that sends no complete request
    # head for this long (idle between requests, or a request line/headers trickled in) is
    # closed; a request body must arrive whole within gateway_body_timeout_s (else 408); at most
    # gateway_max_connections are open at once (the next is answered 503 and closed); at most
    # gateway_max_workers blocking gRPC/Postgres calls run at once in worker threads, and a
    # request that waits longer than gateway_queue_timeout_s for one is answered 503.
    gateway_socket_timeout_s: float = Field(default=30.0, gt=0, le=600)
    gateway_body_timeout_s: float = Field(default=60.0, gt=0, le=600)
    gateway_max_connections: int = Field(default=64, ge=1, le=10_000)
    gateway_max_workers: int = Field(default=16, ge=1, le=256)
    gateway_queue_timeout_s: float = Field(default=10.0, gt=0, le=300)
    gateway_shutdown_timeout_s: float = Field(default=10.0, gt=0, le=120)

    @field_validator("search_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        return check_addr(v)

    @property
    def examples_path(self) -> Path:
        return self.gateway_examples_file or self.data_dir / "demo" / "examples.json"
