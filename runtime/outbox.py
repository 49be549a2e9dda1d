"""Transactional outbox: state changes and their events commit in one transaction.

`enqueue(conn, topic, key, message)` inserts the event beside the caller's own writes; the
relay publishes unpublished rows in id order, waits for the broker's acks, then stamps them.
A relay killed between publish and stamp republishes on restart: delivery is at-least-once
and consumers dedupe by event id. Every service runs one beside its own work
(runtime/service.py); `python -m services.outbox_relay` runs relays on their own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence

import psycopg
from google.protobuf.message import Message
from kafka import KafkaProducer
from kafka import errors as kafka_errors
from kafka.errors import KafkaTimeoutError

from runtime import db, metrics, tracing
from runtime.bus import Throttle, ensure_topics, make_headers, make_producer
from runtime.config import BaseServiceSettings
from runtime.topics import ALL_TOPICS, Topic

log = logging.getLogger(__name__)


def enqueue(conn: psycopg.Connection, topic: Topic, key: str | int, message: Message,
            event_id: str | None = None) -> str:
    """Add an event to the outbox inside the caller's transaction; returns its event id."""
    if not isinstance(message, topic.message):
        raise TypeError(f"{topic.name} carries {topic.message_type}, "
                        f"not {message.DESCRIPTOR.full_name}")
    eid = event_id or str(uuid.uuid4())
    conn.execute(
        "INSERT INTO outbox (event_id, topic, msg_key, msg_type, payload, traceparent) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
        (eid, topic.name, str(key), topic.message_type, message.SerializeToString(),
         tracing.traceparent() or None))
    conn.execute("NOTIFY magiclens_outbox")
    return eid


# Errors the broker gives for a record's own sake: the row is at fault, not the broker.
_RECORD_FAULTS: tuple[type[Exception], ...] = (
    kafka_errors.MessageSizeTooLargeError, kafka_errors.InvalidTopicError,
    kafka_errors.TopicAuthorizationFailedError, kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidRecordError, kafka_errors.CorruptRecordError,
    ValueError, TypeError, AssertionError)


def _record_fault(exc: BaseException) -> bool:
    return isinstance(exc, _RECORD_FAULTS)


class BrokerFault(Exception):
    """Publishing failed for the broker's sake (down, restarted, timed out): nothing is
    counted against the rows; the producer is recreated and the batch tried again."""


