"""Postgres reads and writes the search tier needs (one place for its SQL).

Which version serves is the runtime's registry (runtime/serving.py), shared with the
embedding worker that records promotions.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import psycopg

from runtime.serving import vectors_from_rows


def partition_ids(conn: psycopg.Connection, version: str, shard: int, num_shards: int
                  ) -> set[int]:
    """Live images of this shard's partition that have an embedding of `version`."""
    rows = conn.execute(
        "SELECT e.image_id FROM image_embeddings e JOIN live_images i USING (image_id) "
        "WHERE e.model_version = %s AND e.image_id %% %s = %s",
        (version, num_shards, shard)).fetchall()
    return {r["image_id"] for r in rows}


def load_embeddings(conn: psycopg.Connection, version: str, ids: list[int]
                    ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[str, str]]]:
    """(ids, vectors, attrs) for the given image ids (attrs: source, page domain for filters)."""
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), {}
    rows = conn.execute(
        "SELECT e.image_id, e.embedding, COALESCE(p.source, '') AS source, "
        "COALESCE(p.domain, '') AS domain FROM image_embeddings e "
        "JOIN images i USING (image_id) LEFT JOIN pages p ON p.page_id = i.first_page_id "
        "WHERE e.model_version = %s AND e.image_id = ANY(%s) ORDER BY e.image_id",
        (version, ids)).fetchall()
    attrs = {r["image_id"]: (r["source"], r["domain"]) for r in rows}
    return np.array([r["image_id"] for r in rows], np.int64), vectors_from_rows(rows), attrs


def image_live(conn: psycopg.Connection, image_id: int) -> bool:
    row = conn.execute("SELECT 1 FROM live_images WHERE image_id = %s",
                       (image_id,)).fetchone()
    return row is not None


def image_id_by_content_hash(conn: psycopg.Connection, digest: str) -> int | None:
    """The pool image with exactly these bytes (sha256 hex), live or not."""
    row = conn.execute("SELECT image_id FROM images WHERE content_hash = %s",
                       (digest,)).fetchone()
    return row["image_id"] if row else None


def live_image(conn: psycopg.Connection, image_id: int) -> dict | None:
    """A live pool image's blob and stored fingerprint (content_hash, phash, colour_sig)."""
    return conn.execute(
        "SELECT blob_uri, content_hash, phash, colour_sig FROM live_images "
        "WHERE image_id = %s", (image_id,)).fetchone()


def candidates(conn: psycopg.Connection, ids: list[int]) -> dict[int, dict]:
    """Result candidates in one round trip: their stored fingerprints (to drop copies of the
    query image) and the context a hit carries (image URL, page, alt text, caption). A
    deleted (taken down) image has no row here, so it is never returned."""
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT i.image_id, i.content_hash, i.phash, i.colour_sig, i.source_url, "
        "COALESCE(p.url, '') AS page_url, COALESCE(i.page_title, p.title, '') AS page_title, "
        "COALESCE(i.alt_text, '') AS alt, COALESCE(i.caption, '') AS caption, "
        "COALESCE(i.context_text, '') AS context_text "
        "FROM images i LEFT JOIN pages p ON p.page_id = i.first_page_id "
        "WHERE i.image_id = ANY(%s) AND i.status <> 'deleted'", (ids,)).fetchall()
    return {r["image_id"]: r for r in rows}


def coverage(conn: psycopg.Connection, version: str, shard: int, num_shards: int) -> float:
    """Fraction of this partition's live images embedded with `version`."""
    row = conn.execute(
        "SELECT count(*) AS n, count(e.image_id) AS done FROM live_images i "
        "LEFT JOIN image_embeddings e ON e.image_id = i.image_id AND e.model_version = %s "
        "WHERE i.image_id %% %s = %s", (version, num_shards, shard)).fetchone()
    return 1.0 if row["n"] == 0 else row["done"] / row["n"]


def record_freshness(conn: psycopg.Connection, image_id: int, version: str, shard: int,
                     discovered: datetime | None) -> None:
    conn.execute(
        "INSERT INTO index_freshness (image_id, model_version, shard, page_discovered_at) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (image_id, version, shard, discovered))


def freshness_p50(conn: psycopg.Connection, version: str, window: int = 1000) -> float:
    """Median seconds from page discovery to searchable over the latest `window` images."""
    row = conn.execute(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50 FROM ("
        " SELECT EXTRACT(EPOCH FROM searchable_at - page_discovered_at) AS s"
        " FROM index_freshness WHERE model_version = %s AND page_discovered_at IS NOT NULL"
        " ORDER BY searchable_at DESC LIMIT %s) t", (version, window)).fetchone()
    return float(row["p50"] or 0.0)
