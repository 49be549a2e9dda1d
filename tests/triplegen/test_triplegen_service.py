"""End to end: PairsMined on Kafka -> triples in Postgres, through the real service process.

Real Postgres (a fresh database per test module), real Tansu, real images in a file blob
store, the real backbone. Covers redelivery, a SIGKILL in the middle of a page, restart with
reconciliation, gRPC (stats, get, regenerate) and the JSONL export the trainer reads.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest
from magiclens.v1 import events_pb2, triplegen_pb2, triplegen_pb2_grpc
from PIL import Image, ImageOps

from runtime import db, rpc
from runtime.blobstore import FileBlobStore
from runtime.bus import make_producer, publish
from runtime.topics import PAIRS_MINED
from tests.support.processes import ROOT, free_port, kill, start, stop, wait_for, wait_log
from trainer.data.triples import JsonlTriples

SKIMAGE = Path(__import__("skimage").__file__).parent / "data"


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").resize((160, 120)).save(buf, "PNG")
    return buf.getvalue()


def _recompressed(im: Image.Image) -> Image.Image:
    """A near-duplicate: the same picture, shifted by a few pixels and JPEG-recompressed."""
    buf = io.BytesIO()
    ImageOps.crop(im.convert("RGB"), 4).save(buf, "JPEG", quality=60)
    return Image.open(io.BytesIO(buf.getvalue()))


def add_page(url: str, blobs: FileBlobStore, title: str,
             images: list[tuple[str, Image.Image, str, str]]) -> tuple[int, list[int]]:
    """Insert a mined page with its images and all ordered pairs (status 'mined')."""
    with db.transaction(url) as conn:
        purl = f"http://test.invalid/{uuid.uuid4().hex}.html"
        page_id = conn.execute(
            "INSERT INTO pages (url, url_hash, domain, title, status) VALUES "
            "(%s, %s, 'test.invalid', %s, 'mined') RETURNING page_id",
            (purl, hashlib.sha256(purl.encode()).hexdigest(), title)).fetchone()["page_id"]
        ids = []
        for pos, (name, im, alt, caption) in enumerate(images):
            data = _png(im)
            uri = blobs.put(data, ".png")
            iid = conn.execute(
                "INSERT INTO images (content_hash, source_url, first_page_id, blob_uri, "
                "mime_type, width, height, alt_text, caption, page_title) VALUES "
                "(%s, %s, %s, %s, 'image/png', 160, 120, %s, %s, %s) RETURNING image_id",
                (hashlib.sha256(data).hexdigest() + uuid.uuid4().hex,
                 f"http://test.invalid/img/{name}.png", page_id, uri, alt, caption, title)
            ).fetchone()["image_id"]
            conn.execute("INSERT INTO page_images (page_id, image_id, position, src_url, "
                         "alt_text, caption) VALUES (%s, %s, %s, %s, %s, %s)",
                         (page_id, iid, pos, f"img/{name}.png", alt, caption))
            ids.append(iid)
        pair_ids = [conn.execute(
            "INSERT INTO pairs (page_id, query_image_id, target_image_id) VALUES (%s, %s, %s) "
            "RETURNING pair_id", (page_id, a, b)).fetchone()["pair_id"]
            for a in ids for b in ids if a != b]
    return page_id, pair_ids


def start_service(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`python -m services.triplegen serve`, once it says it started."""
    proc = start("services.triplegen", "serve", env=env, log=log)
    wait_log(log, '"service started"', 90, proc=proc)
    return proc


