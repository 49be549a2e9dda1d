"""Embedding worker settings (`MAGICLENS_*`, see README.md). The Triton server, which runs in
its own environment without the runtime's settings, takes command-line flags instead."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from runtime import ports
from runtime.config import BaseServiceSettings
from runtime.embedding_client import MAX_REQUEST_IMAGES
from runtime.topics import EMBEDDINGS_READY, IMAGES_MINED, MODELS_PUBLISHED


class WorkerSettings(BaseServiceSettings):
    triton_url: str = ports.TRITON_ADDR
    current_model_file: Path | None = None  # default: <data_dir>/serving/current_model.json
    reconcile_batch: int = Field(default=256, ge=1, le=10_000)
    embed_batch: int = Field(default=MAX_REQUEST_IMAGES, ge=1, le=MAX_REQUEST_IMAGES)
    # Consumer group and topic names (overridable so tests run isolated from other consumers).
    embedding_group: str = "magiclens-embedding-worker"
    embedding_images_topic: str = IMAGES_MINED.name
    embedding_models_topic: str = MODELS_PUBLISHED.name
    embedding_ready_topic: str = EMBEDDINGS_READY.name

    @property
    def current_file(self) -> Path:
        return self.current_model_file or Path(self.data_dir) / "serving" / "current_model.json"
