"""The embedding worker against real Postgres, the real Kafka broker (Tansu) and the real Triton
server: batched embedding, exactly-once effects under redelivery, rejection of only the bad
image of a batch, re-embedding on promotion, and a SIGKILL in the middle of a batch.

Most tests go through Kafka; the bad-image test calls the consumer's handle() directly with
a constructed event (its name says so). Topics and the consumer group are private to this
module; the database is fresh.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from kafka import KafkaAdminClient
from magiclens.v1 import events_pb2
from PIL import Image

from runtime import db
from runtime.blobstore import open_blobstore
from runtime.bus import Event, ensure_topics, make_producer, publish
from runtime.config import load_settings
from runtime.embedding_client import EmbeddingClient
from runtime.serving import serving_version, set_serving_version
from services.embedding.config import WorkerSettings
from services.embedding.current import read_current
from services.embedding.worker import Worker
from tests.serving.serving_support import PHOTOS, photo, png
from tests.support.processes import ROOT, kill, start, stop, wait_for

DISCOVERED = datetime.now(UTC) - timedelta(minutes=5)


def _image(i: int) -> bytes:
    return png(photo(PHOTOS[i % len(PHOTOS)]).rotate(11 * i).resize((96, 96)))


@pytest.fixture(scope="module")
def env(infra_servers, fresh_db, triton, checkpoints, tmp_path_factory):
    d = tmp_path_factory.mktemp("embedding-worker")
    tag = uuid.uuid4().hex[:8]
    names = {"images": f"test.{tag}.images.mined", "models": f"test.{tag}.models.published",
             "ready": f"test.{tag}.embeddings.ready"}
    settings = load_settings(
        WorkerSettings, database_url=fresh_db,
        kafka_bootstrap_servers=infra_servers.kafka_bootstrap,
        triton_url=triton.url, current_model_file=triton.current, data_dir=d,
        blob_uri=f"file://{d / 'blobs'}", reconcile_interval_s=3600,
        embedding_group=f"test-embedding-worker-{tag}", embedding_images_topic=names["images"],
        embedding_models_topic=names["models"], embedding_ready_topic=names["ready"])
    worker = Worker(settings)
    ensure_topics(infra_servers.kafka_bootstrap, worker.topics)
    with db.transaction(fresh_db) as conn:
        page = conn.execute(
            "INSERT INTO pages (url, url_hash, domain, source, status, discovered_at) VALUES "
            "(%s, %s, 'worker-test.example', 'test', 'mined', %s) RETURNING page_id",
            (f"https://worker-test.example/{tag}", tag, DISCOVERED)).fetchone()["page_id"]

    class Env:
        pass

    e = Env()
    e.settings, e.worker, e.url, e.dir, e.page, e.names = settings, worker, fresh_db, d, page, names
    e.blobs = open_blobstore(settings.blob_root)
    e.triton, e.checkpoints, e.infra = triton, checkpoints, infra_servers
    e.producer = make_producer(infra_servers.kafka_bootstrap)
    yield e
    e.producer.close()


def _add_images(e, datas: list[bytes]) -> list[int]:
    ids = []
    with db.transaction(e.url) as conn:
        for data in datas:
            uri = e.blobs.put(data, ".png")
            ids.append(conn.execute(
                "INSERT INTO images (content_hash, source_url, first_page_id, blob_uri, mime_type)"
                " VALUES (%s, %s, %s, %s, 'image/png') RETURNING image_id",
                (uuid.uuid4().hex, f"https://worker-test.example/{uuid.uuid4().hex}.png", e.page,
                 uri)).fetchone()["image_id"])
    return ids


def _record_promotion(e, version: str) -> None:
    """What training's promotion leaves in Postgres: `version` the one promoted version,
    and the serving one."""
    uri = f"file://{e.checkpoints[version]}"
    with db.transaction(e.url) as conn:
        conn.execute("UPDATE model_versions SET status = 'published' WHERE status = 'promoted' "
                     "AND model_version <> %s", (version,))
        conn.execute("INSERT INTO model_versions (model_version, config_name, checkpoint_uri, "
                     "status) VALUES (%s, 'compact', %s, 'promoted') ON CONFLICT "
                     "(model_version) DO UPDATE SET status = 'promoted'", (version, uri))
        set_serving_version(conn, version, uri)


def _promote(e, version: str) -> None:
    """Make `version` the serving one: the promotion in Postgres, then its event handled."""
    _record_promotion(e, version)
    msg = events_pb2.ModelPublished(model_version=version, config_name="compact",
                                    checkpoint_uri=f"file://{e.checkpoints[version]}",
                                    promoted=True)
    with db.transaction(e.url) as conn:
        e.worker.on_model_published(conn, msg)


def _serve_default(e, version: str, timeout: float = 180) -> None:
    """Wait until Triton answers unpinned requests with `version`."""
    client = EmbeddingClient(e.triton.url)
    deadline = time.monotonic() + timeout
    while client.embed_targets([_image(0)]).model_version != version:
        assert time.monotonic() < deadline, f"Triton did not switch to {version}"
        time.sleep(0.5)
    client.close()


def _vectors(e, version: str, ids: list[int]) -> dict[int, np.ndarray]:
    with db.connect(e.url) as conn:
        rows = conn.execute("SELECT image_id, embedding FROM image_embeddings WHERE "
                            "model_version = %s AND image_id = ANY(%s)", (version, ids)).fetchall()
    return {r["image_id"]: np.frombuffer(bytes(r["embedding"]), "<f4") for r in rows}


def _ready_events(e, ids: list[int]) -> dict[int, list[events_pb2.EmbeddingReady]]:
    """EmbeddingReady events in the outbox, per image id."""
    with db.connect(e.url) as conn:
        rows = conn.execute("SELECT msg_key, payload FROM outbox WHERE topic = %s",
                            (e.names["ready"],)).fetchall()
    out: dict[int, list] = {i: [] for i in ids}
    for r in rows:
        if int(r["msg_key"]) in out:
            out[int(r["msg_key"])].append(events_pb2.EmbeddingReady.FromString(r["payload"]))
    return out


def _statuses(e, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    with db.connect(e.url) as conn:
        rows = conn.execute("SELECT image_id, status, status_reason FROM images "
                            "WHERE image_id = ANY(%s)", (ids,)).fetchall()
    return {r["image_id"]: (r["status"], r["status_reason"]) for r in rows}


@contextlib.contextmanager
def _running(e, reconcile_interval_s: float = 3600):
    """The worker's real consumer loop in a thread (Kafka + reconciler), stopped at exit."""
    e.worker.requests = e.worker.embedded = e.worker.rejected = e.worker.fallbacks = 0
    consumer = e.worker.consumer()
    consumer.reconcile_interval_s = reconcile_interval_s
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        t.join(60)
        assert not t.is_alive()


