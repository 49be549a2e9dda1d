"""Gateway settings (`MAGICLENS_GATEWAY_*`, `MAGICLENS_SEARCH_ADDR`) on top of the runtime's."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from runtime.config import BaseServiceSettings, check_addr


class GatewaySettings(BaseServiceSettings):
    search_addr: str = "127.0.0.1:50055"  # the search root (MAGICLENS_SEARCH_ADDR)
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    gateway_max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024,
                                          le=30 * 1024 * 1024)
    gateway_max_instruction_chars: int = Field(default=1000, ge=1, le=10_000)
    gateway_examples_file: Path | None = None  # default: <data_dir>/demo/examples.json
    gateway_search_timeout_s: float = Field(default=20.0, gt=0, le=300)
    gateway_status_timeout_s: float = Field(default=2.0, gt=0, le=60)

    @field_validator("search_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        return check_addr(v)

    @property
    def examples_path(self) -> Path:
        return self.gateway_examples_file or self.data_dir / "demo" / "examples.json"
