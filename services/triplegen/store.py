"""Postgres reads and writes of triplegen (one place for its SQL): image annotations, pair
decisions, triples and their events' rows, the LLM answer cache, and the read-only views the
entry points print (stats, export, review)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

# ------------------------------------------------------------------ annotation


def images_to_annotate(conn: psycopg.Connection, image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Of `image_ids`, the mined/annotated images without an embedding yet, row-locked, with
    the text they were found with (alt, caption, context, page titles)."""
    return conn.execute(
        "SELECT i.image_id, i.blob_uri, i.alt_text, i.caption, i.context_text, i.page_title, "
        "i.first_page_id, p.title AS ptitle FROM images i "
        "LEFT JOIN pages p ON p.page_id = i.first_page_id "
        "LEFT JOIN image_annotations a ON a.image_id = i.image_id "
        "WHERE i.image_id = ANY(%s) AND (a.image_id IS NULL OR a.embedding IS NULL) "
        "AND i.status IN ('mined', 'annotated') ORDER BY i.image_id FOR UPDATE OF i",
        (list(image_ids),)).fetchall()


def reject_image(conn: psycopg.Connection, image_id: int, reason: str) -> None:
    conn.execute("UPDATE images SET status = 'rejected', status_reason = %s, "
                 "updated_at = now() WHERE image_id = %s", (reason, image_id))


