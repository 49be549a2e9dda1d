"""A takedown racing an in-flight embedding, against the real services: the embedding worker's
own code (its consumer's handle(), as the consumer loop calls it) with the real Triton server,
the real mining service over gRPC, the two real search shards and root of the `cluster`
fixture, Postgres and the broker.

The race is made deterministic with a Postgres lock, not sleeps: the test holds a SHARE lock
on `image_embeddings`, so the worker, having claimed the image's row, read its blob and had
Triton embed it, stops at the vector's INSERT, its transaction open. The takedown is then
issued and must wait for that transaction (the worker's row lock); the lock is released and
both finish. The late EmbeddingReady the worker wrote is published only after the shards
applied the takedown, so the embedding lands after the delete, and must not resurrect it.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import numpy as np
import psycopg
from magiclens.v1 import events_pb2, mining_pb2, mining_pb2_grpc

from runtime import auth, db, rpc
from runtime.blobstore import open_blobstore
from runtime.bus import Event
from runtime.config import load_settings
from runtime.outbox import OutboxRelay
from runtime.topics import EMBEDDINGS_READY, IMAGES_DELETED
from services.embedding.config import WorkerSettings
from services.embedding.worker import Worker
from tests.serving import test_serving_search as search_tests
from tests.support.processes import free_port, start, stop, wait_for, wait_grpc

# The search tests' module fixtures (a pool of real photos, 2 shards + root over it).
corpus = search_tests.corpus
cluster = search_tests.cluster
_search = search_tests._search
_shard_hits = search_tests._shard_hits

SRC = 33  # the pool photo whose pixels the raced image carries


def _waiting(url: str, query_prefix: str) -> list[dict]:
    """Backends blocked on a lock while running a statement that starts with `query_prefix`,
    with the pids that block them."""
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT pid, pg_blocking_pids(pid) AS blockers FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND query LIKE %s", (query_prefix + "%",)
        ).fetchall()


def _processed_by_shards(url: str, index: str, event_id: str) -> int:
    """How many of the cluster's shard consumers have applied the event."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM processed_events WHERE consumer LIKE %s AND event_id = %s",
            (f"search-shard-{index}-%", event_id)).fetchone()[0]


def _outbox_event(url: str, topic: str, key: int) -> dict | None:
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT event_id::text AS event_id, published_at FROM outbox WHERE topic = %s "
            "AND msg_key = %s ORDER BY id DESC LIMIT 1", (topic, str(key))).fetchone()


