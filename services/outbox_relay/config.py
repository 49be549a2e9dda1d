"""Outbox relay settings (`MAGICLENS_OUTBOX_BATCH`) on top of the runtime's."""

from __future__ import annotations

from pydantic import Field

from runtime.config import BaseServiceSettings


class RelaySettings(BaseServiceSettings):
    outbox_batch: int = Field(default=500, ge=1, le=10_000)
