"""Postgres reads and writes of the embedding worker (one place for its SQL).

Which version serves is the runtime's registry (runtime/serving.py, shared with the search
shards); what counts as a live image is the `live_images` view (migration 0008).
"""

from __future__ import annotations

import numpy as np
import psycopg

from runtime.serving import vector_bytes

_CLAIM = ("SELECT i.image_id, i.blob_uri, p.discovered_at FROM live_images i "
          "LEFT JOIN pages p ON p.page_id = i.first_page_id ")


def claim(conn: psycopg.Connection, image_id: int) -> dict | None:
    """The live image (id, blob_uri, its page's discovered_at), row-locked; waits for a
    worker that holds it."""
    return conn.execute(_CLAIM + "WHERE i.image_id = %s FOR NO KEY UPDATE OF i",
                        (image_id,)).fetchone()


def claim_pending_after(conn: psycopg.Connection, image_id: int, window: int, version: str,
                        limit: int) -> list[dict]:
    """Up to `limit` live images with ids in (image_id, image_id + window] and no vector of
    `version`, row-locked; rows another worker holds are skipped."""
    return conn.execute(
        _CLAIM + "WHERE i.image_id > %s AND i.image_id <= %s "
        "AND NOT EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = i.image_id "
        "AND e.model_version = %s) ORDER BY i.image_id LIMIT %s "
        "FOR NO KEY UPDATE OF i SKIP LOCKED",
        (image_id, image_id + window, version, limit)).fetchall()


def embedded(conn: psycopg.Connection, version: str, ids: list[int]) -> set[int]:
    """Which of `ids` already have a vector of `version`."""
    rows = conn.execute("SELECT image_id FROM image_embeddings WHERE model_version = %s "
                        "AND image_id = ANY(%s)", (version, ids)).fetchall()
    return {r["image_id"] for r in rows}


def insert_embedding(conn: psycopg.Connection, image_id: int, version: str,
                     vector: np.ndarray) -> bool:
    """Store a vector; False when one of this (image, version) was already there."""
    return conn.execute(
        "INSERT INTO image_embeddings (image_id, model_version, embedding) "
        "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (image_id, version, vector_bytes(vector))).fetchone() is not None


def reject_image(conn: psycopg.Connection, image_id: int, reason: str) -> None:
    conn.execute("UPDATE images SET status = 'rejected', status_reason = %s, "
                 "updated_at = now() WHERE image_id = %s", (reason[:500], image_id))


def backlog(conn: psycopg.Connection, version: str) -> int:
    """Live images without a vector of `version` (what the worker still has to embed)."""
    return conn.execute(
        "SELECT count(*) AS n FROM live_images i WHERE NOT EXISTS (SELECT 1 FROM "
        "image_embeddings e WHERE e.image_id = i.image_id AND e.model_version = %s)",
        (version,)).fetchone()["n"]


def unembedded_ids(conn: psycopg.Connection, version: str, after: int, limit: int) -> list[int]:
    """Live images past `after` without a vector of `version`, in id order."""
    rows = conn.execute(
        "SELECT i.image_id FROM live_images i WHERE i.image_id > %s "
        "AND NOT EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = "
        "i.image_id AND e.model_version = %s) ORDER BY i.image_id LIMIT %s",
        (after, version, limit)).fetchall()
    return [r["image_id"] for r in rows]
