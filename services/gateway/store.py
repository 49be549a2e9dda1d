"""Postgres reads and blob fetches of the gateway (one place for its SQL): random samples of
the live pool for picking, and image bytes by id."""

from __future__ import annotations

from typing import Any

from runtime import db
from runtime.blobstore import BlobStore

SERVABLE_MIME = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"}
MAX_SAMPLE = 96


def sample(pool: db.Pool, n: int) -> list[dict[str, Any]]:
    """Up to n random live pool images (the `live_images` view) with where they came from."""
    n = max(1, min(n, MAX_SAMPLE))
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT i.image_id, i.width, i.height, coalesce(i.alt_text, '') AS alt_text, "
            "coalesce(i.caption, '') AS caption, coalesce(p.url, '') AS page_url, "
            "coalesce(p.title, i.page_title, '') AS page_title FROM live_images i "
            "LEFT JOIN pages p ON p.page_id = i.first_page_id "
            "ORDER BY random() LIMIT %s", (n,)).fetchall()
    return [dict(r) | {"src": f"/images/{r['image_id']}"} for r in rows]


class BlobMissing(LookupError):
    """The image row exists but its bytes are not in this gateway's blob store."""


def image_bytes(pool: db.Pool, blobs: BlobStore, image_id: int) -> tuple[bytes, str] | None:
    """(bytes, content type) of an image, or None when there is no such image.

    Any image that is not deleted and has bytes: a rejected one stays viewable by its id,
    although it is not live (not searchable, not offered in the picker)."""
    with pool.connection() as conn:
        row = conn.execute("SELECT blob_uri, mime_type FROM images WHERE image_id = %s "
                           "AND status <> 'deleted' AND blob_uri IS NOT NULL",
                           (image_id,)).fetchone()
    if row is None:
        return None
    try:
        data = blobs.get(row["blob_uri"])
    except (FileNotFoundError, ValueError):
        raise BlobMissing(f"image {image_id}'s bytes are not in this blob store "
                          "(check MAGICLENS_BLOB_URI)") from None
    mime = row["mime_type"] if row["mime_type"] in SERVABLE_MIME else "application/octet-stream"
    return data, mime
