"""A takedown made while the broker is down, against a private Tansu broker that the test
really stops and restarts (memory storage: every topic and message gone), the real mining
service and a real search shard on a private database: the delete commits its state and its
outbox row with no broker; once the broker is back, the shard drops the vector within
seconds, with no one stepping in.

The shard's Postgres sync is set to an hour, so the test sees the event path (the mining
service's outbox relay publishing after the restart, the shard's consumer recovering in
place), not the sync's repair (tests/serving/test_serving_search.py covers that one).
"""

from __future__ import annotations

import time

import numpy as np
import psycopg
from magiclens.v1 import mining_pb2, mining_pb2_grpc, search_pb2, search_pb2_grpc

from runtime import auth, db, rpc
from runtime.blobstore import open_blobstore
from runtime.serving import set_serving_version, vector_bytes
from runtime.topics import IMAGES_DELETED
from tests.support.processes import free_port, start, stop, wait_for, wait_grpc

VERSION = "takedown-faults"
N, DIM = 6, 32
BOUND_S = 60  # the relay's reconnect back-off and the consumer's rejoin, on a loaded machine


def _shard_hits(addr: str, vec: np.ndarray) -> set[int]:
    ch = rpc.channel(addr, role=auth.READ)
    try:
        r = search_pb2_grpc.ShardServiceStub(ch).SearchShard(
            search_pb2.SearchShardRequest(query=vec.tolist(), k=N), timeout=10)
    finally:
        ch.close()
    return {h.image_id for h in r.hits}


def _deleted_outbox_row(url: str, image_id: int) -> dict | None:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT published_at FROM outbox WHERE topic = %s AND msg_key = %s",
                            (IMAGES_DELETED.name, str(image_id))).fetchone()


def test_a_takedown_made_while_the_broker_is_down_reaches_the_shard_after_its_restart(
        private_broker, infra_servers, fresh_db, unique, tmp_path):
    url, bootstrap = fresh_db, private_broker.bootstrap
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((N, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    blobs = open_blobstore(f"file://{tmp_path / 'blobs'}")
    with db.transaction(url) as conn:
        conn.execute("INSERT INTO model_versions (model_version, config_name, checkpoint_uri, "
                     "status) VALUES (%s, 'compact', 'file:///unused', 'promoted')", (VERSION,))
        set_serving_version(conn, VERSION, "file:///unused")  # the shard reads vectors only
        page = conn.execute(
            "INSERT INTO pages (url, url_hash, domain, status) VALUES (%s, %s, %s, 'mined') "
            "RETURNING page_id", (f"https://{unique}.example/p", unique, f"{unique}.example")
        ).fetchone()["page_id"]
        ids, uris = [], []
        for i in range(N):
            uris.append(blobs.put(f"{unique}-{i}".encode(), ".png"))
            ids.append(conn.execute(
                "INSERT INTO images (content_hash, source_url, first_page_id, blob_uri) "
                "VALUES (%s, %s, %s, %s) RETURNING image_id",
                (f"{unique}-{i}", f"https://{unique}.example/{i}.png", page, uris[-1])
            ).fetchone()["image_id"])
            conn.execute("INSERT INTO image_embeddings (image_id, model_version, embedding) "
                         "VALUES (%s, %s, %s)", (ids[-1], VERSION, vector_bytes(vecs[i])))
    env = infra_servers.env(DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                            MAGICLENS_DATA_DIR=str(tmp_path), MAGICLENS_METRICS_PORT="0",
                            MAGICLENS_BLOB_URI=f"file://{tmp_path / 'blobs'}",
                            MAGICLENS_SYNC_INTERVAL_S="3600", MAGICLENS_LOG_LEVEL="INFO")
    shard_port, mining_port = free_port(), free_port()
    shard_log, mining_log = tmp_path / "shard.log", tmp_path / "mining.log"
    shard = start("services.search.shard", "--index", unique, "--num-shards", "1",
                  "--shard", "0", env=dict(env, MAGICLENS_GRPC_PORT=str(shard_port)),
                  log=shard_log)
    mining = start("services.mining", log=mining_log, env=dict(
        env, MAGICLENS_GRPC_PORT=str(mining_port), MAGICLENS_MINING_WORKER_ID=unique,
        MAGICLENS_MINING_PAGES_TOPIC=f"test.takedown.{unique}",
        MAGICLENS_MINING_GROUP=f"test-takedown-{unique}"))
    addr = f"127.0.0.1:{shard_port}"
    victim = ids[2]
    try:
        wait_grpc(shard_port, proc=shard, log=shard_log)
        wait_grpc(mining_port, proc=mining, log=mining_log)
        wait_for(lambda: victim in _shard_hits(addr, vecs[2]), 60,
                 "the shard to index the images", proc=shard, log=shard_log)

        private_broker.stop()
        stub = mining_pb2_grpc.MiningServiceStub(rpc.channel(f"127.0.0.1:{mining_port}",
                                                             role=auth.ADMIN))
        r = stub.DeleteContent(mining_pb2.DeleteContentRequest(image_id=victim,
                                                               reason="broker down"), timeout=60)
        assert list(r.image_ids) == [victim]
        # Committed with no broker: the state and the event's outbox row, not yet published.
        row = _deleted_outbox_row(url, victim)
        assert row is not None and row["published_at"] is None
        assert victim in _shard_hits(addr, vecs[2])  # nothing has reached the shard yet

        private_broker.start()
        t0 = time.monotonic()
        wait_for(lambda: victim not in _shard_hits(addr, vecs[2]), BOUND_S,
                 "the shard to drop the vector after the broker's restart",
                 proc=shard, log=shard_log)
        drop_s = time.monotonic() - t0
        assert _deleted_outbox_row(url, victim)["published_at"] is not None
        # It stays down, and the other images are untouched.
        for _ in range(10):
            assert victim not in _shard_hits(addr, vecs[2])
        assert all(i in _shard_hits(addr, vecs[n]) for n, i in enumerate(ids) if i != victim)
        assert mining.poll() is None and shard.poll() is None
    finally:
        codes = stop(mining), stop(shard)
    print(f"takedown applied by the shard {drop_s:.1f} s after the broker's restart")
    with db.transaction(url) as conn:
        status = conn.execute("SELECT status, blob_uri FROM images WHERE image_id = %s",
                              (victim,)).fetchone()
    assert status == {"status": "deleted", "blob_uri": None}
    assert not blobs.exists(uris[2])
    assert codes == (0, 0)