class OutboxRelay:
    """Publishes outbox rows to Kafka; safe to run several (rows are claimed with SKIP LOCKED,
    so each row is published by one relay at a time).

    Nothing stops it but stop() (issue 14): a broker fault recreates the producer (a producer
    from before a broker restart is never reused) and re-checks the topics; a database outage
    reconnects; a row the broker refuses for its own sake counts an attempt and is parked
    after `max_attempts`, so it cannot block the rows behind it. Every `prune_interval_s` it
    deletes published rows and processed-event ids older than their retention.
    """

    def __init__(self, database_url: str, bootstrap: str, batch_size: int = 500,
                 idle_poll_s: float = 0.2, *, max_attempts: int = 5,
                 send_timeout_s: float = 10.0, outbox_retention_s: float = 7 * 86400.0,
                 processed_retention_s: float = 7 * 86400.0,
                 prune_interval_s: float = 600.0, topics: Sequence[str] = ()) -> None:
        """`topics`: publish only rows of these topics (a service's own, what its Kafka user
        may write; other rows wait for their own service's relay); empty: every row."""
        self.topics = [t for t in topics if t]
        self.database_url = database_url
        self.bootstrap = bootstrap
        self.batch_size = batch_size
        self.idle_poll_s = idle_poll_s
        self.max_attempts = max_attempts
        self.send_timeout_s = send_timeout_s
        self.outbox_retention_s = outbox_retention_s
        self.processed_retention_s = processed_retention_s
        self.prune_interval_s = prune_interval_s
        self.stop_event = threading.Event()
        self.published = 0
        self.parked = 0  # rows given up on (failed_at set)
        self.producer_restarts = 0
        self.pruned = 0
        self._producer: KafkaProducer | None = None
        self._log = Throttle(30.0)
        self._sample_due = metrics.Every(metrics.SAMPLE_INTERVAL_S)
        self._sampled_topics: set[str] = set()

    def stop(self) -> None:
        self.stop_event.set()

    def _ensure_producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = make_producer(self.bootstrap, "magiclens-outbox-relay",
                                           timeout_s=self.send_timeout_s)
        return self._producer

    def drop_producer(self) -> None:
        """Discard the producer without waiting; a close() that raises is only logged (a
        producer from before a broker restart raised here once and stopped services)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:
                log.debug("closing the producer failed", extra={"error": repr(exc)[:300]})

    def publish_batch(self, conn: psycopg.Connection) -> int:
        """Publish one batch; a row is stamped only after its send was acknowledged.

        Returns the number of rows handled (published or counted as failed). Raises
        BrokerFault after stamping what did get through when the broker failed the rest."""
        producer = self._ensure_producer()
        broker_error: BaseException | None = None
        with conn.transaction():
            rows = conn.execute(
                "SELECT id, event_id, topic, msg_key, msg_type, payload, traceparent FROM outbox "
                "WHERE published_at IS NULL AND failed_at IS NULL "
                "AND (cardinality(%s::text[]) = 0 OR topic = ANY(%s::text[])) ORDER BY id "
                "LIMIT %s FOR UPDATE SKIP LOCKED",
                (self.topics, self.topics, self.batch_size)).fetchall()
            if not rows:
                return 0
            futures = []
            refused: dict[int, str] = {}
            for row in rows:
                try:
                    futures.append((row, producer.send(
                        row["topic"], key=row["msg_key"].encode(),
                        value=bytes(row["payload"]),
                        headers=make_headers(str(row["event_id"]), row["msg_type"],
                                             row["traceparent"]))))
                except Exception as exc:
                    if not _record_fault(exc):
                        broker_error = exc
                        break
                    refused[row["id"]] = f"{type(exc).__name__}: {exc}"
            try:
                producer.flush(timeout=self.send_timeout_s)
            except Exception as exc:
                broker_error = broker_error or exc
            done = []
            for row, fut in futures:
                if not fut.is_done:
                    broker_error = broker_error or KafkaTimeoutError("send not acknowledged")
                elif fut.succeeded():
                    done.append(row["id"])
                elif _record_fault(fut.exception):
                    refused[row["id"]] = f"{type(fut.exception).__name__}: {fut.exception}"
                else:
                    broker_error = broker_error or fut.exception
            if done:
                conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY(%s)",
                             (done,))
                by_topic = {row["id"]: row["topic"] for row, _ in futures}
                for row_id in done:
                    metrics.OUTBOX_PUBLISHED.labels(by_topic[row_id]).inc()
            for row_id, error in refused.items():
                parked = conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = %s, "
                    "failed_at = CASE WHEN attempts + 1 >= %s THEN now() END "
                    "WHERE id = %s RETURNING failed_at IS NOT NULL AS parked",
                    (error[:2000], self.max_attempts, row_id)).fetchone()["parked"]
                log.warning("outbox row refused by the broker", extra={
                    "id": row_id, "error": error[:300], "parked": parked})
                self.parked += int(parked)
        self.published += len(done)
        if broker_error is not None:
            raise BrokerFault(f"{type(broker_error).__name__}: {broker_error}")
        return len(done) + len(refused)

    def prune(self, conn: psycopg.Connection, chunk: int = 5000) -> int:
        """Delete published rows and processed-event ids past their retention (in chunks,
        so no long lock); the number deleted."""
        total = 0
        for sql, keep in (
                ("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at < "
                 "now() - make_interval(secs => %s) LIMIT %s)", self.outbox_retention_s),
                ("DELETE FROM processed_events WHERE ctid IN (SELECT ctid FROM "
                 "processed_events WHERE processed_at < now() - make_interval(secs => %s) "
                 "LIMIT %s)", self.processed_retention_s)):
            while not self.stop_event.is_set():
                with conn.transaction():
                    n = conn.execute(sql, (keep, chunk)).rowcount
                total += n
                if n < chunk:
                    break
        self.pruned += total
        if total:
            log.info("pruned outbox and processed events", extra={"rows": total})
        return total

    def sample_backlog(self, conn: psycopg.Connection) -> dict[str, dict[str, float]]:
        """Set the backlog gauges of this relay's topics (when it relays all: the suite's
        topics and any with rows; 0 when none wait): unpublished rows, the oldest one's age,
        parked rows. One aggregate query of unpublished rows, every SAMPLE_INTERVAL_S."""
        with conn.transaction():
            rows = conn.execute(
                "SELECT topic, count(*) FILTER (WHERE failed_at IS NULL) AS backlog, "
                "count(*) FILTER (WHERE failed_at IS NOT NULL) AS parked, "
                "coalesce(extract(epoch FROM now() - min(created_at) FILTER "
                "(WHERE failed_at IS NULL)), 0)::float8 AS age "
                "FROM outbox WHERE published_at IS NULL "
                "AND (cardinality(%s::text[]) = 0 OR topic = ANY(%s::text[])) GROUP BY topic",
                (self.topics, self.topics)).fetchall()
        found = {r["topic"]: {"backlog": float(r["backlog"]), "parked": float(r["parked"]),
                              "age": float(r["age"])} for r in rows}
        mine = set(self.topics) or {t.name for t in ALL_TOPICS}
        for topic in mine | self._sampled_topics | set(found):
            got = found.get(topic, {"backlog": 0.0, "parked": 0.0, "age": 0.0})
            metrics.OUTBOX_BACKLOG.labels(topic).set(got["backlog"])
            metrics.OUTBOX_PARKED.labels(topic).set(got["parked"])
            metrics.OUTBOX_OLDEST_AGE.labels(topic).set(got["age"])
        self._sampled_topics |= set(found)
        return found

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        backoff = 0.0
        next_prune = time.monotonic() + min(60.0, self.prune_interval_s)
        while not self.stop_event.is_set():
            try:
                if conn is None or conn.closed:
                    conn = db.connect(self.database_url)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.prune_interval_s
                    self.prune(conn)
                if self._sample_due.due():
                    self.sample_backlog(conn)
                if self.publish_batch(conn) == 0:
                    self.stop_event.wait(self.idle_poll_s)
                backoff = 0.0
            except Exception as exc:
                backoff = min(max(0.5, backoff * 2), 5.0)
                outage = db.is_outage(exc, conn)
                if self._log.due():
                    log.warning("outbox relay retrying", extra={
                        "error": f"{type(exc).__name__}: {exc}"[:300], "retry_in_s": backoff,
                        "cause": "database" if outage else "broker"})
                if outage:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    conn = None
                else:
                    # A broker fault (or anything unexpected): never reuse this producer.
                    self.drop_producer()
                    self.producer_restarts += 1
                    with contextlib.suppress(Exception):
                        ensure_topics(self.bootstrap)  # a memory broker restarts empty
                self.stop_event.wait(backoff)
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception as exc:
                log.warning("closing the producer failed", extra={"error": repr(exc)[:300]})
            self._producer = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def check_dependencies(settings: BaseServiceSettings) -> None:
    """Fail fast, with one line, when Postgres or the broker cannot be reached at start."""
    db.connect(settings.database_url).close()
    producer = make_producer(settings.kafka_bootstrap_servers)
    with contextlib.suppress(Exception):  # the check succeeded; a failed close is not a fault
        producer.close(timeout=2)
