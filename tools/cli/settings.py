"""Where the CLI finds the services: environment, with local defaults."""

from __future__ import annotations

from pydantic import Field, field_validator

from runtime import ports
from runtime.config import BaseServiceSettings, check_addr


class ClientSettings(BaseServiceSettings):
    """`MAGICLENS_SEARCH_ADDR`, `MAGICLENS_TRAINING_ADDR`, plus the shared runtime settings."""

    search_addr: str = ports.SEARCH_ADDR
    training_addr: str = ports.TRAINING_ADDR
    rpc_timeout_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("search_addr", "training_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        return check_addr(v)
