"""gRPC TripleGenService: read triples, queue regeneration, report keep rate."""

from __future__ import annotations

import grpc
from magiclens.v1 import events_pb2, triplegen_pb2, triplegen_pb2_grpc

from runtime import db, outbox
from runtime.topics import PAIRS_MINED
from services.triplegen import store

WRITERS = ("metadata", "llm")


class TripleGenServicer(triplegen_pb2_grpc.TripleGenServiceServicer):
    def __init__(self, database_url: str, default_writer: str) -> None:
        self.database_url = database_url
        self.default_writer = default_writer

    def GetTriple(self, request, context):  # noqa: N802
        with db.connect(self.database_url) as conn:
            r = store.get_triple(conn, request.triple_id)
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
                rows = store.requeue_pairs(conn, writer, page_url=request.page_url)
            else:
                rows = store.requeue_pairs(conn, writer, writer_version=request.writer_version)
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


def stats_message(conn) -> triplegen_pb2.TripleStats:
    s = store.stats(conn)
    return triplegen_pb2.TripleStats(
        triples=s["triples"], pairs_kept=s["pairs_kept"], pairs_dropped=s["pairs_dropped"],
        dropped_by_reason=s["dropped_by_reason"], keep_rate=s["keep_rate"])
