"""What serves: the `serving_models` registry and the stored vector format.

The embedding worker records the promoted version here when a ModelPublished(promoted)
event arrives; the search shards follow it (blue/green). The worker writes each image's
vector into `image_embeddings` with `vector_bytes`; the shards read it back with
`vectors_from_rows`. Both sides need the same rules, and neither service owns the other.
"""

from __future__ import annotations

import numpy as np
import psycopg

DEPLOYMENT = "default"  # one row per deployment name; the single local deployment


def serving_version(conn: psycopg.Connection, name: str = DEPLOYMENT) -> tuple[str, str] | None:
    """(model_version, checkpoint_uri) that should serve, or None before any promotion."""
    row = conn.execute("SELECT model_version, checkpoint_uri FROM serving_models WHERE name = %s",
                       (name,)).fetchone()
    return (row["model_version"], row["checkpoint_uri"]) if row else None


def set_serving_version(conn: psycopg.Connection, model_version: str, checkpoint_uri: str,
                        name: str = DEPLOYMENT) -> None:
    conn.execute(
        "INSERT INTO serving_models (name, model_version, checkpoint_uri) VALUES (%s, %s, %s) "
        "ON CONFLICT (name) DO UPDATE SET model_version = EXCLUDED.model_version, "
        "checkpoint_uri = EXCLUDED.checkpoint_uri, updated_at = now()",
        (name, model_version, checkpoint_uri))


def vector_bytes(vector: np.ndarray) -> bytes:
    """An embedding as stored: float32 little-endian (unit norm by the encoders)."""
    return np.asarray(vector).astype("<f4").tobytes()


def vectors_from_rows(rows: list[dict], dim_hint: int = 0) -> np.ndarray:
    """[N, D] float32 from rows with an `embedding` column ([0, dim_hint] when empty)."""
    if not rows:
        return np.zeros((0, dim_hint), np.float32)
    return np.stack([np.frombuffer(bytes(r["embedding"]), dtype="<f4") for r in rows])
