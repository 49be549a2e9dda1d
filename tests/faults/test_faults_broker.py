"""Broker faults against a private Tansu broker: a restart (memory storage: every topic and
message gone) while the outbox relay and a consumer run; both recover in place, every outbox
row written after the restart is published and consumed exactly once."""

from __future__ import annotations

import time

import psycopg
from magiclens.v1 import events_pb2

from runtime import db, outbox
from runtime.bus import Consumer
from runtime.topics import PAGES_DISCOVERED
from tests.faults.fault_support import Running, count_once, counting_table, counts, dead_letters
from tests.support.processes import start, stop, wait_for


def _enqueue(url: str, keys: list[str]) -> None:
    with db.transaction(url) as conn:
        for k in keys:
            outbox.enqueue(conn, PAGES_DISCOVERED, k, events_pb2.PageDiscovered(url=k))


def _unpublished(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL"
                            ).fetchone()[0]


def test_a_broker_restart_is_recovered_in_place(private_broker, infra_servers, fresh_db, unique,
                                                tmp_path):
    url, bootstrap = fresh_db, private_broker.bootstrap
    table = f"t_{unique}"
    counting_table(url, table)
    log = tmp_path / "relay.log"
    relay = start("services.outbox_relay", log=log,
                  env=infra_servers.env(DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS=bootstrap))
    consumer = Consumer(f"pages-{unique}", bootstrap, url, [PAGES_DISCOVERED],
                        lambda conn, ev: count_once(conn, table, ev.message.url),
                        group_id=f"g-{unique}")
    before = [f"before-{i}" for i in range(5)]
    after = [f"after-{i}" for i in range(5)]
    try:
        with Running(consumer) as run:
            _enqueue(url, before)
            run.wait(lambda: counts(url, table) == dict.fromkeys(before, 1), 60,
                     "the events before the restart")
            private_broker.stop()
            private_broker.start()
            t0 = time.monotonic()
            _enqueue(url, after)
            wait_for(lambda: _unpublished(url) == 0, 60, "the relay to publish after the restart",
                     proc=relay, log=log)
            publish_s = time.monotonic() - t0
            run.wait(lambda: counts(url, table) == dict.fromkeys(before + after, 1), 90,
                     "the events after the restart to be consumed")
            assert run.alive()
        assert relay.poll() is None, "the relay stopped"
    finally:
        code = stop(relay)
    print(f"first publish after the broker restart: {publish_s:.1f} s")
    assert counts(url, table) == dict.fromkeys(before + after, 1)  # 0 lost, 0 duplicated
    assert dead_letters(url, consumer.name) == []
    assert code == 0