def save_annotation(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    """Insert or replace an image's annotation and mark the image annotated. `row` maps
    image_id, labels (JSON-able), backbone, embedding (bytes), alt_text, caption,
    context_text, page_title, labels_text, annotator_version, embedding_dim."""
    conn.execute(
        "INSERT INTO image_annotations (image_id, labels, ocr_text, backbone, embedding, "
        "alt_text, caption, context_text, page_title, labels_text, annotator_version, "
        "embedding_dim) VALUES (%(image_id)s, %(labels)s, NULL, %(backbone)s, %(embedding)s, "
        "%(alt_text)s, %(caption)s, %(context_text)s, %(page_title)s, %(labels_text)s, "
        "%(annotator_version)s, %(embedding_dim)s) "
        "ON CONFLICT (image_id) DO UPDATE SET labels = EXCLUDED.labels, "
        "backbone = EXCLUDED.backbone, embedding = EXCLUDED.embedding, "
        "alt_text = EXCLUDED.alt_text, caption = EXCLUDED.caption, "
        "context_text = EXCLUDED.context_text, page_title = EXCLUDED.page_title, "
        "labels_text = EXCLUDED.labels_text, annotator_version = EXCLUDED.annotator_version, "
        "embedding_dim = EXCLUDED.embedding_dim, updated_at = now()",
        {**row, "labels": json.dumps(row["labels"])})
    conn.execute("UPDATE images SET status = 'annotated', updated_at = now() "
                 "WHERE image_id = %s AND status = 'mined'", (row["image_id"],))


def unannotated_siblings(conn: psycopg.Connection, image_id: int, limit: int) -> list[int]:
    """Up to `limit` other unannotated images first seen on the same page as `image_id`."""
    rows = conn.execute(
        "SELECT i.image_id FROM images i LEFT JOIN image_annotations a USING (image_id) "
        "WHERE i.first_page_id = (SELECT first_page_id FROM images WHERE image_id = %s) "
        "AND i.image_id <> %s AND i.status = 'mined' AND a.image_id IS NULL "
        "ORDER BY i.image_id LIMIT %s", (image_id, image_id, limit)).fetchall()
    return [r["image_id"] for r in rows]


def unannotated_image_ids(conn: psycopg.Connection, limit: int) -> list[int]:
    """Mined images with bytes and no annotation yet (reconciliation)."""
    rows = conn.execute(
        "SELECT i.image_id FROM images i LEFT JOIN image_annotations a "
        "ON a.image_id = i.image_id WHERE i.status = 'mined' AND a.image_id IS NULL "
        "AND i.blob_uri IS NOT NULL ORDER BY i.image_id LIMIT %s", (limit,)).fetchall()
    return [r["image_id"] for r in rows]


# ------------------------------------------------------------------ pairs


def lock_pairs(conn: psycopg.Connection, pair_ids: Sequence[int],
               statuses: tuple[str, ...]) -> list[dict[str, Any]]:
    """Pairs among `pair_ids` in one of `statuses`, row-locked, with their page."""
    return conn.execute(
        "SELECT pr.pair_id, pr.page_id, pr.query_image_id, pr.target_image_id, pr.status, "
        "pr.similarity, pr.requested_writer, pg.title AS page_title, pg.url AS page_url, "
        "pg.split FROM pairs pr JOIN pages pg ON pg.page_id = pr.page_id "
        "WHERE pr.pair_id = ANY(%s) AND pr.status = ANY(%s) ORDER BY pr.pair_id "
        "FOR UPDATE OF pr", (list(pair_ids), list(statuses))).fetchall()


def image_text_rows(conn: psycopg.Connection, page_id: int,
                    image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Each image's text as it appears on this page (page_images), falling back to the image
    row, with its annotation's labels and embedding."""
    return conn.execute(
        "SELECT i.image_id, i.blob_uri, i.source_url, i.width, i.height, "
        "COALESCE(pi.alt_text, i.alt_text) AS alt, COALESCE(pi.caption, i.caption) AS caption, "
        "COALESCE(pi.context_text, i.context_text) AS context, "
        "COALESCE(pg.title, i.page_title) AS page_title, a.labels, a.embedding "
        "FROM images i LEFT JOIN page_images pi ON pi.image_id = i.image_id AND pi.page_id = %s "
        "LEFT JOIN pages pg ON pg.page_id = %s "
        "LEFT JOIN image_annotations a ON a.image_id = i.image_id "
        "WHERE i.image_id = ANY(%s)", (page_id, page_id, list(image_ids))).fetchall()


def decide_pair(conn: psycopg.Connection, pair_id: int, keep: bool, reason: str | None,
                similarity: float | None, filter_version: str) -> None:
    conn.execute(
        "UPDATE pairs SET status = %s, status_reason = %s, similarity = %s, "
        "filter_version = %s, updated_at = now() WHERE pair_id = %s",
        ("kept" if keep else "dropped", reason, similarity, filter_version, pair_id))


def retry_pair_later(conn: psycopg.Connection, pair_id: int, reason: str) -> None:
    conn.execute("UPDATE pairs SET status_reason = %s, updated_at = now() "
                 "WHERE pair_id = %s", (reason, pair_id))


def fail_pair(conn: psycopg.Connection, pair_id: int, reason: str) -> None:
    conn.execute("UPDATE pairs SET status = 'failed', status_reason = %s, "
                 "updated_at = now() WHERE pair_id = %s", (reason, pair_id))


def mark_tripled(conn: psycopg.Connection, pair_id: int) -> None:
    conn.execute("UPDATE pairs SET status = 'tripled', status_reason = NULL, "
                 "requested_writer = NULL, updated_at = now() WHERE pair_id = %s", (pair_id,))


def page_pair_ids(conn: psycopg.Connection, page_id: int) -> list[int]:
    """The page's pairs still to filter or write."""
    return [r["pair_id"] for r in conn.execute(
        "SELECT pair_id FROM pairs WHERE page_id = %s AND status IN ('mined', 'kept') "
        "ORDER BY pair_id", (page_id,))]


def pending_pair_pages(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    """(page_id, ids) of pages with pairs still to filter or write (reconciliation)."""
    return conn.execute(
        "SELECT page_id, array_agg(pair_id ORDER BY pair_id) AS ids FROM pairs "
        "WHERE status IN ('mined', 'kept') GROUP BY page_id ORDER BY page_id LIMIT %s",
        (limit,)).fetchall()


def requeue_pairs(conn: psycopg.Connection, writer: str, *, page_url: str | None = None,
                  writer_version: str | None = None) -> list[dict[str, Any]]:
    """Move the tripled/failed/kept pairs of a page, or of triples by a writer version, back
    to 'kept' for `writer`; (pair_id, page_id) of each."""
    if page_url is not None:
        sel = ("SELECT pr.pair_id FROM pairs pr JOIN pages pg USING (page_id) "
               "WHERE pg.url = %s", (page_url,))
    else:
        sel = ("SELECT DISTINCT pair_id FROM triples WHERE writer_version = %s",
               (writer_version,))
    return conn.execute(
        f"UPDATE pairs SET status = 'kept', requested_writer = %s, updated_at = now() "
        f"WHERE pair_id IN ({sel[0]}) AND status IN ('tripled', 'failed', 'kept') "
        f"RETURNING pair_id, page_id", (writer, *sel[1])).fetchall()


# ------------------------------------------------------------------ triples


def insert_triple(conn: psycopg.Connection, row: dict[str, Any]) -> int | None:
    """A new triple's id; None when the same (pair, writer, version, instruction) exists.
    `row` maps pair_id, query_image_id, target_image_id, instruction, writer,
    writer_version, writer_model, prompt_version, relation, scores (JSON-able), split."""
    found = conn.execute(
        "INSERT INTO triples (pair_id, query_image_id, target_image_id, instruction, "
        "writer, writer_version, writer_model, prompt_version, relation, scores, split) "
        "VALUES (%(pair_id)s, %(query_image_id)s, %(target_image_id)s, %(instruction)s, "
        "%(writer)s, %(writer_version)s, %(writer_model)s, %(prompt_version)s, %(relation)s, "
        "%(scores)s, %(split)s) "
        "ON CONFLICT (pair_id, writer, writer_version, md5(instruction)) DO NOTHING "
        "RETURNING triple_id", {**row, "scores": json.dumps(row["scores"])}).fetchone()
    return found["triple_id"] if found else None


def supersede_older(conn: psycopg.Connection, pair_id: int, writer: str, version: str) -> None:
    """Older versions of the same writer's triples of a pair stop being active."""
    conn.execute("UPDATE triples SET status = 'superseded' WHERE pair_id = %s AND "
                 "writer = %s AND writer_version <> %s AND status = 'active'",
                 (pair_id, writer, version))


def get_triple(conn: psycopg.Connection, triple_id: int) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM triples WHERE triple_id = %s", (triple_id,)).fetchone()


def stats(conn: psycopg.Connection) -> dict[str, Any]:
    """Active triples, kept/dropped pairs with drop reasons, keep rate."""
    n = conn.execute("SELECT count(*) AS n FROM triples WHERE status = 'active'").fetchone()["n"]
    by = {r["status"]: r["n"] for r in conn.execute(
        "SELECT status, count(*) AS n FROM pairs GROUP BY status")}
    reasons = {r["r"]: r["n"] for r in conn.execute(
        "SELECT COALESCE(status_reason, '?') AS r, count(*) AS n FROM pairs "
        "WHERE status = 'dropped' GROUP BY 1")}
    kept = by.get("kept", 0) + by.get("tripled", 0) + by.get("failed", 0)
    dropped = by.get("dropped", 0)
    return {"triples": n, "pairs_kept": kept, "pairs_dropped": dropped,
            "dropped_by_reason": reasons,
            "keep_rate": kept / (kept + dropped) if kept + dropped else 0.0,
            "pairs_by_status": by}


def active_instructions(conn: psycopg.Connection) -> list[str]:
    return [r["instruction"] for r in conn.execute(
        "SELECT instruction FROM triples WHERE status = 'active'")]


def active_relations(conn: psycopg.Connection) -> dict[str, int]:
    """Active triples per relation, most frequent first."""
    return {r["relation"]: r["n"] for r in conn.execute(
        "SELECT relation, count(*) AS n FROM triples WHERE status = 'active' "
        "GROUP BY 1 ORDER BY 2 DESC")}


def export_rows(conn: psycopg.Connection, writer: str | None = None,
                split: str | None = None) -> Iterator[dict[str, Any]]:
    """Active triples whose images have bytes, in id order (optionally one writer/split)."""
    sql = ("SELECT t.triple_id, t.instruction, t.split, t.relation, t.writer, t.writer_version, "
           "qi.blob_uri AS q, ti.blob_uri AS t FROM triples t "
           "JOIN images qi ON qi.image_id = t.query_image_id "
           "JOIN images ti ON ti.image_id = t.target_image_id "
           "WHERE t.status = 'active' AND qi.blob_uri IS NOT NULL AND ti.blob_uri IS NOT NULL")
    args: list = []
    if writer:
        sql += " AND t.writer = %s"
        args.append(writer)
    if split:
        sql += " AND t.split = %s"
        args.append(split)
    yield from conn.execute(sql + " ORDER BY t.triple_id", args)


def review_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every active triple with its images' blobs and alt texts and its page's title."""
    return conn.execute(
        "SELECT t.triple_id, t.instruction, t.relation, t.writer, qi.blob_uri AS q, "
        "ti.blob_uri AS t, qi.alt_text AS qalt, ti.alt_text AS talt, pg.title AS page "
        "FROM triples t JOIN images qi ON qi.image_id = t.query_image_id "
        "JOIN images ti ON ti.image_id = t.target_image_id "
        "JOIN pairs pr ON pr.pair_id = t.pair_id JOIN pages pg ON pg.page_id = pr.page_id "
        "WHERE t.status = 'active' ORDER BY t.triple_id").fetchall()


# ------------------------------------------------------------------ LLM answer cache


def cached_answers(conn: psycopg.Connection, prompt_hashes: list[str]) -> dict[str, str]:
    if not prompt_hashes:
        return {}
    rows = conn.execute("SELECT prompt_hash, response FROM llm_cache "
                        "WHERE prompt_hash = ANY(%s)", (list(prompt_hashes),)).fetchall()
    return {r["prompt_hash"]: r["response"] for r in rows}


def cache_answers(conn: psycopg.Connection, model: str, prompt_version: str,
                  answers: dict[str, str]) -> None:
    for prompt_hash, response in answers.items():
        conn.execute("INSERT INTO llm_cache (prompt_hash, model, prompt_version, response) "
                     "VALUES (%s, %s, %s, %s) ON CONFLICT (prompt_hash) DO NOTHING",
                     (prompt_hash, model, prompt_version, response))