def test_a_takedown_racing_an_in_flight_embedding_never_lets_the_image_back(
        cluster, corpus, triton, tmp_path):
    imgs, _ = corpus
    url = cluster.database_url
    tag = uuid.uuid4().hex[:8]
    blobs = open_blobstore(cluster.blob_uri)
    # Its own bytes (the photo plus a unique trailer after the PNG's end): its own blob.
    uri = blobs.put(imgs[SRC] + tag.encode(), ".png")
    with db.transaction(url) as conn:
        image_id = conn.execute(
            "INSERT INTO images (content_hash, source_url, first_page_id, blob_uri) VALUES "
            "(%s, %s, %s, %s) RETURNING image_id",
            (os.urandom(16).hex(), f"https://serving-test.example/race-{tag}", cluster.page_id,
             uri)).fetchone()["image_id"]
    settings = load_settings(
        WorkerSettings, database_url=url, kafka_bootstrap_servers=cluster.bootstrap,
        triton_url=triton.url, current_model_file=triton.current, data_dir=tmp_path,
        blob_uri=cluster.blob_uri, reconcile_interval_s=3600, embed_batch=1,
        embedding_group=f"test-race-{tag}", embedding_images_topic=f"test.race.{tag}.mined",
        embedding_models_topic=f"test.race.{tag}.models")
    consumer = Worker(settings).consumer()
    port = free_port()
    log = tmp_path / "mining.log"
    mining = start("services.mining", log=log, env=dict(
        cluster.env_base, MAGICLENS_MINING_PAGES_TOPIC=f"test.race.{tag}",
        MAGICLENS_MINING_GROUP=f"test-race-{tag}", MAGICLENS_GRPC_PORT=str(port),
        MAGICLENS_METRICS_PORT="0", MAGICLENS_MINING_WORKER_ID=f"race-{tag}",
        # its own topic only, as in the cluster: the worker's EmbeddingReady waits for the test
        MAGICLENS_OUTBOX_TOPICS=IMAGES_DELETED.name))
    outcome: dict[str, object] = {}
    hold = psycopg.connect(url)
    try:
        wait_grpc(port, proc=mining, log=log)
        stub = mining_pb2_grpc.MiningServiceStub(rpc.channel(f"127.0.0.1:{port}",
                                                             role=auth.ADMIN))
        hold.execute("LOCK TABLE image_embeddings IN SHARE MODE")  # writers wait; readers not

        def embed() -> None:
            outcome["embedded"] = consumer.handle(Event(
                settings.embedding_images_topic, str(image_id), str(uuid.uuid4()),
                events_pb2.ImageMined(image_id=image_id), partition=0, offset=0))

        def take_down() -> None:
            outcome["takedown"] = stub.DeleteContent(mining_pb2.DeleteContentRequest(
                image_id=image_id, reason="race"), timeout=120)

        worker_thread = threading.Thread(target=embed, daemon=True)
        worker_thread.start()
        # The worker has claimed the row, read the blob and had Triton embed it: it waits to
        # write the vector, its transaction (and the image's row lock) open.
        worker = wait_for(lambda: _waiting(url, "INSERT INTO image_embeddings"), 120,
                          "the worker to reach its vector write")[0]
        takedown_thread = threading.Thread(target=take_down, daemon=True)
        takedown_thread.start()
        # The takedown is in flight and waits for the in-flight embedding's transaction.
        blocked = wait_for(lambda: [w for w in _waiting(url, "UPDATE images SET status")
                                    if worker["pid"] in w["blockers"]], 30,
                           "the takedown to wait for the worker's transaction")
        assert blocked, "the takedown did not wait for the in-flight embedding"
        hold.rollback()
        worker_thread.join(120)
        takedown_thread.join(120)
        assert not worker_thread.is_alive() and not takedown_thread.is_alive()
        assert outcome["embedded"] is True
        assert list(outcome["takedown"].image_ids) == [image_id]

        with db.transaction(url) as conn:
            row = conn.execute("SELECT status, blob_uri FROM images WHERE image_id = %s",
                               (image_id,)).fetchone()
            stored = conn.execute("SELECT embedding FROM image_embeddings WHERE image_id = %s "
                                  "AND model_version = 'serving-a'", (image_id,)).fetchone()
        assert row == {"status": "deleted", "blob_uri": None}
        assert not blobs.exists(uri)
        assert stored is not None  # the embedding did land (before the delete, which waited)
        vec = np.frombuffer(stored["embedding"], "<f4")

        # The shards apply the takedown's event...
        deleted = _outbox_event(url, IMAGES_DELETED.name, image_id)
        assert deleted is not None
        wait_for(lambda: _processed_by_shards(url, cluster.index, deleted["event_id"]) >= 2, 60,
                 "both shards to apply the ImageDeleted event")
        assert image_id not in _shard_hits(cluster, vec, k=20)
        # ... and then the embedding's EmbeddingReady lands: it must not bring the image back.
        ready = _outbox_event(url, EMBEDDINGS_READY.name, image_id)
        assert ready is not None and ready["published_at"] is None
        relay = OutboxRelay(url, cluster.bootstrap, topics=[EMBEDDINGS_READY.name])
        try:
            with db.connect(url) as conn:
                wait_for(lambda: relay.publish_batch(conn) or _outbox_event(
                    url, EMBEDDINGS_READY.name, image_id)["published_at"], 60,
                    "the late EmbeddingReady to be published")
        finally:
            relay.stop()
            relay.drop_producer()
        wait_for(lambda: _processed_by_shards(url, cluster.index, ready["event_id"]) >= 2, 60,
                 "both shards to apply the late EmbeddingReady")
        # Watched across more than two of the shards' Postgres syncs (every 2 s): never back.
        t_end = time.monotonic() + 5
        while time.monotonic() < t_end:
            assert image_id not in _shard_hits(cluster, vec, k=20)
            r = _search(cluster, query={"image_bytes": imgs[SRC]}, k=20, include_query_image=True)
            assert image_id not in [h.image_id for h in r.hits]
    finally:
        hold.close()  # never left holding the table: the session's other tests write to it
        code = stop(mining)
    assert code == 0
