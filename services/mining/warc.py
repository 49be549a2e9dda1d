"""Read a WARC: HTML responses become pages, image responses become archived blobs.

Every kept response (HTML too) is archived (blob store + `archived_responses`), so the miner
needs no network for anything the WARC holds, and a lost page event can be re-derived.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import psycopg
from warcio.archiveiterator import ArchiveIterator

from runtime.blobstore import BlobStore
from services.mining import archive

HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class WarcPage:
    url: str
    html: str          # inline HTML ("" when larger than the inline cap; then archived only)


def responses(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[str, str, bytes | None]]:
    """(url, content type, body or None when over max_bytes) for each 200 response record."""
    for record in ArchiveIterator(stream):
        if record.rec_type != "response" or record.http_headers is None:
            continue
        if record.http_headers.get_statuscode() != "200":
            continue
        url = record.rec_headers.get_header("WARC-Target-URI") or ""
        ctype = (record.http_headers.get_header("Content-Type") or "").split(";")[0]
        body = record.content_stream().read(max_bytes + 1)
        yield url, ctype.strip().lower(), (body if len(body) <= max_bytes else None)


def ingest(stream: BinaryIO, conn: psycopg.Connection, blobs: BlobStore, archive_name: str,
           *, max_html_bytes: int, max_image_bytes: int, max_inline_html: int = 1024 * 1024
           ) -> tuple[list[WarcPage], list[str]]:
    """Archive HTML/image responses; return the pages to announce and what was skipped."""
    pages: list[WarcPage] = []
    skipped: list[str] = []
    for url, ctype, body in responses(stream, max(max_html_bytes, max_image_bytes)):
        is_html, is_image = ctype.startswith(HTML_TYPES), ctype.startswith("image/")
        if not (is_html or is_image):
            continue
        cap = max_html_bytes if is_html else max_image_bytes
        if body is None or len(body) > cap:
            skipped.append(f"{url}: larger than {cap} bytes")
            continue
        try:
            archive.store(conn, blobs, url, ctype, body, archive_name)
        except ValueError as exc:
            skipped.append(f"{url}: {exc}")
            continue
        if is_html:
            inline = body.decode("utf-8", errors="replace") if len(body) <= max_inline_html else ""
            pages.append(WarcPage(url, inline))
    return pages, skipped