def q(url: str, sql: str, *args):
    with db.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def wait_done(url: str, page_id: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not q(url, "SELECT 1 FROM pairs WHERE page_id = %s AND status IN ('mined', 'kept')",
                 page_id):
            return
        time.sleep(0.3)
    raise AssertionError(f"page {page_id} not processed: "
                         f"{q(url, 'SELECT status, count(*) FROM pairs GROUP BY 1')}")


def test_pairs_mined_to_triples_redelivery_crash_and_grpc(infra_servers, fresh_db, tmp_path,
                                                          unique):
    blobs = FileBlobStore(tmp_path / "blobs")
    port = free_port()
    env = infra_servers.env(
        DATABASE_URL=fresh_db, MAGICLENS_DATA_DIR=str(tmp_path),
        MAGICLENS_BLOB_URI=f"file://{tmp_path / 'blobs'}", MAGICLENS_GRPC_PORT=str(port),
        MAGICLENS_METRICS_PORT="0", MAGICLENS_TRIPLEGEN_CONSUMER_GROUP=f"tg-test-{unique}",
        MAGICLENS_RECONCILE_INTERVAL_S="3600",
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                 "/tmp/magiclens-jax-cache"))
    log = tmp_path / "svc.log"
    chelsea = Image.open(SKIMAGE / "chelsea.png")
    svc = start_service(env, log)
    try:
        # Page A arrives after the start-up reconciliation: only Kafka can deliver it.
        page_a, pairs_a = add_page(fresh_db, blobs, "Photo gallery: the cat and friends", [
            ("chelsea", chelsea, "Chelsea the cat", "A tabby cat resting"),
            ("chelsea-copy", _recompressed(chelsea), "Chelsea the cat, mirrored",
             "The same tabby cat, reposted"),
            ("coffee", Image.open(SKIMAGE / "coffee.png"), "Cup of coffee",
             "A red cup of espresso"),
            ("astronaut", Image.open(SKIMAGE / "astronaut.png"), "Astronaut portrait",
             "A photo of an astronaut"),
        ])
        producer = make_producer(infra_servers.kafka_bootstrap)
        eid = str(uuid.uuid4())
        msg = events_pb2.PairsMined(page_id=page_a, pair_ids=pairs_a)
        publish(producer, PAIRS_MINED, str(page_a), msg, event_id=eid)
        wait_done(fresh_db, page_a)
        status = {r["status_reason"]: r["n"] for r in q(
            fresh_db, "SELECT status_reason, count(*) AS n FROM pairs WHERE page_id = %s "
                      "GROUP BY 1", page_a)}
        mirror = q(fresh_db, "SELECT pr.status, pr.status_reason, similarity FROM pairs pr JOIN "
                             "images "
                             "i ON i.image_id = pr.target_image_id WHERE pr.page_id = %s AND "
                             "i.alt_text = 'Chelsea the cat, mirrored' AND pr.query_image_id = "
                             "(SELECT image_id FROM images WHERE alt_text = 'Chelsea the cat')",
                   page_a)[0]
        assert mirror["status"] == "dropped" and mirror["status_reason"] == "near_duplicate", \
            (mirror, status)
        triples_a = q(fresh_db, "SELECT * FROM triples t JOIN pairs p USING (pair_id) "
                                "WHERE p.page_id = %s", page_a)
        tripled = q(fresh_db, "SELECT pair_id FROM pairs WHERE page_id = %s AND "
                              "status = 'tripled'", page_a)
        assert len(tripled) >= 6 and len(triples_a) >= len(tripled)
        anns = q(fresh_db, "SELECT labels, embedding_dim, labels_text FROM image_annotations")
        assert len(anns) == 4 and all(a["embedding_dim"] == 1280 for a in anns)
        assert any("cat" in a["labels_text"] for a in anns)

        # Redelivery: the same event id, then a fresh id for the same page: no new effect.
        # Both go to the page's partition in this order, so once the fresh id is recorded as
        # processed (in the handler's own transaction) the service has handled both.
        publish(producer, PAIRS_MINED, str(page_a), msg, event_id=eid)
        fresh_eid = publish(producer, PAIRS_MINED, str(page_a), msg, event_id=str(uuid.uuid4()))
        wait_for(lambda: q(fresh_db, "SELECT 1 FROM processed_events WHERE event_id = %s",
                           fresh_eid), 60, "the service to handle the redelivered page",
                 proc=svc, log=log)
        assert len(q(fresh_db, "SELECT 1 FROM triples")) == len(triples_a)

        # Crash mid-page: SIGKILL while the handler holds page B's pairs.
        page_b, pairs_b = add_page(fresh_db, blobs, "Famous machines of Testland", [
            ("rocket", Image.open(SKIMAGE / "rocket.jpg"), "Rocket on the launch pad",
             "A rocket built in 1969"),
            ("motorcycle", Image.open(SKIMAGE / "motorcycle_left.png"), "Motorcycle",
             "A motorcycle built in 2005"),
            ("camera", Image.open(SKIMAGE / "camera.png"), "Cameraman", "A black and white "
             "photo of a cameraman"),
        ])
        publish(producer, PAIRS_MINED, str(page_b), events_pb2.PairsMined(
            page_id=page_b, pair_ids=pairs_b))
        held = False
        end = time.monotonic() + 60
        with db.connect(fresh_db) as conn:
            while time.monotonic() < end and not held:
                try:
                    with conn.transaction():
                        conn.execute("SELECT 1 FROM pairs WHERE page_id = %s FOR UPDATE NOWAIT",
                                     (page_b,))
                except psycopg.errors.LockNotAvailable:
                    held = True
                    break
                time.sleep(0.02)
        assert held, "the service never started on page B"
        kill(svc)
        rows = q(fresh_db, "SELECT status FROM pairs WHERE page_id = %s", page_b)
        assert {r["status"] for r in rows} == {"mined"}  # nothing half-done was committed
        assert not q(fresh_db, "SELECT 1 FROM triples t JOIN pairs p USING (pair_id) "
                               "WHERE p.page_id = %s", page_b)

        svc = start_service(env | {"MAGICLENS_RECONCILE_INTERVAL_S": "2"}, log)
        wait_done(fresh_db, page_b)
        per_pair = q(fresh_db, "SELECT pair_id, count(*) AS n FROM triples GROUP BY 1")
        assert all(1 <= r["n"] <= 2 for r in per_pair)
        n_triples = len(q(fresh_db, "SELECT 1 FROM triples"))
        events = q(fresh_db, "SELECT count(*) AS n FROM outbox WHERE topic = %s",
                   "magiclens.triples.created.v1")[0]["n"]
        assert events == n_triples  # one TripleCreated per triple, committed with it
        assert not q(fresh_db, "SELECT 1 FROM pairs WHERE status IN ('mined', 'kept')")

        # gRPC: stats, one triple, regeneration of page A (same writer version: no new rows).
        with rpc.channel(f"127.0.0.1:{port}") as ch:
            stub = triplegen_pb2_grpc.TripleGenServiceStub(ch)
            stats = stub.GetTripleStats(triplegen_pb2.GetTripleStatsRequest(), timeout=10)
            assert stats.triples == n_triples and 0 < stats.keep_rate < 1
            assert stats.dropped_by_reason["near_duplicate"] >= 2
            tid = q(fresh_db, "SELECT min(triple_id) AS t FROM triples")[0]["t"]
            one = stub.GetTriple(triplegen_pb2.GetTripleRequest(triple_id=tid), timeout=10)
            assert one.instruction and one.writer == "metadata"
            with pytest.raises(grpc.RpcError) as err:
                stub.GetTriple(triplegen_pb2.GetTripleRequest(triple_id=10**12), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            page_url = q(fresh_db, "SELECT url FROM pages WHERE page_id = %s", page_a)[0]["url"]
            resp = stub.RegenerateTriples(triplegen_pb2.RegenerateTriplesRequest(
                page_url=page_url, writer="metadata"), timeout=10)
            assert resp.pairs_queued == len(tripled)
        wait_done(fresh_db, page_a, timeout=60)
        assert len(q(fresh_db, "SELECT 1 FROM triples")) == n_triples

        out = tmp_path / "triples.jsonl"
        subprocess.run([sys.executable, "-m", "services.triplegen", "export", "--out", str(out)],
                       cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
        loaded = JsonlTriples(out)
        assert len(loaded) == n_triples
        first = next(iter(loaded))
        assert Path(first.query_image).exists() and Path(first.target_image).exists()
    finally:
        stop(svc)
