"""gRPC TripleGenService: read triples, queue regeneration, report keep rate."""

from __future__ import annotations

import grpc
from magiclens.v1 import events_pb2, triplegen_pb2, triplegen_pb2_grpc

from runtime import db, outbox
from runtime.topics import PAIRS_MINED

WRITERS = ("metadata", "llm")


class TripleGenServicer(triplegen_pb2_grpc.TripleGenServiceServicer):
    def __init__(self, database_url: str, default_writer: str) -> None:
        self.database_url = database_url
        self.default_writer = default_writer

    def GetTriple(self, request, context):  # noqa: N802
        with db.connect(self.database_url) as conn:
            r = conn.execute("SELECT * FROM triples WHERE triple_id = %s",
                             (request.triple_id,)).fetchone()
        if r is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no triple {request.triple_id}")
        return triplegen_pb2.Triple(
            triple_id=r["triple_id"], pair_id=r["pair_id"], query_image_id=r["query_image_id"],
            target_image_id=r["target_image_id"], instruction=r["instruction"],
            writer=r["writer"], writer_version=r["writer_version"], relation=r["relation"] or "",
            scores={k: float(v) for k, v in (r["scores"] or {}).items()
                    if isinstance(v, (int, float))})

    def RegenerateTriples(self, request, context):  # noqa: N802
        """Move the scope's tripled/failed pairs back to 'kept' and announce them per page."""
        writer = request.writer or self.default_writer
        if writer not in WRITERS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"writer must be one of {WRITERS}")
        scope = request.WhichOneof("scope")
        if scope is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give page_url or writer_version")
        with db.transaction(self.database_url) as conn:
            if scope == "page_url":
                sel = ("SELECT pr.pair_id FROM pairs pr JOIN pages pg USING (page_id) "
                       "WHERE pg.url = %s", (request.page_url,))
            else:
                sel = ("SELECT DISTINCT pair_id FROM triples WHERE writer_version = %s",
                       (request.writer_version,))
            rows = conn.execute(
                f"UPDATE pairs SET status = 'kept', requested_writer = %s, updated_at = now() "
                f"WHERE pair_id IN ({sel[0]}) AND status IN ('tripled', 'failed', 'kept') "
                f"RETURNING pair_id, page_id", (writer, *sel[1])).fetchall()
            pages: dict[int, list[int]] = {}
            for r in rows:
                pages.setdefault(r["page_id"], []).append(r["pair_id"])
            for page_id, ids in pages.items():
                outbox.enqueue(conn, PAIRS_MINED, page_id,
                               events_pb2.PairsMined(page_id=page_id, pair_ids=sorted(ids)))
        return triplegen_pb2.RegenerateTriplesResponse(pairs_queued=len(rows))

    def GetTripleStats(self, request, context):  # noqa: N802
        with db.connect(self.database_url) as conn:
            return stats_message(conn)


def stats(conn) -> dict:
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


def stats_message(conn) -> triplegen_pb2.TripleStats:
    s = stats(conn)
    return triplegen_pb2.TripleStats(
        triples=s["triples"], pairs_kept=s["pairs_kept"], pairs_dropped=s["pairs_dropped"],
        dropped_by_reason=s["dropped_by_reason"], keep_rate=s["keep_rate"])
