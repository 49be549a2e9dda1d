"""Outage vs bad data, against the real Postgres and broker: a value too large for a btree
index is the event's fault (dead-lettered after its retries, later events go on); a dropped
connection and a database stopped for longer than the group's poll interval are waited out
(nothing dead-lettered, the eviction's failed commit recovered in place)."""

from __future__ import annotations

import random
import time

import psycopg
from kafka import KafkaProducer
from magiclens.v1 import events_pb2

from runtime.bus import Consumer, ConsumerOptions, encode, ensure_topics
from tests.faults.fault_support import (
    Running,
    count_once,
    counting_table,
    counts,
    dead_letters,
    page_topic,
)


def _send(bootstrap: str, topic: str, keys: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for k in keys:
        value, headers = encode(events_pb2.PageDiscovered(url=k))
        producer.send(topic, key=b"one", value=value, headers=headers, partition=0).get(10)
    producer.close()


def test_a_value_too_large_for_an_index_is_dead_lettered_not_waited_for(infra_servers, fresh_db,
                                                                        unique):
    url, bootstrap = fresh_db, infra_servers.kafka_bootstrap
    topic = page_topic(f"test.faults.idx.{unique}")
    ensure_topics(bootstrap, [topic])
    table = f"t_{unique}"
    counting_table(url, table)  # k is a btree primary key: rows over ~2.7 kB are refused
    rng = random.Random(14)  # incompressible (Postgres compresses index rows first)
    big = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(2100))  # 6,300 bytes

    def handler(conn, event):
        count_once(conn, table, event.message.url)

    consumer = Consumer(f"idx-{unique}", bootstrap, url, [topic], handler,
                        group_id=f"g-{unique}", options=ConsumerOptions(retry_backoff_s=0.1))
    with Running(consumer) as run:
        _send(bootstrap, topic.name, ["a", big, "b"])
        run.wait(lambda: counts(url, table) == {"a": 1, "b": 1}, 60,
                 "the events after the oversized one")
        letters = dead_letters(url, consumer.name)
        assert run.alive()
    assert len(letters) == 1 and "ProgramLimitExceeded" in letters[0]["error"], letters


def test_a_dropped_connection_is_waited_out_not_counted(infra_servers, fresh_db, unique):
    url, bootstrap = fresh_db, infra_servers.kafka_bootstrap
    topic = page_topic(f"test.faults.drop.{unique}")
    ensure_topics(bootstrap, [topic])
    table = f"t_{unique}"
    counting_table(url, table)
    dropped = []

    def handler(conn, event):
        if event.message.url == "drop" and not dropped:
            dropped.append(1)
            # the server ends this session (SQLSTATE 57P01) in the middle of the handler
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        count_once(conn, table, event.message.url)

    # One attempt only: were the outage counted against the event, it would be dead-lettered.
    consumer = Consumer(f"drop-{unique}", bootstrap, url, [topic], handler,
                        group_id=f"g-{unique}", options=ConsumerOptions(max_attempts=1))
    with Running(consumer) as run:
        _send(bootstrap, topic.name, ["a", "drop", "b"])
        run.wait(lambda: counts(url, table) == {"a": 1, "drop": 1, "b": 1}, 60,
                 "every event, the one whose connection dropped included")
    assert dropped and dead_letters(url, consumer.name) == []


def test_a_long_outage_that_evicts_the_consumer_is_recovered_in_place(private_postgres,
                                                                       infra_servers, unique):
    """Postgres stopped for longer than max_poll_interval: the group evicts the member that
    waits out the outage; its commit then fails, and it rejoins instead of dying (mining died
    this way 2 s after an 11-minute outage ended)."""
    url, bootstrap = private_postgres.url, infra_servers.kafka_bootstrap
    topic = page_topic(f"test.faults.outage.{unique}", partitions=1)
    ensure_topics(bootstrap, [topic])
    table = f"t_{unique}"
    counting_table(url, table)

    def handler(conn, event):
        count_once(conn, table, event.message.url)

    opts = ConsumerOptions(max_attempts=1, max_poll_interval_ms=7000)
    consumer = Consumer(f"outage-{unique}", bootstrap, url, [topic], handler,
                        group_id=f"g-{unique}", options=opts)
    with Running(consumer) as run:
        _send(bootstrap, topic.name, ["a"])
        run.wait(lambda: counts(url, table) == {"a": 1}, 60, "the first event")
        private_postgres.stop()
        _send(bootstrap, topic.name, ["b", "c"])
        time.sleep(12)  # longer than max_poll_interval: the group drops the waiting member
        private_postgres.start()
        run.wait(lambda: counts(url, table) == {"a": 1, "b": 1, "c": 1}, 90,
                 "the events sent during the outage")
        _send(bootstrap, topic.name, ["d"])
        run.wait(lambda: counts(url, table).get("d") == 1, 60, "an event after the outage")
        assert run.alive()
    assert counts(url, table) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert dead_letters(url, consumer.name) == []
    assert consumer.commit_failures >= 1, "the eviction was not exercised"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM processed_events WHERE consumer = %s",
                            (consumer.name,)).fetchone()[0] == 4
