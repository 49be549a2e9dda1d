"""Blue/green rebuild of a real search shard process (real ScaNN, PostgreSQL, gRPC).

While clients query the shard, a new model version is promoted. The shard must keep
answering from the old index (old version, old vectors) while the new version does not yet
cover its partition and while the new index is being built, then swap atomically: from then
on every answer carries the new version and reflects the new vectors, and the snapshot it
wrote at the switch restores the new version after a SIGKILL.

The two versions give every image a different vector (version B's vector of image i is
version A's vector of image i + N/2), so an answer's ids tell which index produced it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime

import grpc
import numpy as np
import pytest
from magiclens.v1 import search_pb2, search_pb2_grpc

from runtime import db
from runtime.serving import set_serving_version
from services.search.index import ShardIndex
from tests.support.processes import ROOT, free_port, kill, start, stop, wait_for, wait_grpc

N, D, K, QUERIES, THREADS = 4000, 128, 10, 64, 4
A, B = "bluegreen-a", "bluegreen-b"


def _clustered(n: int, d: int, rng) -> np.ndarray:
    """Tight clusters of K consecutive rows: a query near a row has that cluster as top-K."""
    centers = rng.standard_normal((n // K, d), dtype=np.float32)
    x = np.repeat(centers, K, axis=0) + 0.3 * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recall(got: list[int], want: set[int]) -> float:
    return len(set(got) & want) / len(want)


def _log_records(path, msg: str) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("msg") == msg:
                rec["t"] = datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=UTC).timestamp()
                out.append(rec)
    return out


def _insert_embeddings(url: str, version: str, rows: list[tuple[int, np.ndarray]]) -> None:
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO image_embeddings (image_id, model_version, embedding) "
                        "VALUES (%s, %s, %s)",
                        [(i, version, v.astype("<f4").tobytes()) for i, v in rows])


@pytest.fixture
def pool(fresh_db):
    """N live images in a private database with version-A embeddings; A is serving."""
    rng = np.random.default_rng(7)
    vec_a = _clustered(N, D, rng)
    vec_b = np.roll(vec_a, -(N // 2), axis=0)  # B's vector of row i is A's vector of i + N/2
    with db.transaction(fresh_db) as conn, conn.cursor() as cur:
        for v in (A, B):
            cur.execute("INSERT INTO model_versions (model_version, config_name, status) "
                        "VALUES (%s, 'compact', 'published')", (v,))
        # Live images have bytes in the blob store (the shard never reads them).
        cur.executemany("INSERT INTO images (content_hash, source_url, blob_uri) "
                        "VALUES (%s, %s, %s)",
                        [(f"bluegreen-{i}", f"https://bluegreen.example/{i}",
                          f"file:///blobs/bluegreen-{i}") for i in range(N)])
        ids = np.array([r["image_id"] for r in cur.execute(
            "SELECT image_id FROM images WHERE content_hash LIKE %s ORDER BY image_id",
            ("bluegreen-%",)).fetchall()], np.int64)
        set_serving_version(conn, A, "file:///a")
    _insert_embeddings(fresh_db, A, list(zip(ids.tolist(), vec_a, strict=True)))
    qi = rng.choice(N, QUERIES, replace=False)
    queries = vec_a[qi] + 0.01 * rng.standard_normal((QUERIES, D), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = {v: [set(ids[np.argsort(-(vecs @ q))[:K]].tolist()) for q in queries]
             for v, vecs in ((A, vec_a), (B, vec_b))}
    overlap = np.mean([_recall(list(a), b) for a, b in zip(truth[A], truth[B], strict=True)])
    assert overlap < 0.1, overlap  # the two versions' answers are told apart by their ids
    return ids, vec_b, queries, truth


def test_bluegreen_rebuild_serves_old_index_until_swap_then_new(
        infra_servers, fresh_db, pool, tmp_path):
    ids, vec_b, queries, truth = pool
    tag = os.urandom(4).hex()
    port = free_port()
    log = tmp_path / "shard.log"
    env = infra_servers.env(
        DATABASE_URL=fresh_db, MAGICLENS_DATA_DIR=str(tmp_path), MAGICLENS_GRPC_PORT=str(port),
        # a ScaNN tree (the slow build), searching every leaf so that each answer is exact
        # enough to tell which version's vectors produced it
        MAGICLENS_BRUTE_THRESHOLD="1000", MAGICLENS_LEAVES_FRAC="1",
        MAGICLENS_VERSION_CHECK_S="0.2", MAGICLENS_SYNC_INTERVAL_S="2",
        MAGICLENS_LOG_LEVEL="INFO", PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}")
    args = ["services.search.shard", "--index", tag, "--num-shards", "1", "--shard", "0"]
    proc = start(*args, env=env, log=log)
    answers: list[tuple[float, float, str, list[int], int]] = []  # t0, t1, version, ids, query
    errors: list[str] = []
    halt = threading.Event()
    try:
        ch = wait_grpc(port, proc=proc, log=log)
        stub = search_pb2_grpc.ShardServiceStub(ch)

        def status():
            return stub.GetShardStatus(search_pb2.GetShardStatusRequest(), timeout=5)

        st = status()
        assert (st.model_version, st.num_vectors) == (A, N)

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not halt.is_set():
                q = int(rng.integers(QUERIES))
                req = search_pb2.SearchShardRequest(query=queries[q].tolist(), k=K)
                t0 = time.time()
                try:
                    r = stub.SearchShard(req, timeout=5)
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code()}: {exc.details()}")
                    continue
                answers.append((t0, time.time(), r.model_version,
                                [h.image_id for h in r.hits], q))

        clients = [threading.Thread(target=client, args=(s,)) for s in range(THREADS)]
        for t in clients:
            t.start()

        def answered_since(t: float, n: int = 20) -> bool:
            assert not errors, errors[:5]
            return len([a for a in answers if a[0] >= t]) >= n

        wait_for(lambda: answered_since(0), 60, "the clients to get answers", interval=0.05)
        # Promote B while it covers only half the partition: the shard must notice the new
        # version, and keep serving A (the old index) until B covers the partition.
        half = N // 2
        _insert_embeddings(fresh_db, B, list(zip(ids[:half].tolist(), vec_b[:half],
                                                 strict=True)))
        with db.transaction(fresh_db) as conn:
            set_serving_version(conn, B, "file:///b")
        wait_for(lambda: status().next_model_version == B, 30, "the shard to see version B",
                 interval=0.05)
        t_noticed = time.time()
        # several version checks (every 0.2 s) at 50% coverage, and answers meanwhile
        wait_for(lambda: time.time() > t_noticed + 1.5 and answered_since(t_noticed), 60,
                 "answers while B covers half the partition", interval=0.05)
        t_complete = time.time()
        _insert_embeddings(fresh_db, B, list(zip(ids[half:].tolist(), vec_b[half:],
                                                 strict=True)))
        wait_for(lambda: status().model_version == B, 120, "the swap to version B",
                 interval=0.05)
        t_swapped = time.time()
        wait_for(lambda: answered_since(t_swapped), 60, "answers after the swap", interval=0.05)
        halt.set()
        for t in clients:
            t.join()

        assert not errors, errors[:5]
        built = [r for r in _log_records(log, "built index") if r["version"] == B]
        assert len(built) == 1, built
        build_end = built[0]["t"]
        build_start = build_end - built[0]["seconds"]
        # not built before B covered the partition: the one B index holds every vector
        assert built[0]["vectors"] == N, built
        # Each answer is self-consistent: the version it carries is the index it came from.
        for t0, _, version, got, q in answers:
            assert version in (A, B), version
            assert len(got) == K and _recall(got, truth[version][q]) >= 0.9, (
                version, t0, _recall(got, truth[A][q]), _recall(got, truth[B][q]))
        old = [a for a in answers if a[2] == A]
        new = [a for a in answers if a[2] == B]
        # Promoted but not covered: old version, old results, many of them.
        waiting = [a for a in answers if t_noticed <= a[0] and a[1] <= t_complete]
        assert waiting and all(a[2] == A for a in waiting), len(waiting)
        # While the new index was being built the old one kept answering.
        during = [a for a in answers if build_start <= a[0] and a[1] <= build_end]
        assert during and all(a[2] == A for a in during), (len(during), built[0]["seconds"])
        # One switch: nothing old answers a query sent after the first new answer returned.
        first_new = min(a[1] for a in new)
        assert not [a for a in old if a[0] > first_new]
        assert first_new > build_start  # no new answer before B's index was being built
        after = [a for a in answers if a[0] > t_swapped]
        assert after and all(a[2] == B for a in after)

        # The snapshot written at the switch holds B (read before any shutdown could write).
        wait_for(lambda: _log_records(log, "swapped to new model version"), 30, "the swap log",
                 interval=0.05)
        snap = ShardIndex.restore(tmp_path / "index" / tag / "shard-0-of-1" / "current")
        assert snap is not None and (snap.model_version, len(snap)) == (B, N)
        # ...and a shard killed without a chance to snapshot again restores B from it.
        kill(proc)
        proc = start(*args, env=env, log=log)
        ch = wait_grpc(port, proc=proc, log=log)
        stub = search_pb2_grpc.ShardServiceStub(ch)
        restored = _log_records(log, "restored snapshot")
        assert restored and restored[-1]["version"] == B, restored
        assert len([r for r in _log_records(log, "built index") if r["version"] == B]) == 1
        for q in range(5):
            r = stub.SearchShard(search_pb2.SearchShardRequest(query=queries[q].tolist(), k=K),
                                 timeout=10)
            assert r.model_version == B
            assert _recall([h.image_id for h in r.hits], truth[B][q]) >= 0.9
    finally:
        halt.set()
        stop(proc)
