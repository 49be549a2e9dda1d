"""Postgres reads and writes of the mining service (one place for its SQL): pages, images
and their occurrences, rejected candidates, pairs, and responses archived from WARC files."""

from __future__ import annotations

import functools
from typing import Any

import psycopg

# ------------------------------------------------------------------ pages


def register_page(conn: psycopg.Connection, url: str, url_hash: str, domain: str, source: str,
                  split: str, status: str = "discovered", reason: str | None = None) -> None:
    """Insert the page row unless it exists (idempotent)."""
    conn.execute(
        "INSERT INTO pages (url, url_hash, domain, source, split, status, status_reason) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (url, url_hash, domain, source, split, status, reason))


def submit_page(conn: psycopg.Connection, url: str, url_hash: str, domain: str,
                source: str, split: str = "train") -> str:
    """Insert a submitted page unless it exists; its status either way."""
    return conn.execute(
        "INSERT INTO pages (url, url_hash, domain, source, split) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (url_hash) DO UPDATE SET updated_at = pages.updated_at "
        "RETURNING status", (url, url_hash, domain, source, split)).fetchone()["status"]


def lock_page(conn: psycopg.Connection, url_hash: str, *,
              skip_locked: bool) -> dict[str, Any] | None:
    """The page row, locked for this transaction; with skip_locked, None while another
    transaction holds it."""
    return conn.execute("SELECT * FROM pages WHERE url_hash = %s FOR UPDATE"
                        + (" SKIP LOCKED" if skip_locked else ""), (url_hash,)).fetchone()


def pending_pages(conn: psycopg.Connection, min_age_s: float, limit: int = 500, *,
                  retry_backoff_s: float = 60.0, max_attempts: int = 3) -> list[dict[str, Any]]:
    """Pages still to mine (their events may be lost), untouched for `min_age_s`, and failed
    pages with attempts left whose back-off (`retry_backoff_s`, doubling per attempt) is over."""
    return conn.execute(
        "SELECT url, source, split FROM pages WHERE (status IN ('discovered', 'fetching') "
        "AND updated_at < now() - make_interval(secs => %s)) OR (status = 'failed' "
        "AND attempts < %s AND updated_at < now() - make_interval(secs => "
        "%s * 2 ^ greatest(attempts - 1, 0))) ORDER BY page_id LIMIT %s",
        (min_age_s, max_attempts, retry_backoff_s, limit)).fetchall()


def finish_page(conn: psycopg.Connection, page_id: int, status: str, reason: str | None,
                worker: str) -> None:
    """A page that was not mined (failed or skipped), with the reason."""
    conn.execute("UPDATE pages SET status = %s, status_reason = %s, attempts = attempts "
                 "+ 1, updated_at = now(), mined_by = %s WHERE page_id = %s",
                 (status, reason, worker, page_id))


def finish_mined_page(conn: psycopg.Connection, page_id: int, reason: str | None,
                      title: str | None, http_status: int | None, worker: str) -> None:
    conn.execute("UPDATE pages SET status = 'mined', status_reason = %s, title = %s, "
                 "http_status = %s, attempts = attempts + 1, mined_at = now(), "
                 "updated_at = now(), mined_by = %s WHERE page_id = %s",
                 (reason, title, http_status, worker, page_id))


def page_status(conn: psycopg.Connection, url_hash: str) -> dict[str, Any] | None:
    """A page's status with its image, rejection and pair counts."""
    return conn.execute(
        "SELECT p.url, p.status, coalesce(p.status_reason, '') AS reason, "
        "(SELECT count(*) FROM page_images WHERE page_id = p.page_id) AS images, "
        "(SELECT count(*) FROM image_rejections WHERE page_id = p.page_id) AS rej, "
        "(SELECT count(*) FROM pairs WHERE page_id = p.page_id) AS pairs "
        "FROM pages p WHERE url_hash = %s", (url_hash,)).fetchone()


def mining_counts(conn: psycopg.Connection) -> dict[str, Any]:
    """Pages and images by status, pairs and rejected candidates."""
    return {
        "pages": {r["status"]: r["n"] for r in conn.execute(
            "SELECT status, count(*) AS n FROM pages GROUP BY status")},
        "images": {r["status"]: r["n"] for r in conn.execute(
            "SELECT status, count(*) AS n FROM images GROUP BY status")},
        "pairs": conn.execute("SELECT count(*) AS n FROM pairs").fetchone()["n"],
        "rejected": conn.execute("SELECT count(*) AS n FROM image_rejections").fetchone()["n"],
    }


# ------------------------------------------------------------------ images


def image_by_content_hash(conn: psycopg.Connection, content_hash: str) -> int | None:
    row = conn.execute("SELECT image_id FROM images WHERE content_hash = %s",
                       (content_hash,)).fetchone()
    return row["image_id"] if row else None


# Multi-index hashing of the 64-bit pHash (migration 0011): four 16-bit bands, each indexed.
PHASH_BANDS = (48, 32, 16, 0)  # shifts; band i is (phash >> shift) & 0xFFFF
_BAND_BITS = 16
# Above this many probe values per band (radius 3+, thresholds of 12 bits or more) the
# index reads a good part of the table anyway: such thresholds scan it.
MAX_BAND_PROBES = 200


def band_sql(shift: int) -> str:
    """A band as its index (migration 0011) spells it, so the planner matches the two."""
    return f"((phash >> {shift}) & 65535)" if shift else "(phash & 65535)"


@functools.cache
def _band_masks(radius: int) -> tuple[int, ...]:
    """The 16-bit masks of at most `radius` bits."""
    return tuple(m for m in range(1 << _BAND_BITS) if m.bit_count() <= radius)


def band_probes(phash: int, threshold: int) -> list[list[int]] | None:
    """Per band, the band values a hash within `threshold` bits of `phash` may have there,
    knowing that some band is within threshold // 4 bits (pigeonhole: the distances in the
    four bands sum to the whole one); None when that radius needs too many probes."""
    masks = _band_masks(max(threshold, 0) // len(PHASH_BANDS))
    if len(masks) > MAX_BAND_PROBES:
        return None
    return [[((phash >> shift) & 0xFFFF) ^ m for m in masks] for shift in PHASH_BANDS]


_NEAR = ("bit_count((phash # %(phash)s)::bit(64)) <= %(thr)s")
_ORDER = " ORDER BY bit_count((phash # %(phash)s)::bit(64)), image_id LIMIT %(limit)s"


def near_phash(conn: psycopg.Connection, phash: int, threshold: int,
               limit: int = 20) -> list[dict[str, Any]]:
    """Images whose perceptual hash is within `threshold` bits, nearest first (ties by id).

    Indexed: only rows sharing a band value with one of `band_probes` are read, and the
    Hamming check runs on the index entries; the answer is `near_phash_scan`'s."""
    probes = band_probes(phash, threshold)
    if probes is None:
        return near_phash_scan(conn, phash, threshold, limit)
    bands = " UNION ".join(  # index-only scans (the indexes include phash and image_id)
        f"SELECT image_id FROM images WHERE {band_sql(shift)} = ANY(%(b{i})s::bigint[]) "
        f"AND {_NEAR}" for i, shift in enumerate(PHASH_BANDS))
    return conn.execute(
        f"SELECT image_id, phash, colour_sig FROM images WHERE image_id IN ({bands})" + _ORDER,
        {"phash": phash, "thr": threshold, "limit": limit,
         **{f"b{i}": values for i, values in enumerate(probes)}}).fetchall()


def near_phash_scan(conn: psycopg.Connection, phash: int, threshold: int,
                    limit: int = 20) -> list[dict[str, Any]]:
    """`near_phash` by reading every image: the reference the index must agree with, and
    the plan for thresholds too wide for the bands."""
    return conn.execute(
        f"SELECT image_id, phash, colour_sig FROM images WHERE phash IS NOT NULL AND {_NEAR}"
        + _ORDER, {"phash": phash, "thr": threshold, "limit": limit}).fetchall()


def insert_image(conn: psycopg.Connection, row: dict[str, Any]) -> int | None:
    """Insert an image (`row` maps the images columns below); None when its bytes are
    already stored (another transaction won the race)."""
    found = conn.execute(
        "INSERT INTO images (content_hash, phash, colour_sig, source_url, first_page_id, "
        "blob_uri, mime_type, width, height, alt_text, title_text, caption, context_text, "
        "page_title) VALUES (%(content_hash)s, %(phash)s, %(colour_sig)s, %(source_url)s, "
        "%(first_page_id)s, %(blob_uri)s, %(mime_type)s, %(width)s, %(height)s, %(alt_text)s, "
        "%(title_text)s, %(caption)s, %(context_text)s, %(page_title)s) "
        "ON CONFLICT (content_hash) DO NOTHING RETURNING image_id", row).fetchone()
    return found["image_id"] if found else None


def link_image(conn: psycopg.Connection, page_id: int, image_id: int, position: int,
               src_url: str, alt: str, title: str, caption: str, context: str) -> None:
    """Record an occurrence of an image on a page, with its context there."""
    conn.execute(
        "INSERT INTO page_images (page_id, image_id, position, src_url, alt_text, "
        "title_text, caption, context_text) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        (page_id, image_id, position, src_url, alt, title, caption, context))


def reject_candidate(conn: psycopg.Connection, page_id: int, src_url: str, reason: str) -> None:
    conn.execute("INSERT INTO image_rejections (page_id, src_url, reason) "
                 "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", (page_id, src_url, reason))


def count_images(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"]


def page_image_ids(conn: psycopg.Connection, page_id: int) -> dict[str, int]:
    """{content_hash: image_id} of the images on a page."""
    return {r["content_hash"]: r["image_id"] for r in conn.execute(
        "SELECT i.content_hash, i.image_id FROM page_images p JOIN images i "
        "USING (image_id) WHERE p.page_id = %s", (page_id,))}


# ------------------------------------------------------------------ pairs


def insert_pair(conn: psycopg.Connection, page_id: int, query_id: int, target_id: int,
                similarity: float) -> int | None:
    """A new pair's id; None when the page already has it."""
    row = conn.execute(
        "INSERT INTO pairs (page_id, query_image_id, target_image_id, similarity) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING pair_id",
        (page_id, query_id, target_id, similarity)).fetchone()
    return row["pair_id"] if row else None


def count_pairs(conn: psycopg.Connection, page_id: int) -> int:
    return conn.execute("SELECT count(*) AS n FROM pairs WHERE page_id = %s",
                        (page_id,)).fetchone()["n"]


# ------------------------------------------------------------------ archived responses


def save_archived_response(conn: psycopg.Connection, url_hash: str, url: str,
                           content_type: str, blob_uri: str, size: int, archive: str) -> None:
    conn.execute(
        "INSERT INTO archived_responses (url_hash, url, content_type, blob_uri, size_bytes, "
        "archive) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (url_hash) DO UPDATE SET "
        "content_type = EXCLUDED.content_type, blob_uri = EXCLUDED.blob_uri, "
        "size_bytes = EXCLUDED.size_bytes, archive = EXCLUDED.archive",
        (url_hash, url, content_type, blob_uri, size, archive))


def archived_responses(conn: psycopg.Connection, url_hashes: list[str]) -> list[dict[str, Any]]:
    """(url_hash, content_type, blob_uri) of the archived ones among `url_hashes`."""
    return conn.execute("SELECT url_hash, content_type, blob_uri FROM archived_responses "
                        "WHERE url_hash = ANY(%s)", (url_hashes,)).fetchall()


# ------------------------------------------------------------------ takedowns
def take_down(conn: psycopg.Connection, kind: str, target: str,
              reason: str) -> tuple[list[int], int]:
    """Mark deleted, in the caller's transaction: the image; or the page (by URL hash) and
    every image found on it; or every page of a host and their images. An image is deleted
    wherever else it also appears (the request is about the content). Records the takedown;
    returns (ids of images this call deleted, pages this call deleted)."""
    pages: list[int] = []
    if kind == "image":
        where, args = "image_id = %s", (int(target),)
    else:
        column = "url_hash" if kind == "page" else "domain"
        pages = [r["page_id"] for r in conn.execute(
            f"UPDATE pages SET status = 'deleted', status_reason = %s, updated_at = now() "
            f"WHERE {column} = %s AND status <> 'deleted' RETURNING page_id",
            (f"taken down: {reason}"[:1000], target)).fetchall()]
        where = (f"image_id IN (SELECT pi.image_id FROM page_images pi JOIN pages p "
                 f"ON p.page_id = pi.page_id WHERE p.{column} = %s)")
        args = (target,)
    ids = [r["image_id"] for r in conn.execute(
        f"UPDATE images SET status = 'deleted', status_reason = %s, updated_at = now() "
        f"WHERE {where} AND status <> 'deleted' RETURNING image_id",
        (f"taken down: {reason}"[:1000], *args)).fetchall()]
    conn.execute("INSERT INTO takedowns (kind, target, reason, images_deleted) "
                 "VALUES (%s, %s, %s, %s)", (kind, target, reason, len(ids)))
    return sorted(ids), len(pages)


def domain_taken_down(conn: psycopg.Connection, host: str) -> bool:
    return conn.execute("SELECT 1 FROM takedowns WHERE kind = 'domain' AND target = %s "
                        "LIMIT 1", (host,)).fetchone() is not None


def deleted_blobs(conn: psycopg.Connection, limit: int = 500,
                  image_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Deleted images whose bytes are still stored (of `image_ids` when given), least
    recently tried first, with whether another image that is not deleted shares the blob
    (content-addressed: identical stored bytes)."""
    only = "AND i.image_id = ANY(%s) " if image_ids is not None else ""
    return conn.execute(
        "SELECT i.image_id, i.blob_uri, EXISTS (SELECT 1 FROM images o WHERE o.blob_uri = "
        "i.blob_uri AND o.status <> 'deleted' AND o.image_id <> i.image_id) AS shared "
        "FROM images i WHERE i.status = 'deleted' AND i.blob_uri IS NOT NULL " + only +
        "ORDER BY i.updated_at, i.image_id LIMIT %s",
        ((image_ids,) if image_ids is not None else ()) + (limit,)).fetchall()


def blob_purge_failed(conn: psycopg.Connection, image_id: int) -> None:
    """Send a blob that could not be removed to the back of the purge's queue."""
    conn.execute("UPDATE images SET updated_at = now() WHERE image_id = %s", (image_id,))


def forget_blob(conn: psycopg.Connection, image_id: int) -> None:
    conn.execute("UPDATE images SET blob_uri = NULL, updated_at = now() WHERE image_id = %s "
                 "AND status = 'deleted'", (image_id,))
