"""The current-model file: how the main-env worker (which reads the registry in Postgres)
tells the Triton server (which has no database client) which version to serve."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_current(path: Path) -> tuple[str, str] | None:
    """(model_version, checkpoint dir) from the current-model file, or None if absent/bad."""
    try:
        obj = json.loads(path.read_text())
        return str(obj["model_version"]), str(obj["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_current(path: Path, model_version: str, checkpoint: str) -> None:
    """Atomically point the server at a version (used by the worker and by tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"model_version": model_version, "checkpoint": checkpoint}))
    tmp.replace(path)