def _consumed_everything(e, sent: dict[int, int]) -> bool:
    """The group's committed offsets cover every record sent (partition -> last offset)."""
    admin = KafkaAdminClient(bootstrap_servers=e.infra.kafka_bootstrap)
    try:
        group = e.settings.embedding_group
        offsets = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    got = {tp.partition: om.offset for tp, om in offsets.items()
           if tp.topic == e.names["images"]}
    return all(got.get(p, -1) > last for p, last in sent.items())


def test_images_get_one_vector_and_one_event_each_even_when_events_are_redelivered(env):
    e = env
    datas = [_image(i) for i in range(20)]
    ids = _add_images(e, datas)
    msgs = {i: events_pb2.ImageMined(image_id=i, page_id=e.page) for i in ids}
    sent: dict[int, int] = {}

    def send(image_id: int, event_id: str) -> None:
        fut = e.producer.send(e.names["images"], key=str(image_id).encode(),
                              value=msgs[image_id].SerializeToString(),
                              headers=[("event-id", event_id.encode()),
                                       ("event-type", b"magiclens.v1.ImageMined"),
                                       ("content-type", b"application/x-protobuf")])
        meta = fut.get(timeout=15)
        sent[meta.partition] = max(sent.get(meta.partition, -1), meta.offset)

    with _running(e):
        _record_promotion(e, "serving-a")
        publish(e.producer, e.worker.models_topic, "serving-a", events_pb2.ModelPublished(
            model_version="serving-a", config_name="compact", promoted=True,
            checkpoint_uri=f"file://{e.checkpoints['serving-a']}"))
        wait_for(lambda: _serving(e) == "serving-a", 60, "the promotion")
        event_ids = {i: str(uuid.uuid4()) for i in ids}
        for i in ids:
            send(i, event_ids[i])
        for i in ids:  # redelivered (same event id) ...
            send(i, event_ids[i])
        for i in ids[::4]:  # ... and resent by a producer (a new event id)
            send(i, str(uuid.uuid4()))
        wait_for(lambda: len(_vectors(e, "serving-a", ids)) == len(ids), 180, "the vectors")
        wait_for(lambda: _consumed_everything(e, sent), 60, "every record to be consumed")
        requests = e.worker.requests
    assert requests <= len(ids) // 2, f"{requests} Triton requests for {len(ids)} images"
    vecs = _vectors(e, "serving-a", ids)
    ref = EmbeddingClient(e.triton.url).embed_targets(datas[::-1][:16], model_version="serving-a")
    for i, v in zip(ids[::-1][:16], ref.vectors, strict=True):  # each vector is its image's
        np.testing.assert_allclose(vecs[i], v, atol=1e-5, rtol=0)
    events = _ready_events(e, ids)
    assert {i: len(v) for i, v in events.items()} == {i: 1 for i in ids}
    for i, (ev,) in events.items():
        assert ev.model_version == "serving-a" and ev.image_id == i
        assert ev.page_discovered_at.ToDatetime(tzinfo=UTC) == DISCOVERED
    assert all(s == "mined" for s, _ in _statuses(e, ids).values())


