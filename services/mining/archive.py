"""Responses archived from WARC files: bytes in the blob store, an index row per URL.

The ingest CLI writes them; the miner reads them before fetching, so a WARC is mined
without network access (and a page whose event was lost is still re-minable from here).
"""

from __future__ import annotations

import psycopg

from runtime.blobstore import BlobStore
from services.mining import store as db_store
from services.mining.urls import normalise, url_hash


def store(conn: psycopg.Connection, blobs: BlobStore, url: str, content_type: str,
          body: bytes, archive: str) -> str:
    url = normalise(url)
    uri = blobs.put(body)
    db_store.save_archived_response(conn, url_hash(url), url, content_type[:200], uri,
                                    len(body), archive[:500])
    return uri


def lookup(conn: psycopg.Connection, urls: list[str]) -> dict[str, tuple[str, str]]:
    """{normalised url: (content_type, blob_uri)} for the URLs that are archived."""
    hashes = {}
    for u in urls:
        try:
            hashes[url_hash(normalise(u))] = u
        except ValueError:
            continue
    if not hashes:
        return {}
    rows = db_store.archived_responses(conn, list(hashes))
    return {hashes[r["url_hash"]]: (r["content_type"], r["blob_uri"]) for r in rows}
