"""Transactional outbox: state changes and their events commit in one transaction.

`enqueue(conn, topic, key, message)` inserts the event beside the caller's own writes; the
relay publishes unpublished rows in id order, waits for the broker's acks, then stamps them.
A relay killed between publish and stamp republishes on restart: delivery is at-least-once
and consumers dedupe by event id. Every service runs one beside its own work
(runtime/service.py); `python -m services.outbox_relay` runs relays on their own.
"""

from __future__ import annotations

import logging
import threading
import uuid

import psycopg
from google.protobuf.message import Message
from kafka import KafkaProducer
from kafka.errors import KafkaError

from runtime import db
from runtime.bus import make_headers, make_producer
from runtime.config import BaseServiceSettings
from runtime.errors import UnavailableError
from runtime.topics import Topic

log = logging.getLogger(__name__)


def enqueue(conn: psycopg.Connection, topic: Topic, key: str | int, message: Message,
            event_id: str | None = None) -> str:
    """Add an event to the outbox inside the caller's transaction; returns its event id."""
    if not isinstance(message, topic.message):
        raise TypeError(f"{topic.name} carries {topic.message_type}, "
                        f"not {message.DESCRIPTOR.full_name}")
    eid = event_id or str(uuid.uuid4())
    conn.execute(
        "INSERT INTO outbox (event_id, topic, msg_key, msg_type, payload) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
        (eid, topic.name, str(key), topic.message_type, message.SerializeToString()))
    conn.execute("NOTIFY magiclens_outbox")
    return eid


class OutboxRelay:
    """Publishes outbox rows to Kafka; safe to run several (rows are claimed with SKIP LOCKED)."""

    def __init__(self, database_url: str, bootstrap: str, batch_size: int = 500,
                 idle_poll_s: float = 0.2) -> None:
        self.database_url = database_url
        self.bootstrap = bootstrap
        self.batch_size = batch_size
        self.idle_poll_s = idle_poll_s
        self.stop_event = threading.Event()
        self.published = 0
        self._producer: KafkaProducer | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def publish_batch(self, conn: psycopg.Connection) -> int:
        """Publish one batch; rows are stamped only after every send was acknowledged."""
        if self._producer is None:
            self._producer = make_producer(self.bootstrap, "magiclens-outbox-relay")
        with conn.transaction():
            rows = conn.execute(
                "SELECT id, event_id, topic, msg_key, msg_type, payload FROM outbox "
                "WHERE published_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (self.batch_size,)).fetchall()
            if not rows:
                return 0
            futures = []
            for row in rows:
                headers = make_headers(str(row["event_id"]), row["msg_type"])
                futures.append(self._producer.send(
                    row["topic"], key=row["msg_key"].encode(), value=bytes(row["payload"]),
                    headers=headers))
            self._producer.flush(timeout=30)
            for fut in futures:
                fut.get(timeout=30)  # raises if any send failed: nothing is stamped
            conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY(%s)",
                         ([r["id"] for r in rows],))
        self.published += len(rows)
        return len(rows)

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self.stop_event.is_set():
            try:
                if conn is None or conn.closed:
                    conn = db.connect(self.database_url)
                if self.publish_batch(conn) == 0:
                    self.stop_event.wait(self.idle_poll_s)
            except (psycopg.OperationalError, UnavailableError, KafkaError, OSError) as exc:
                log.warning("outbox relay retrying", extra={"error": f"{type(exc).__name__}: "
                                                                     f"{exc}"})
                if conn is not None and not conn.closed:
                    conn.close()
                conn = None
                if self._producer is not None:
                    self._producer.close(timeout=1)
                    self._producer = None
                self.stop_event.wait(1.0)
        if self._producer is not None:
            self._producer.close(timeout=5)
        if conn is not None:
            conn.close()


def check_dependencies(settings: BaseServiceSettings) -> None:
    """Fail fast, with one line, when Postgres or the broker cannot be reached at start."""
    db.connect(settings.database_url).close()
    make_producer(settings.kafka_bootstrap_servers).close(timeout=2)
