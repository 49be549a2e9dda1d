"""`python -m services.triplegen [serve|process|export|review|stats]`.

serve (default): Kafka consumer (ImageMined, PairsMined) + reconciler + outbox relay + gRPC.
process: do all pending work once from Postgres state, without Kafka (batch runs, demos).
export --out FILE.jsonl: active triples in the trainer's JSONL format.
review [--out DIR] [-n 24]: HTML page + PNG contact sheet of random triples.
stats: keep rate, drop reasons, lexical diversity (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from magiclens.v1 import triplegen_pb2_grpc

from runtime import db
from runtime.bus import Consumer
from runtime.config import load_settings, run_main
from runtime.logs import setup_logging
from runtime.outbox import check_dependencies
from runtime.service import Service
from runtime.topics import IMAGES_MINED, PAIRS_MINED
from services.triplegen import pipeline, store
from services.triplegen.config import TripleGenSettings
from services.triplegen.diversity import diversity
from services.triplegen.export import export_jsonl
from services.triplegen.handlers import make_handler, make_reconciler
from services.triplegen.review import render
from services.triplegen.server import TripleGenServicer
from services.triplegen.service import build_context

log = logging.getLogger("triplegen")


def serve(settings: TripleGenSettings) -> int:

    svc = Service("triplegen", settings)
    check_dependencies(settings)
    svc.prepare()
    ctx = build_context(settings)
    svc.add_consumer(Consumer(
        "triplegen", settings.kafka_bootstrap_servers, settings.database_url,
        [IMAGES_MINED, PAIRS_MINED], make_handler(ctx),
        group_id=settings.triplegen_consumer_group or None,
        reconciler=make_reconciler(settings.database_url, settings.triplegen_reconcile_limit),
        reconcile_interval_s=settings.reconcile_interval_s))
    svc.add_outbox_relay()
    svc.add_grpc([(triplegen_pb2_grpc.add_TripleGenServiceServicer_to_server,
                   TripleGenServicer(settings.database_url, settings.triplegen_writer),
                   "magiclens.v1.TripleGenService")])
    return svc.run_forever()


def process(settings: TripleGenSettings) -> int:
    """Drain pending work page by page (each page one transaction), no Kafka needed."""
    db.migrate(settings.database_url)
    ctx = build_context(settings)
    reconcile = make_reconciler(settings.database_url, settings.triplegen_reconcile_limit)
    total: dict[str, int] = {}
    conn = db.connect(settings.database_url)
    try:
        while True:
            events = list(reconcile())
            if not events:
                break
            progressed = False
            images = [ev.message.image_id for ev in events if ev.topic == IMAGES_MINED.name]
            for k in range(0, len(images), 32):  # annotate in full batches
                with conn.transaction():
                    n = pipeline.annotate_images(conn, ctx, images[k:k + 32])
                total["images"] = total.get("images", 0) + n
                progressed = progressed or n > 0
                log.info("annotated", extra={"images": n})
            for ev in events:
                if ev.topic == IMAGES_MINED.name:
                    continue
                with conn.transaction():
                    counts = pipeline.process_pairs(conn, ctx, ev.message.page_id,
                                                    list(ev.message.pair_ids))
                for k, v in counts.items():
                    total[k] = total.get(k, 0) + v
                    progressed = progressed or (v > 0 and k not in ("pairs_retry",))
                log.info("processed", extra={"key": ev.key, **counts})
            if not progressed:
                break
    finally:
        conn.close()
    print(json.dumps(total))
    return 0


def stats_cmd(settings: TripleGenSettings) -> int:
    with db.connect(settings.database_url) as conn:
        s = store.stats(conn)
        texts = store.active_instructions(conn)
        s["relations"] = store.active_relations(conn)
    s["diversity"] = diversity(texts)
    print(json.dumps(s, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m services.triplegen")
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("serve")
    sub.add_parser("process")
    sub.add_parser("stats")
    ex = sub.add_parser("export")
    ex.add_argument("--out", required=True, type=Path)
    ex.add_argument("--writer", choices=("metadata", "llm"))
    ex.add_argument("--split")
    rv = sub.add_parser("review")
    rv.add_argument("--out", type=Path, default=None)
    rv.add_argument("-n", type=int, default=24)
    rv.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    settings = load_settings(TripleGenSettings)
    setup_logging("triplegen", settings.log_level)
    if args.cmd in (None, "serve"):
        return serve(settings)
    if args.cmd == "process":
        return process(settings)
    if args.cmd == "stats":
        return stats_cmd(settings)
    if args.cmd == "export":
        n = export_jsonl(settings.database_url, args.out, args.writer, args.split)
        print(f"exported {n} triples to {args.out}")
        return 0
    if args.cmd == "review":
        out = args.out or settings.data_dir / "review"
        print(json.dumps(render(settings.database_url, settings.blob_root, out, args.n,
                                args.seed)))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(run_main("triplegen", main) or 0)
