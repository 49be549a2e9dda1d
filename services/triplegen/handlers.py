"""Kafka handlers (ImageMined -> annotate, PairsMined -> filter + write) and the reconciler
that re-derives the same work from Postgres state (images 'mined', pairs 'mined'/'kept')."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
from magiclens.v1 import events_pb2

from runtime import db
from runtime.bus import Event
from runtime.topics import IMAGES_MINED, PAIRS_MINED
from services.triplegen import pipeline, store

log = logging.getLogger(__name__)


def make_handler(ctx: pipeline.Context):
    def handle(conn: psycopg.Connection, event: Event) -> None:
        msg = event.message
        if event.topic == IMAGES_MINED.name:
            # Batch with the page's other unannotated images: one forward pass, not many.
            n = pipeline.annotate_images(conn, ctx, pipeline.with_siblings(conn, msg.image_id))
            log.debug("annotated", extra={"image_id": msg.image_id, "n": n})
        elif event.topic == PAIRS_MINED.name:
            counts = pipeline.process_pairs(conn, ctx, msg.page_id, list(msg.pair_ids))
            log.info("pairs processed", extra={"page_id": msg.page_id, **counts})
        else:
            log.warning("unexpected topic", extra={"topic": event.topic})

    return handle


def make_reconciler(database_url: str, limit: int = 200):
    """Pending work as synthetic events: one PairsMined per page, one ImageMined per image."""

    def reconcile() -> Iterator[Event]:
        with db.connect(database_url) as conn:
            pages = store.pending_pair_pages(conn, limit)
            images = store.unannotated_image_ids(conn, limit)
        for image_id in images:
            yield Event(IMAGES_MINED.name, str(image_id), "",
                        events_pb2.ImageMined(image_id=image_id))
        for r in pages:
            yield Event(PAIRS_MINED.name, str(r["page_id"]), "",
                        events_pb2.PairsMined(page_id=r["page_id"], pair_ids=r["ids"]))

    return reconcile
