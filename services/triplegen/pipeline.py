"""The triplegen work units on Postgres: annotate images, filter pairs, write triples.

Every function is idempotent by state (status columns), so Kafka redelivery, reconciliation
and crash replays converge: images go mined -> annotated|rejected, pairs mined -> kept|dropped
-> tripled (or failed), triples are unique per (pair, writer, writer_version, instruction) and
each new one enqueues TripleCreated in the same transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from magiclens.v1 import events_pb2

from runtime import outbox
from runtime.blobstore import BlobStore
from runtime.topics import TRIPLES_CREATED
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
    rows = conn.execute(
        "SELECT i.image_id, i.blob_uri, i.alt_text, i.caption, i.context_text, i.page_title, "
        "i.first_page_id, p.title AS ptitle FROM images i "
        "LEFT JOIN pages p ON p.page_id = i.first_page_id "
        "LEFT JOIN image_annotations a ON a.image_id = i.image_id "
        "WHERE i.image_id = ANY(%s) AND (a.image_id IS NULL OR a.embedding IS NULL) "
        "AND i.status IN ('mined', 'annotated') ORDER BY i.image_id FOR UPDATE OF i",
        (list(image_ids),)).fetchall()
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
            conn.execute("UPDATE images SET status = 'rejected', status_reason = %s, "
                         "updated_at = now() WHERE image_id = %s",
                         (f"undecodable: {clean(str(exc), 200)}", r["image_id"]))
    anns = ctx.annotator.annotate(imgs) if imgs else []
    for r, a in zip(good, anns, strict=True):
        conn.execute(
            "INSERT INTO image_annotations (image_id, labels, ocr_text, backbone, embedding, "
            "alt_text, caption, context_text, page_title, labels_text, annotator_version, "
            "embedding_dim) VALUES (%s, %s, NULL, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (image_id) DO UPDATE SET labels = EXCLUDED.labels, "
            "backbone = EXCLUDED.backbone, embedding = EXCLUDED.embedding, "
            "alt_text = EXCLUDED.alt_text, caption = EXCLUDED.caption, "
            "context_text = EXCLUDED.context_text, page_title = EXCLUDED.page_title, "
            "labels_text = EXCLUDED.labels_text, annotator_version = EXCLUDED.annotator_version, "
            "embedding_dim = EXCLUDED.embedding_dim, updated_at = now()",
            (r["image_id"], json.dumps(a.labels), BACKBONE_NAME, embedding_to_bytes(a.embedding),
             r["alt_text"], r["caption"], r["context_text"], r["page_title"] or r["ptitle"],
             a.labels_text, ANNOTATOR_VERSION, int(a.embedding.shape[0])))
        conn.execute("UPDATE images SET status = 'annotated', updated_at = now() "
                     "WHERE image_id = %s AND status = 'mined'", (r["image_id"],))
    return len(good)


def with_siblings(conn: psycopg.Connection, image_id: int, limit: int = 31) -> list[int]:
    """The image plus up to `limit` unannotated images first seen on the same page."""
    rows = conn.execute(
        "SELECT i.image_id FROM images i LEFT JOIN image_annotations a USING (image_id) "
        "WHERE i.first_page_id = (SELECT first_page_id FROM images WHERE image_id = %s) "
        "AND i.image_id <> %s AND i.status = 'mined' AND a.image_id IS NULL "
        "ORDER BY i.image_id LIMIT %s", (image_id, image_id, limit)).fetchall()
    return [image_id] + [r["image_id"] for r in rows]


# ------------------------------------------------------------------ metadata

def _pair_rows(conn: psycopg.Connection, pair_ids: Sequence[int], statuses: tuple[str, ...]):
    return conn.execute(
        "SELECT pr.pair_id, pr.page_id, pr.query_image_id, pr.target_image_id, pr.status, "
        "pr.similarity, pr.requested_writer, pg.title AS page_title, pg.url AS page_url, "
        "pg.split FROM pairs pr JOIN pages pg ON pg.page_id = pr.page_id "
        "WHERE pr.pair_id = ANY(%s) AND pr.status = ANY(%s) ORDER BY pr.pair_id "
        "FOR UPDATE OF pr", (list(pair_ids), list(statuses))).fetchall()


def image_metas(conn: psycopg.Connection, page_id: int, image_ids: Sequence[int]
                ) -> dict[int, tuple[ImageMeta, np.ndarray | None]]:
    """Text as it appears on this page (page_images), falling back to the image row."""
    rows = conn.execute(
        "SELECT i.image_id, i.blob_uri, i.source_url, i.width, i.height, "
        "COALESCE(pi.alt_text, i.alt_text) AS alt, COALESCE(pi.caption, i.caption) AS caption, "
        "COALESCE(pi.context_text, i.context_text) AS context, "
        "COALESCE(pg.title, i.page_title) AS page_title, a.labels, a.embedding "
        "FROM images i LEFT JOIN page_images pi ON pi.image_id = i.image_id AND pi.page_id = %s "
        "LEFT JOIN pages pg ON pg.page_id = %s "
        "LEFT JOIN image_annotations a ON a.image_id = i.image_id "
        "WHERE i.image_id = ANY(%s)", (page_id, page_id, list(image_ids))).fetchall()
    out = {}
    for r in rows:
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
    rows = _pair_rows(conn, pair_ids, ("mined",))
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
            conn.execute(
                "UPDATE pairs SET status = %s, status_reason = %s, similarity = %s, "
                "filter_version = %s, updated_at = now() WHERE pair_id = %s",
                ("kept" if keep else "dropped", reason or None, sim, FILTER_VERSION,
                 r["pair_id"]))
            counts["kept" if keep else "dropped"] += 1
    return counts


# ------------------------------------------------------------------ writing

def write_triples(conn: psycopg.Connection, ctx: Context, pair_ids: Sequence[int]
                  ) -> dict[str, int]:
    """Write instructions for 'kept' pairs, store triples, enqueue TripleCreated events."""
    rows = _pair_rows(conn, pair_ids, ("kept",))
    counts = {"triples": 0, "pairs_tripled": 0, "pairs_failed": 0, "pairs_retry": 0}
    if not rows:
        return counts
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r["requested_writer"] or ctx.default_writer, []).append(r)
    for wname, prs in groups.items():
        writer = ctx.writer(wname)
        if hasattr(writer, "cache_get"):  # the LLM writer caches answers in this transaction
            from services.triplegen.writers.llm import pg_cache

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
                    conn.execute("UPDATE pairs SET status_reason = %s, updated_at = now() "
                                 "WHERE pair_id = %s", (f"retry: {res.error}"[:500], r["pair_id"]))
                    counts["pairs_retry"] += 1
                else:
                    conn.execute("UPDATE pairs SET status = 'failed', status_reason = %s, "
                                 "updated_at = now() WHERE pair_id = %s",
                                 (f"writer {writer.name}: {res.error}"[:500], r["pair_id"]))
                    counts["pairs_failed"] += 1
                continue
            for ins in res.instructions:
                row = conn.execute(
                    "INSERT INTO triples (pair_id, query_image_id, target_image_id, instruction, "
                    "writer, writer_version, writer_model, prompt_version, relation, scores, "
                    "split) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (pair_id, writer, writer_version, instruction) DO NOTHING "
                    "RETURNING triple_id",
                    (r["pair_id"], r["query_image_id"], r["target_image_id"], ins.text,
                     writer.name, writer.version, writer.model, writer.prompt_version,
                     ins.relation, json.dumps(ins.scores), r["split"] or "train")).fetchone()
                if row is not None:
                    event = events_pb2.TripleCreated(
                        triple_id=row["triple_id"], pair_id=r["pair_id"], writer=writer.name,
                        writer_version=writer.version)
                    outbox.enqueue(conn, TRIPLES_CREATED, row["triple_id"], event)
                    counts["triples"] += 1
            # Older writer versions of the same writer are superseded by this run.
            conn.execute("UPDATE triples SET status = 'superseded' WHERE pair_id = %s AND "
                         "writer = %s AND writer_version <> %s AND status = 'active'",
                         (r["pair_id"], writer.name, writer.version))
            conn.execute("UPDATE pairs SET status = 'tripled', status_reason = NULL, "
                         "requested_writer = NULL, updated_at = now() WHERE pair_id = %s",
                         (r["pair_id"],))
            counts["pairs_tripled"] += 1
    return counts


def page_pair_ids(conn: psycopg.Connection, page_id: int) -> list[int]:
    return [r["pair_id"] for r in conn.execute(
        "SELECT pair_id FROM pairs WHERE page_id = %s AND status IN ('mined', 'kept') "
        "ORDER BY pair_id", (page_id,))]


def process_pairs(conn: psycopg.Connection, ctx: Context, page_id: int,
                  pair_ids: Sequence[int]) -> dict[str, int]:
    """Filter then write: the whole PairsMined effect."""
    ids = list(pair_ids) or page_pair_ids(conn, page_id)
    counts = filter_pairs(conn, ctx, ids)
    counts.update(write_triples(conn, ctx, ids))
    return counts
