"""Training settings (environment `MAGICLENS_TRAINING_*`, see README.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from runtime import ports
from runtime.config import BaseServiceSettings
from runtime.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from runtime.topics import MODELS_PUBLISHED, TRIPLES_CREATED


class TrainingSettings(BaseServiceSettings):
    grpc_port: int = Field(default=ports.TRAINING.grpc, ge=0, le=65535)
    metrics_port: int = Field(default=ports.TRAINING.metrics, ge=0, le=65535)

    # Request limits.
    training_max_steps: int = Field(default=100_000, ge=1)
    # Data limits (triples and images are untrusted web content).
    training_max_triples: int = Field(default=200_000, ge=1)
    training_min_triples: int = Field(default=4, ge=1)
    training_max_image_bytes: int = Field(default=MAX_IMAGE_BYTES, ge=1024)
    training_max_image_pixels: int = Field(default=MAX_IMAGE_PIXELS, ge=1024)
    # ImportModel: the largest checkpoint file accepted (the released large is ~1.9 GB).
    training_max_import_bytes: int = Field(default=4 << 30, ge=1024)
    # Queue and recovery.
    training_poll_s: float = Field(default=1.0, gt=0, le=60)
    training_max_attempts: int = Field(default=3, ge=1, le=100)
    training_progress_interval_s: float = Field(default=1.0, ge=0)
    training_checkpoint_every: int = Field(default=0, ge=0)  # 0: the config's own value
    training_jax_cache: bool = True  # persistent XLA compilation cache (below)
    # MAGICLENS_JAX_CACHE_DIR, the variable the embedding server's cache follows too
    # (default: <data dir>/jax_cache).
    jax_cache_dir: Path | None = None
    # Auto-start on TripleCreated (0 = off).
    training_auto_min_new_triples: int = Field(default=0, ge=0)
    training_auto_config: str = "compact"
    training_auto_steps: int = Field(default=0, ge=0)
    training_group: str = "magiclens-training"
    # Topic names (overridable so tests run in isolation from other consumers).
    training_models_topic: str = MODELS_PUBLISHED.name
    training_triples_topic: str = TRIPLES_CREATED.name

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "training" / "runs"

    @property
    def imports_dir(self) -> Path:
        """Uploads in flight (ImportModel); the same volume as models_dir."""
        return self.data_dir / "training" / "imports"

    @property
    def init_cache_dir(self) -> Path:
        """Checkpoints fetched from the blob store to start a run from (--init)."""
        return self.data_dir / "training" / "init-cache"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