def _serving(e) -> str | None:
    with db.connect(e.url) as conn:
        serving = serving_version(conn)
    return serving[0] if serving else None


def test_handle_called_directly_rejects_a_bad_image_and_embeds_the_rest_of_its_batch(env):
    """No Kafka here: the consumer's handle() gets a constructed ImageMined event, as the
    consumer loop would pass it; Postgres and Triton are real."""
    e = env
    _promote(e, "serving-a")
    tiny = Image.new("RGB", (4, 4), "red")  # decodes, but below the minimum side
    datas = [_image(i) for i in range(8)]
    datas[2], datas[5] = b"this is not an image" * 20, png(tiny)
    ids = _add_images(e, datas)
    e.worker.requests = e.worker.fallbacks = 0
    consumer = e.worker.consumer()
    event = Event(e.names["images"], str(ids[0]), str(uuid.uuid4()),
                  events_pb2.ImageMined(image_id=ids[0]), partition=0, offset=0)
    assert consumer.handle(event)  # one event: its image and the 7 after it, one batch
    assert e.worker.fallbacks == 1 and e.worker.requests == 1 + len(ids)
    status = _statuses(e, ids)
    bad = {ids[2], ids[5]}
    assert {i for i, (s, _) in status.items() if s == "rejected"} == bad
    assert status[ids[2]][1].startswith("embedding: cannot decode image")
    assert "each side must be" in status[ids[5]][1]
    assert set(_vectors(e, "serving-a", ids)) == set(ids) - bad
    assert {i: len(v) for i, v in _ready_events(e, ids).items()} == {
        i: int(i not in bad) for i in ids}
    # the same event again, and events for the images its batch embedded or rejected: no-ops
    assert not consumer.handle(event)
    before = e.worker.requests
    for i in ids[1:]:
        assert consumer.handle(Event(e.names["images"], str(i), str(uuid.uuid4()),
                                     events_pb2.ImageMined(image_id=i), partition=0, offset=1))
    assert e.worker.requests == before
    assert len(_vectors(e, "serving-a", ids)) == len(ids) - 2


def test_promoting_a_new_version_reembeds_the_pool_and_keeps_the_old_vectors(env):
    e = env
    _promote(e, "serving-a")
    _add_images(e, [_image(i) for i in range(30, 36)])
    e.worker.consumer().reconcile()  # everything live has a serving-a vector
    with db.connect(e.url) as conn:
        live = [r["image_id"] for r in conn.execute(
            "SELECT image_id FROM images WHERE status NOT IN ('rejected', 'deleted') "
            "ORDER BY image_id").fetchall()]
    old = _vectors(e, "serving-a", live)
    assert set(old) == set(live)
    try:
        with _running(e, reconcile_interval_s=1):
            # Triton loads serving-b only once the worker points it there: until then the
            # worker's requests for serving-b fail with "not loaded" and are waited out
            _record_promotion(e, "serving-b")
            publish(e.producer, e.worker.models_topic, "serving-b", events_pb2.ModelPublished(
                model_version="serving-b", config_name="compact", promoted=True,
                checkpoint_uri=f"file://{e.checkpoints['serving-b']}"))

            def reembedded() -> bool:
                rejected = [i for i, (s, _) in _statuses(e, live).items() if s != "mined"]
                assert not rejected, "images rejected while Triton was loading serving-b"
                return len(_vectors(e, "serving-b", live)) == len(live)

            wait_for(reembedded, 180, "the pool to be re-embedded with serving-b")
            requests = e.worker.requests
        assert read_current(e.triton.current)[0] == "serving-b"
        with db.connect(e.url) as conn:
            status = {r["model_version"]: r["status"] for r in conn.execute(
                "SELECT model_version, status FROM model_versions").fetchall()}
        assert status == {"serving-a": "published", "serving-b": "promoted"}
        assert requests < len(live)  # batched
        new = _vectors(e, "serving-b", live)
        # the old version's vectors are kept (the shards serve them until the new index is
        # built: blue/green), unchanged
        kept = _vectors(e, "serving-a", live)
        assert set(kept) == set(live)
        assert all(np.array_equal(kept[i], old[i]) for i in live)
        assert min(np.abs(new[i] - old[i]).max() for i in live) > 1e-4
        some = live[-4:]
        with db.connect(e.url) as conn:
            blobs = {r["image_id"]: e.blobs.get(r["blob_uri"]) for r in conn.execute(
                "SELECT image_id, blob_uri FROM images WHERE image_id = ANY(%s)",
                (some,)).fetchall()}
        ref = EmbeddingClient(e.triton.url).embed_targets([blobs[i] for i in some],
                                                          model_version="serving-b")
        for i, v in zip(some, ref.vectors, strict=True):
            np.testing.assert_allclose(new[i], v, atol=1e-5, rtol=0)
        events = _ready_events(e, live)
        assert all(sorted(ev.model_version for ev in evs).count("serving-b") == 1
                   for evs in events.values())
    finally:  # the session's Triton serves serving-a for the other modules
        _promote(e, "serving-a")
        _serve_default(e, "serving-a")


