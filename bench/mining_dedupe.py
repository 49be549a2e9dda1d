"""The miner's near-duplicate look-up per new image as the pool grows: the indexed look-up
(multi-index hashing, migration 0011) vs the full scan it replaced, in the same run.

One scratch database grows to each size in turn (synthetic rows, bulk-loaded with COPY: a
uniform random pHash, a random colour signature, text of a mined image's size), then is
vacuumed and analysed as autovacuum would leave an insert-only table. At each size it times
the look-ups `Miner._existing` makes for a new image (content hash, then near pHash at the
miner's threshold) for query hashes of which half have planted near-duplicates at 0..t+1
bits, checks that both plans return the same rows, and times inserting the image (its
index upkeep, four band indexes more than before; rolled back).

    python bench/mining_dedupe.py [--sizes 10000 100000 1000000] [--queries 200]

Needs PostgreSQL (DATABASE_URL, default the local infra); creates and drops its database.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid

import psycopg

from runtime import db, ports
from runtime.near_duplicates import COLOUR_SIG_BYTES, PHASH_THRESHOLD
from services.mining import store

TEXT = "a caption of the kind a mined page gives its image, " * 4


def signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def flip(phash: int, bits: int, rng: random.Random) -> int:
    """`phash` with `bits` distinct random bits flipped (signed, as stored)."""
    mask = sum(1 << b for b in rng.sample(range(64), bits))
    return signed((phash & ((1 << 64) - 1)) ^ mask)


def load(conn: psycopg.Connection, start: int, stop: int, planted: dict[int, list[int]],
         rng: random.Random) -> None:
    """COPY rows start..stop-1; `planted` hashes go in first (near-duplicates of queries)."""
    extra = [h for hs in planted.values() for h in hs] if start == 0 else []
    with conn.cursor().copy(
            "COPY images (content_hash, phash, colour_sig, source_url, blob_uri, mime_type, "
            "width, height, alt_text, context_text) FROM STDIN") as copy:
        for i in range(start, stop):
            ph = extra[i] if i < len(extra) else signed(rng.getrandbits(64))
            copy.write_row((f"bench-{i:08d}", ph, rng.randbytes(COLOUR_SIG_BYTES),
                            f"https://bench.example/p{i // 8}/{i}.jpg",
                            f"file:///data/blobs/{i:08d}.jpg", "image/jpeg", 640, 480,
                            "an image", TEXT))
    conn.commit()


def timed(fn, queries: list[int]) -> tuple[list[float], list[list[int]]]:
    ms, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        rows = fn(q)
        ms.append((time.perf_counter() - t0) * 1000)
        found.append([r["image_id"] for r in rows])
    return ms, found


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(
        values) > 1 else values[0]


def measure(conn: psycopg.Connection, queries: list[int], thr: int,
            scan_queries: int) -> dict[str, float]:
    def lookup(near):
        def one(ph: int):
            store.image_by_content_hash(conn, f"new-{ph}")  # a new image: not found
            return near(conn, ph, thr)
        return one

    lookup(store.near_phash)(queries[0])  # warm: plans, caches
    lookup(store.near_phash_scan)(queries[0])
    idx_ms, idx_found = timed(lookup(store.near_phash), queries)
    sub = queries[:scan_queries]
    scan_ms, scan_found = timed(lookup(store.near_phash_scan), sub)
    if idx_found[:len(sub)] != scan_found:
        raise SystemExit("the indexed look-up disagrees with the scan")
    ins_ms = []
    for q in queries[:50]:
        t0 = time.perf_counter()
        store.insert_image(conn, {
            "content_hash": f"new-{q}", "phash": q, "colour_sig": bytes(COLOUR_SIG_BYTES),
            "source_url": "https://bench.example/new.jpg", "first_page_id": None,
            "blob_uri": "file:///new.jpg", "mime_type": "image/jpeg", "width": 640,
            "height": 480, "alt_text": "", "title_text": "", "caption": "",
            "context_text": TEXT, "page_title": ""})
        ins_ms.append((time.perf_counter() - t0) * 1000)
        conn.rollback()
    return {"scan_p50": p(scan_ms, 50), "scan_mean": statistics.fmean(scan_ms),
            "idx_p50": p(idx_ms, 50), "idx_p99": p(idx_ms, 99),
            "idx_mean": statistics.fmean(idx_ms), "ins_p50": p(ins_ms, 50),
            "found": sum(len(f) for f in idx_found) / len(idx_found)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--scan-queries", type=int, default=20,
                    help="look-ups timed with the full scan (it is slow at 1M)")
    ap.add_argument("--threshold", type=int, default=PHASH_THRESHOLD)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--database-url", default="")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    thr = args.threshold
    queries = [signed(rng.getrandbits(64)) for _ in range(args.queries)]
    # half the queries have stored near-duplicates at every distance 0..t+1 (t+1: not near)
    planted = {q: [flip(q, d, rng) for d in range(thr + 2)] for q in queries[::2]}

    admin = args.database_url or os.environ.get("DATABASE_URL") or ports.local_database_url()
    name = f"ml_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rpartition('/')[0]}/{name}"
    print(f"pHash threshold {thr}; {args.queries} look-ups timed with the index, "
          f"{args.scan_queries} with the scan; times per new image, ms")
    print("| stored images | scan p50 | scan mean | index p50 | index p99 | index mean | "
          "scan / index (mean) | insert p50 | rows found per look-up | load s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        db.migrate(url)
        loaded = 0
        with db.connect(url) as conn:
            for size in sorted(args.sizes):
                t0 = time.perf_counter()
                load(conn, loaded, size, planted, rng)
                loaded = size
                conn.autocommit = True
                conn.execute("VACUUM ANALYZE images")
                conn.autocommit = False
                load_s = time.perf_counter() - t0
                m = measure(conn, queries, thr, args.scan_queries)
                print(f"| {size:,} | {m['scan_p50']:.2f} | {m['scan_mean']:.2f} | "
                      f"{m['idx_p50']:.2f} | {m['idx_p99']:.2f} | {m['idx_mean']:.2f} | "
                      f"{m['scan_mean'] / m['idx_mean']:.0f}x | {m['ins_p50']:.2f} | "
                      f"{m['found']:.1f} | {load_s:.0f} |", flush=True)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
