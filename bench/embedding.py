"""Embedding throughput.

Default mode: images/s through the Triton server (gRPC, bytes in) vs the same model
in-process (decode + preprocess + jitted encode), per batch size; ratio = serving overhead.

    python bench/embedding.py --triton-url 127.0.0.1:8001 --checkpoint DIR [--batches 1 4 16]

`--worker`: re-embedding throughput of the embedding worker (its reconcile pass: Postgres ->
blob store -> Triton -> image_embeddings + outbox) on one pool, one image per Triton request
vs the worker's default batch, in the same run; ratio = what batching buys.

    python bench/embedding.py --worker --triton-url 127.0.0.1:8001 [--pool 96] [--rounds 2]

The worker mode needs PostgreSQL (DATABASE_URL, default the local infra) and creates and drops
its own database; it embeds with whatever version the server serves. Start the server first
(task serving:triton -- --checkpoint DIR).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import skimage.data
from PIL import Image

from runtime import db, ports
from runtime.blobstore import open_blobstore
from runtime.config import load_settings
from runtime.embedding_client import EmbeddingClient
from runtime.serving import set_serving_version
from services.embedding.config import WorkerSettings
from services.embedding.worker import Worker


def images(n: int) -> list[bytes]:
    base = Image.fromarray(skimage.data.astronaut())
    out = []
    for i in range(n):
        buf = io.BytesIO()
        base.rotate(i * 3).resize((320, 320)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rate(fn, batch: list[bytes], seconds: float) -> float:
    fn(batch)  # warm (compile / connect)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def serving_overhead(args) -> None:
    # JAX loads only for this mode; --worker measures Triton through the real worker.
    from services.embedding.model import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    client = EmbeddingClient(args.triton_url)
    print("| model | batch | Triton img/s | in-process img/s | in-process / Triton |")
    print("|---|---|---|---|---|")
    for b in args.batches:
        batch = images(b)
        instr = ["make it red"] * b
        for name, tri, loc in (
            ("target", lambda x: client.embed_targets(x), lambda x: model.encode_target(x)),
            ("query", lambda x, i=instr: client.embed_queries(x, i),
             lambda x, i=instr: model.encode_query(x, i)),
        ):
            t = rate(tri, batch, args.seconds)
            local = rate(loc, batch, args.seconds)
            print(f"| {name} | {b} | {t:.1f} | {local:.1f} | {local / t:.2f} |", flush=True)


def worker_throughput(args) -> None:

    client = EmbeddingClient(args.triton_url)
    pool = images(args.pool)
    version = client.embed_targets(pool[:1]).model_version
    default_batch = WorkerSettings.model_fields["embed_batch"].default
    admin = args.database_url or os.environ.get("DATABASE_URL") or ports.local_database_url()
    name = f"ml_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rpartition('/')[0]}/{name}"
    tmp = tempfile.TemporaryDirectory(prefix="bench-worker-")
    try:
        db.migrate(url)
        blob_uri = f"file://{tmp.name}/blobs"
        blobs = open_blobstore(blob_uri)
        with db.transaction(url) as conn:
            conn.execute("INSERT INTO model_versions (model_version, config_name, checkpoint_uri,"
                         " status) VALUES (%s, 'compact', 'file:///bench', 'promoted')",
                         (version,))
            set_serving_version(conn, version, "file:///bench")
            page = conn.execute("INSERT INTO pages (url, url_hash, domain, source, status) "
                                "VALUES ('https://bench.example/', 'bench', 'bench.example', "
                                "'bench', 'mined') RETURNING page_id").fetchone()["page_id"]
            for i, img in enumerate(pool):
                conn.execute("INSERT INTO images (content_hash, source_url, first_page_id, "
                             "blob_uri, mime_type) VALUES (%s, %s, %s, %s, 'image/jpeg')",
                             (f"bench-{i}", f"https://bench.example/{i}.jpg", page,
                              blobs.put(img, ".jpg")))
        for b in sorted({1, default_batch}):
            client.embed_targets(pool[:b])  # the server compiles each batch shape once
        print(f"pool: {len(pool)} images (320x320 JPEG), model version {version}, "
              f"Triton {args.triton_url}")
        print("| round | images per request | images | Triton requests | s | images/s |")
        print("|---|---|---|---|---|---|")
        rates: dict[int, list[float]] = {}
        for r in range(args.rounds):
            for b in (1, default_batch):
                with db.transaction(url) as conn:
                    conn.execute("DELETE FROM image_embeddings")
                    conn.execute("DELETE FROM outbox")
                settings = load_settings(
                    WorkerSettings, database_url=url, triton_url=args.triton_url,
                    embed_batch=b, blob_uri=blob_uri,
                    current_model_file=Path(tmp.name) / "current_model.json")
                worker = Worker(settings)
                consumer = worker.consumer()
                t0 = time.perf_counter()
                consumer.reconcile()
                dt = time.perf_counter() - t0
                worker.client.close()
                if worker.embedded != len(pool):
                    raise SystemExit(f"embedded {worker.embedded} of {len(pool)}")
                rates.setdefault(b, []).append(len(pool) / dt)
                print(f"| {r + 1} | {b} | {len(pool)} | {worker.requests} | {dt:.1f} | "
                      f"{len(pool) / dt:.1f} |", flush=True)
        one, many = (sum(rates[b]) / len(rates[b]) for b in (1, default_batch))
        print(f"\nmean images/s: batch 1 {one:.1f}, batch {default_batch} {many:.1f}; "
              f"ratio {many / one:.2f}x")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--triton-url", default=ports.TRITON_ADDR)
    ap.add_argument("--checkpoint", help="the served checkpoint (serving-overhead mode)")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--worker", action="store_true",
                    help="re-embedding throughput of the worker: batch 1 vs its default")
    ap.add_argument("--pool", type=int, default=96, help="images in the pool (--worker)")
    ap.add_argument("--rounds", type=int, default=1, help="repeats of both runs (--worker)")
    ap.add_argument("--database-url", default="", help="server for the scratch database "
                    "(--worker; default DATABASE_URL or the local infra)")
    args = ap.parse_args()
    if args.worker:
        worker_throughput(args)
    elif not args.checkpoint:
        ap.error("--checkpoint is required (or --worker)")
    else:
        serving_overhead(args)


if __name__ == "__main__":
    main()
