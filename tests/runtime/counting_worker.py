"""A real consumer process for the runtime's crash tests (uses the production Consumer).

Each event with key K marks pending job K done and adds 1 to counts[K]; redelivered events
must not add again, and reconciliation finishes jobs whose events were lost.
Usage: python -m tests.runtime.counting_worker TOPIC TABLE GROUP [SLEEP_S]
"""

from __future__ import annotations

import signal
import sys
import time

import psycopg
from magiclens.v1 import events_pb2

from runtime.bus import Consumer, ConsumerOptions, Event
from runtime.config import BaseServiceSettings, load_settings
from runtime.topics import Topic


def make_consumer(topic_name: str, table: str, group: str, database_url: str, bootstrap: str,
                  sleep_s: float = 0.0) -> Consumer:
    topic = Topic(topic_name, "url", events_pb2.PageDiscovered, ("test",), ("test",), 2)

    def handler(conn, event: Event) -> None:
        # Idempotent by state, as every real handler is: only a pending job takes effect.
        row = conn.execute(f"UPDATE {table}_jobs SET done = true WHERE k = %s AND NOT done "
                           "RETURNING k", (event.key,)).fetchone()
        if row is None:
            return
        conn.execute(f"INSERT INTO {table} (k, n) VALUES (%s, 1) ON CONFLICT (k) "
                     f"DO UPDATE SET n = {table}.n + 1", (event.key,))
        if sleep_s:
            time.sleep(sleep_s)

    def reconciler():
        with psycopg.connect(database_url) as conn:
            keys = [r[0] for r in conn.execute(f"SELECT k FROM {table}_jobs WHERE NOT done")]
        for k in keys:
            yield Event(topic_name, k, "", events_pb2.PageDiscovered(url=k))

    return Consumer(f"test-{table}", bootstrap, database_url, [topic], handler, group_id=group,
                    reconciler=reconciler, reconcile_interval_s=2.0,
                    options=ConsumerOptions(retry_backoff_s=0.05))


def main() -> None:
    topic_name, table, group = sys.argv[1:4]
    sleep_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    settings = load_settings(BaseServiceSettings)
    consumer = make_consumer(topic_name, table, group, settings.database_url,
                             settings.kafka_bootstrap_servers, sleep_s)
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    consumer.run()


if __name__ == "__main__":
    main()
