"""Takedowns: content removed on request leaves the pool at once and never comes back.

One transaction marks the image(s) and page(s) deleted, records the takedown and puts one
ImageDeleted event per image in the outbox. From that commit on, search drops the images
from its answers (the root reads their rows), and the shards drop their vectors when the
event arrives (or at their next sync with Postgres, if the broker is down); training and
the embedding worker read only live images. The stored bytes are removed after the commit,
and again by a periodic purge of any deleted image that still has a blob (a blob store
outage during the takedown leaves work for the purge, never a kept copy). The miner
refuses pages of a taken-down domain and never re-mines a deleted page.
"""

from __future__ import annotations

import logging
import re

from magiclens.v1 import events_pb2

from runtime import db, outbox
from runtime.blobstore import BlobStore
from runtime.bus import Throttle
from runtime.topics import IMAGES_DELETED, renamed
from services.mining import store
from services.mining.config import MiningSettings
from services.mining.urls import BadUrl, normalise, url_hash

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500
_HOST = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}"
                   r"[a-z0-9])?)*")


class BadTakedown(ValueError):
    """A takedown request that names nothing valid (the caller's mistake)."""


def target(kind: str, value: str | int) -> str:
    """The takedown's target as stored: an image id, a normalised page URL's hash, or a
    lower-case host name; BadTakedown otherwise."""
    if kind == "image":
        if not isinstance(value, int) or value <= 0:
            raise BadTakedown("image_id must be a positive id")
        return str(value)
    if kind == "page":
        try:
            return url_hash(normalise(str(value)))
        except BadUrl as exc:
            raise BadTakedown(f"page_url: {exc}") from None
    if kind == "domain":
        host = str(value).strip().lower().rstrip(".")
        if not _HOST.fullmatch(host):
            raise BadTakedown(f"domain must be a host name such as example.org, not {value!r}"
                              [:300])
        return host
    raise BadTakedown(f"unknown takedown kind {kind!r}")


class Takedowns:
    def __init__(self, settings: MiningSettings, blobs: BlobStore) -> None:
        self.settings = settings
        self.blobs = blobs
        self.topic = renamed(IMAGES_DELETED, settings.mining_images_deleted_topic)
        self._purge_log = Throttle(60.0)

    def take_down(self, kind: str, value: str | int, reason: str) -> tuple[list[int], int]:
        """(image ids deleted by this call, pages deleted by this call)."""
        if len(reason) > MAX_REASON_CHARS:
            raise BadTakedown(f"reason is longer than {MAX_REASON_CHARS} characters")
        key = target(kind, value)
        with db.transaction(self.settings.database_url) as conn:
            ids, pages = store.take_down(conn, kind, key, reason)
            for image_id in ids:
                outbox.enqueue(conn, self.topic, image_id,
                               events_pb2.ImageDeleted(image_id=image_id, reason=reason))
        log.info("content taken down", extra={"kind": kind, "target": key,
                                               "images": len(ids), "pages": pages})
        try:
            self.purge_blobs(image_ids=ids)
        except Exception as exc:  # the periodic purge finishes the job
            log.warning("blob purge after a takedown failed; the periodic purge retries",
                        extra={"error": f"{type(exc).__name__}: {exc}"})
        return ids, pages

    def purge_blobs(self, limit: int = 500, image_ids: list[int] | None = None) -> int:
        """Remove the stored bytes of deleted images; returns how many were cleared. A blob
        that cannot be removed (the store is down, or the URI is not this store's) is
        retried on later passes, behind the others, and never blocks them."""
        cleared = 0
        with db.connect(self.settings.database_url) as conn:
            for r in store.deleted_blobs(conn, limit, image_ids):
                try:
                    if not r["shared"]:
                        self.blobs.delete(r["blob_uri"])
                except Exception as exc:
                    store.blob_purge_failed(conn, r["image_id"])
                    if self._purge_log.due():
                        log.warning("could not remove a deleted image's bytes; retried later",
                                    extra={"image_id": r["image_id"],
                                           "error": f"{type(exc).__name__}: {exc}"[:300]})
                else:
                    store.forget_blob(conn, r["image_id"])
                    cleared += 1
                conn.commit()
        return cleared
