"""The triplegen work units on Postgres: annotate images, filter pairs, write triples.

Every function is idempotent by state (status columns), so Kafka redelivery, reconciliation
and crash replays converge: images go mined -> annotated|rejected, pairs mined -> kept|dropped
-> tripled (or failed), triples are unique per (pair, writer, writer_version, instruction) and
each new one enqueues TripleCreated in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from magiclens.v1 import events_pb2

from runtime import metrics, outbox
from runtime.blobstore import BlobStore
from runtime.topics import TRIPLES_CREATED
from services.triplegen import store
from services.triplegen.annotate import (
    ANNOTATOR_VERSION,
    BACKBONE_NAME,
    Annotator,
    decode_image,
    embedding_from_bytes,
    embedding_to_bytes,
)
from services.triplegen.filtering import FILTER_VERSION, FilterConfig, decide
from services.triplegen.meta import ImageMeta, clean
from services.triplegen.writers.base import InstructionWriter, PairContext
from services.triplegen.writers.llm import pg_cache

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What the work units need; one per service process."""

    blobs: BlobStore
    annotator: Annotator | None
    writers: dict[str, InstructionWriter]
    default_writer: str
    filter: FilterConfig

    def writer(self, name: str | None) -> InstructionWriter:
        return self.writers.get(name or self.default_writer) or self.writers[self.default_writer]


# ------------------------------------------------------------------ annotation

def annotate_images(conn: psycopg.Connection, ctx: Context, image_ids: Sequence[int]) -> int:
    """Annotate images that have no annotation yet; returns how many were annotated."""
    if not image_ids:
        return 0
    rows = store.images_to_annotate(conn, image_ids)
    if not rows:
        return 0
    if ctx.annotator is None:
        raise RuntimeError("annotation requested but no annotator is loaded")
    good, imgs = [], []
    for r in rows:
        try:
            if not r["blob_uri"]:
                raise ValueError("image has no blob")
            imgs.append(decode_image(ctx.blobs.get(r["blob_uri"])))
            good.append(r)
        except (OSError, ValueError) as exc:
            store.reject_image(conn, r["image_id"], f"undecodable: {clean(str(exc), 200)}")
    anns = ctx.annotator.annotate(imgs) if imgs else []
    for r, a in zip(good, anns, strict=True):
        store.save_annotation(conn, {
            "image_id": r["image_id"], "labels": a.labels, "backbone": BACKBONE_NAME,
            "embedding": embedding_to_bytes(a.embedding), "alt_text": r["alt_text"],
            "caption": r["caption"], "context_text": r["context_text"],
            "page_title": r["page_title"] or r["ptitle"], "labels_text": a.labels_text,
            "annotator_version": ANNOTATOR_VERSION, "embedding_dim": int(a.embedding.shape[0])})
    return len(good)


def with_siblings(conn: psycopg.Connection, image_id: int, limit: int = 31) -> list[int]:
    """The image plus up to `limit` unannotated images first seen on the same page."""
    return [image_id, *store.unannotated_siblings(conn, image_id, limit)]


# ------------------------------------------------------------------ metadata

def image_metas(conn: psycopg.Connection, page_id: int, image_ids: Sequence[int]
                ) -> dict[int, tuple[ImageMeta, np.ndarray | None]]:
    """Text as it appears on this page (page_images), falling back to the image row."""
    out = {}
    for r in store.image_text_rows(conn, page_id, image_ids):
        meta = ImageMeta(r["image_id"], alt=clean(r["alt"]), caption=clean(r["caption"]),
                         context=clean(r["context"], 1500), page_title=clean(r["page_title"]),
                         labels=r["labels"] or [], blob_uri=r["blob_uri"] or "",
                         source_url=r["source_url"] or "", width=r["width"] or 0,
                         height=r["height"] or 0)
        emb = embedding_from_bytes(bytes(r["embedding"])) if r["embedding"] else None
        out[r["image_id"]] = (meta, emb)
    return out


# ------------------------------------------------------------------ filtering

