"""At-least-once delivery with exactly-once effects, against the real Postgres and Tansu."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import psycopg
import pytest
from kafka import KafkaProducer
from magiclens.v1 import events_pb2

from runtime import db, outbox
from runtime.bus import Consumer, ensure_topics, make_producer, publish
from runtime.topics import Topic
from tests.runtime.counting_worker import make_consumer
from tests.support.consumers import committed_past, log_ends
from tests.support.processes import kill, start, stop, wait_for
from tools import infra


def _topic(name: str) -> Topic:
    return Topic(name, "url", events_pb2.PageDiscovered, ("test",), ("test",), 2,
                 accepts_json=True)


def _make_tables(url: str, table: str, keys: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, n INT NOT NULL)")
        conn.execute(f"CREATE TABLE {table}_jobs (k TEXT PRIMARY KEY, done BOOL NOT NULL)")
        with conn.cursor() as cur, cur.copy(f"COPY {table}_jobs (k, done) FROM STDIN") as cp:
            for k in keys:
                cp.write_row((k, False))


def _counts(url: str, table: str) -> tuple[dict[str, int], int]:
    with psycopg.connect(url) as conn:
        counts = dict(conn.execute(f"SELECT k, n FROM {table}").fetchall())
        pending = conn.execute(f"SELECT count(*) FROM {table}_jobs WHERE NOT done").fetchone()[0]
    return counts, pending


def _run_consumer_until(consumer: Consumer, predicate, timeout: float) -> None:
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_for(predicate, timeout, "consumer to finish the work")
    finally:
        consumer.stop()
        thread.join(30)


def test_outbox_relay_sigkilled_mid_batch_delivers_everything_once(infra_servers, unique):
    url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic, table = _topic(f"test.outbox.{unique}"), f"t_outbox_{unique}"
    ensure_topics(bootstrap, [topic])
    keys = [f"https://example.org/{unique}/{i}" for i in range(3000)]
    _make_tables(url, table, keys)
    with db.transaction(url) as conn:
        for k in keys:
            outbox.enqueue(conn, topic, k, events_pb2.PageDiscovered(url=k))

    def relay() -> subprocess.Popen:
        return start("services.outbox_relay", env=infra_servers.env(MAGICLENS_OUTBOX_BATCH="10"))

    def unpublished() -> int:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT count(*) FROM outbox WHERE topic = %s AND "
                                "published_at IS NULL", (topic.name,)).fetchone()[0]

    proc = relay()
    deadline = time.monotonic() + 60
    while unpublished() == 3000:  # kill as soon as the first batch is acknowledged
        assert time.monotonic() < deadline, "the relay published nothing"
        time.sleep(0.005)
    kill(proc)
    left = unpublished()
    assert 0 < left < 3000, "the relay must have been killed mid-way"
    proc = relay()
    try:
        wait_for(lambda: unpublished() == 0, 90, "the restarted relay to publish the rest")
    finally:
        stop(proc, 20)
    consumer = make_consumer(topic.name, table, f"g-{unique}", url, bootstrap)
    consumer.reconciler = None  # prove delivery through Kafka alone
    _run_consumer_until(consumer, lambda: _counts(url, table)[1] == 0, 120)
    counts, pending = _counts(url, table)
    assert pending == 0
    assert len(counts) == 3000 and set(counts.values()) == {1}


def test_redelivered_and_duplicated_events_are_ignored(infra_servers, unique):
    url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic, table = _topic(f"test.dup.{unique}"), f"t_dup_{unique}"
    ensure_topics(bootstrap, [topic])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, n INT NOT NULL)")

    def handler(conn, event) -> None:  # deliberately NOT idempotent by state
        conn.execute(f"INSERT INTO {table} (k, n) VALUES (%s, 1) ON CONFLICT (k) "
                     f"DO UPDATE SET n = {table}.n + 1", (event.key,))

    producer = make_producer(bootstrap)
    eid = str(uuid.uuid4())
    for _ in range(3):  # a producer retrying the same event
        publish(producer, topic, "a", events_pb2.PageDiscovered(url="a"), event_id=eid)
    publish(producer, topic, "b", events_pb2.PageDiscovered(url="b"))
    raw = KafkaProducer(bootstrap_servers=bootstrap)  # a foreign producer sending JSON twice
    for _ in range(2):
        raw.send(topic.name, key=b"c", value=json.dumps({"url": "c"}).encode()).get(10)
    raw.send(topic.name, key=b"d", value=b"{not json").get(10)  # poison: dead-lettered
    raw.close()
    producer.close()

    consumer = Consumer(f"test-dup-{unique}", bootstrap, url, [topic], handler,
                        group_id=f"g-{unique}")
    _run_consumer_until(consumer, lambda: consumer.processed >= 3 and _dead(url, consumer), 60)
    counts, _ = dict(psycopg.connect(url).execute(f"SELECT k, n FROM {table}").fetchall()), 0
    assert counts == {"a": 1, "b": 1, "c": 1}

    # The same consumer (same name, so the same processed_events) in a new group re-reads the
    # whole log: every record redelivered. It has had its chance at all of them once the new
    # group's committed offsets pass the last record of each partition: still no effect.
    ends = log_ends(bootstrap, topic.name, records=7)
    assert not committed_past(bootstrap, f"g2-{unique}", topic.name, ends)  # not before it ran
    again = Consumer(f"test-dup-{unique}", bootstrap, url, [topic], handler,
                     group_id=f"g2-{unique}")
    _run_consumer_until(
        again, lambda: committed_past(bootstrap, f"g2-{unique}", topic.name, ends), 60)
    assert dict(psycopg.connect(url).execute(f"SELECT k, n FROM {table}").fetchall()) == counts
    assert _dead(url, again)  # the poison record was seen again, and not dead-lettered twice


def _dead(url: str, consumer: Consumer) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM dead_letters WHERE consumer = %s",
                            (consumer.name,)).fetchone()[0] == 1


def test_reconciliation_finishes_work_after_broker_lost_every_message(infra_servers, unique):
    url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    if infra.external_kafka():
        pytest.skip("cannot restart an external broker")
    topic, table = _topic(f"test.restart.{unique}"), f"t_restart_{unique}"
    ensure_topics(bootstrap, [topic])
    keys = [f"job-{i}" for i in range(50)]
    _make_tables(url, table, keys)
    producer = make_producer(bootstrap)
    for k in keys:
        publish(producer, topic, k, events_pb2.PageDiscovered(url=k))
    producer.close()
    infra.restart_broker()  # memory storage: every message is gone
    ensure_topics(bootstrap, [topic])
    consumer = make_consumer(topic.name, table, f"g-{unique}", url, bootstrap)
    _run_consumer_until(consumer, lambda: _counts(url, table)[1] == 0, 60)
    counts, pending = _counts(url, table)
    assert pending == 0 and len(counts) == 50 and set(counts.values()) == {1}


def test_consumer_killed_mid_handler_loses_and_duplicates_nothing(infra_servers, unique):
    url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic, table = _topic(f"test.kill.{unique}"), f"t_kill_{unique}"
    ensure_topics(bootstrap, [topic])
    keys = [f"k{i}" for i in range(40)]
    _make_tables(url, table, keys)
    producer = make_producer(bootstrap)
    for k in keys:
        publish(producer, topic, k, events_pb2.PageDiscovered(url=k))
    producer.close()
    worker = ["tests.runtime.counting_worker", topic.name, table, f"g-{unique}"]
    env = infra_servers.env()
    proc = start(*worker, "0.3", env=env)
    wait_for(lambda: len(_counts(url, table)[0]) >= 3, 60, "some events handled")
    kill(proc)  # most likely inside a handler's 0.3 s sleep
    done_before = len(_counts(url, table)[0])
    assert done_before < 40
    proc = start(*worker, env=env)
    try:
        wait_for(lambda: _counts(url, table)[1] == 0, 90, "the restarted worker to finish")
    finally:
        stop(proc, 30)
    counts, _ = _counts(url, table)
    assert len(counts) == 40 and set(counts.values()) == {1}