def test_a_forged_promotion_event_changes_nothing(env):
    """ModelPublished is a nudge: the worker serves what Postgres says, whatever checkpoint
    or version an event names (anyone able to write the topic could send one)."""
    e = env
    _promote(e, "serving-a")
    before = read_current(e.triton.current)
    forged = events_pb2.ModelPublished(model_version="evil", config_name="compact",
                                       checkpoint_uri="s3://attacker/evil.tar", promoted=True)
    with db.transaction(e.url) as conn:
        e.worker.on_model_published(conn, forged)
    assert read_current(e.triton.current) == before and before[0] == "serving-a"
    assert _serving(e) == "serving-a"
    with db.connect(e.url) as conn:
        assert conn.execute("SELECT 1 FROM model_versions WHERE model_version = 'evil'"
                            ).fetchone() is None


def _log_lines(log, message: str) -> list[dict]:
    """The JSON log records of `log` with this message."""
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"{message}"' in line:
            with contextlib.suppress(json.JSONDecodeError):  # a line still being written
                out.append(json.loads(line))
    return out


def test_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(env):
    e = env
    _promote(e, "serving-a")
    assert read_current(e.triton.current)[0] == "serving-a"
    ids = _add_images(e, [_image(i) for i in range(40, 88)])
    log = e.dir / "worker.log"
    penv = e.infra.env(
        DATABASE_URL=e.url, PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}", MAGICLENS_LOG_LEVEL="DEBUG",
        MAGICLENS_TRITON_URL=e.triton.url, MAGICLENS_CURRENT_MODEL_FILE=str(e.triton.current),
        MAGICLENS_DATA_DIR=str(e.dir), MAGICLENS_BLOB_URI=e.settings.blob_root,
        MAGICLENS_RECONCILE_INTERVAL_S="2", MAGICLENS_SHUTDOWN_GRACE_S="20",
        MAGICLENS_EMBEDDING_GROUP=e.settings.embedding_group,
        MAGICLENS_EMBEDDING_IMAGES_TOPIC=e.names["images"],
        MAGICLENS_EMBEDDING_MODELS_TOPIC=e.names["models"],
        MAGICLENS_EMBEDDING_READY_TOPIC=e.names["ready"])

    def start_worker() -> subprocess.Popen:
        return start("services.embedding.worker", env=penv, log=log)

    def batches() -> list[list[int]]:
        return [json.loads(r["image_ids"]) for r in _log_lines(log, "embedding batch")]

    proc = start_worker()
    try:
        # the second batch has started: the first one is committed, this one is in flight
        wait_for(lambda: len(batches()) >= 2 or proc.poll() is not None, 120, "two batches")
        kill(proc)
        in_flight = batches()[-1]
        done = _vectors(e, "serving-a", ids)
        assert 0 < len(done) < len(ids), log.read_text()[-3000:]
        assert not set(in_flight) & set(done), "the killed batch is all or nothing"
        proc = start_worker()
        wait_for(lambda: len(_vectors(e, "serving-a", ids)) == len(ids), 240, "the rest")
        # A stray second embedding would come from a later reconciliation pass: wait for two
        # more passes that found nothing pending (the second began after the first ended,
        # so after everything was embedded).
        idle = len(_log_lines(log, "reconciliation found nothing pending"))
        wait_for(lambda: len(_log_lines(log, "reconciliation found nothing pending")) >= idle + 2,
                 60, "two idle reconciliation passes", proc=proc, log=log)
        assert stop(proc, 60) == 0, log.read_text()[-3000:]
    finally:
        kill(proc)
    assert len(batches()) < len(ids)  # batched, across both runs
    events = _ready_events(e, ids)
    assert {i: len(v) for i, v in events.items()} == {i: 1 for i in ids}
    assert all(s == "mined" for s, _ in _statuses(e, ids).values())
    with db.connect(e.url) as conn:  # the relay published everything before it stopped
        left = conn.execute("SELECT count(*) AS n FROM outbox WHERE topic = %s AND "
                            "published_at IS NULL", (e.names["ready"],)).fetchone()["n"]
    assert left == 0