def filter_pairs(conn: psycopg.Connection, ctx: Context, pair_ids: Sequence[int]) -> dict[str, int]:
    """Decide kept/dropped for pairs still 'mined'; annotates their images first if needed."""
    rows = store.lock_pairs(conn, pair_ids, ("mined",))
    counts = {"kept": 0, "dropped": 0}
    if not rows:
        return counts
    ids = sorted({r["query_image_id"] for r in rows} | {r["target_image_id"] for r in rows})
    if ctx.annotator is not None:
        annotate_images(conn, ctx, ids)
    by_page: dict[int, list] = {}
    for r in rows:
        by_page.setdefault(r["page_id"], []).append(r)
    for page_id, prs in by_page.items():
        metas = image_metas(conn, page_id, ids)
        for r in prs:
            q, qe = metas.get(r["query_image_id"], (None, None))
            t, te = metas.get(r["target_image_id"], (None, None))
            if q is None or t is None:
                keep, reason, sim = False, "missing_image", None
            else:
                keep, reason, sim = decide(q, t, qe, te, ctx.filter)
            store.decide_pair(conn, r["pair_id"], keep, reason or None, sim, FILTER_VERSION)
            counts["kept" if keep else "dropped"] += 1
    return counts


# ------------------------------------------------------------------ writing

def write_triples(conn: psycopg.Connection, ctx: Context, pair_ids: Sequence[int]
                  ) -> dict[str, int]:
    """Write instructions for 'kept' pairs, store triples, enqueue TripleCreated events."""
    rows = store.lock_pairs(conn, pair_ids, ("kept",))
    counts = {"triples": 0, "pairs_tripled": 0, "pairs_failed": 0, "pairs_retry": 0}
    if not rows:
        return counts
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r["requested_writer"] or ctx.default_writer, []).append(r)
    for wname, prs in groups.items():
        writer = ctx.writer(wname)
        if hasattr(writer, "cache_get"):  # the LLM writer caches answers in this transaction
            writer.cache_get, writer.cache_put = pg_cache(conn, writer.model or "")
        contexts = []
        for r in prs:
            metas = image_metas(conn, r["page_id"], [r["query_image_id"], r["target_image_id"]])
            contexts.append(PairContext(
                r["pair_id"], clean(r["page_title"]), r["page_url"],
                metas[r["query_image_id"]][0], metas[r["target_image_id"]][0], r["similarity"]))
        results = writer.write(contexts)
        for r, res in zip(prs, results, strict=True):
            if res.error:
                if res.retryable:
                    store.retry_pair_later(conn, r["pair_id"], f"retry: {res.error}"[:500])
                    counts["pairs_retry"] += 1
                else:
                    store.fail_pair(conn, r["pair_id"], f"writer {writer.name}: {res.error}"[:500])
                    counts["pairs_failed"] += 1
                continue
            for ins in res.instructions:
                triple_id = store.insert_triple(conn, {
                    "pair_id": r["pair_id"], "query_image_id": r["query_image_id"],
                    "target_image_id": r["target_image_id"], "instruction": ins.text,
                    "writer": writer.name, "writer_version": writer.version,
                    "writer_model": writer.model, "prompt_version": writer.prompt_version,
                    "relation": ins.relation, "scores": ins.scores,
                    "split": r["split"] or "train"})
                if triple_id is not None:
                    event = events_pb2.TripleCreated(
                        triple_id=triple_id, pair_id=r["pair_id"], writer=writer.name,
                        writer_version=writer.version)
                    outbox.enqueue(conn, TRIPLES_CREATED, triple_id, event)
                    counts["triples"] += 1
            # Older writer versions of the same writer are superseded by this run.
            store.supersede_older(conn, r["pair_id"], writer.name, writer.version)
            store.mark_tripled(conn, r["pair_id"])
            counts["pairs_tripled"] += 1
    metrics.pipeline("triples_written", counts["triples"])
    return counts


def process_pairs(conn: psycopg.Connection, ctx: Context, page_id: int,
                  pair_ids: Sequence[int]) -> dict[str, int]:
    """Filter then write: the whole PairsMined effect."""
    ids = list(pair_ids) or store.page_pair_ids(conn, page_id)
    counts = filter_pairs(conn, ctx, ids)
    counts.update(write_triples(conn, ctx, ids))
    return counts
