"""The Kafka event bus: encoding, producing and at-least-once, idempotent consumption.

Why this shape:
- Postgres is the system of record; Kafka is transport (the embedded Tansu keeps messages
  in memory only). Consumers therefore make each event's effect idempotent: the effect and a
  `processed_events` row commit in one transaction, and the offset is committed afterwards.
  A crash between the two redelivers the event, which is then recognised and skipped.
- Tansu quirks (see ../shared/brief/platform.md) are honoured here once: no end offsets /
  `latest` (we always start from `earliest`), short session timeouts so joins take ~3 s, and
  a consumer never closes before its first assignment (a group can hang otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    CommitFailedError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from kafka.structs import OffsetAndMetadata

from runtime import db, kafka_limits, metrics, tracing  # noqa: F401 - kafka_limits caps decompression
from runtime.errors import ConfigError, UnavailableError
from runtime.limits import MAX_EVENT_BYTES, MAX_JSON_DEPTH
from runtime.topics import ALL_TOPICS, BY_NAME, Topic

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACEPARENT = "traceparent"  # W3C trace context header (runtime/tracing.py), when tracing is on
CE_SOURCE = "urn:magiclens"  # CloudEvents `source` of every event the suite produces
_EVENT_NS = uuid.UUID("6f1c1f0e-8a8e-4f43-9f7a-4d3b2c1a0e55")
# The UUID spellings Postgres and Python agree on (uuid.UUID alone also takes "+…", "1_2…",
# "uuid:…" anywhere, which Postgres refuses and which can make two different ids equal).
_UUID_RE = re.compile(r"(?:urn:uuid:)?(\{)?[0-9a-f]{8}(?:-?[0-9a-f]{4}){3}-?[0-9a-f]{12}(?(1)\})",
                      re.IGNORECASE)


@dataclass
class Event:
    """A decoded record, or a synthetic one produced by reconciliation."""

    topic: str
    key: str
    event_id: str
    message: Message
    partition: int = -1
    offset: int = -1
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.offset < 0


def encode(message: Message, event_id: str | None = None) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Serialise a protobuf event with the headers every consumer relies on."""
    headers = make_headers(event_id or str(uuid.uuid4()), message.DESCRIPTOR.full_name,
                           tracing.traceparent())
    return message.SerializeToString(), headers


def make_headers(event_id: str, message_type: str,
                 traceparent: str | None = None) -> list[tuple[str, bytes]]:
    """The headers of every event: CloudEvents 1.0 binary mode for Kafka (`ce_id`,
    `ce_type`, `ce_source`, `ce_specversion`, `content-type`), which consumers outside the
    project read with any CloudEvents SDK, and the suite's own `event-id`/`event-type` (kept
    for consumers of earlier releases); `traceparent` (W3C, when tracing is on) lets the
    consumer's span continue the producer's trace."""
    eid, etype = event_id.encode(), message_type.encode()
    headers = [("event-id", eid), ("event-type", etype), ("content-type", PROTOBUF.encode()),
               ("ce_specversion", b"1.0"), ("ce_id", eid), ("ce_type", etype),
               ("ce_source", CE_SOURCE.encode())]
    if traceparent:
        headers.append((TRACEPARENT, traceparent.encode()))
    return headers


class Stopping(Exception):
    """Shutdown interrupted an event: leave its offset uncommitted so it is redelivered."""


class BadEvent(ValueError):
    """A record that cannot be decoded; it is dead-lettered, never retried."""


class InvalidEvent(BadEvent):
    """Raised by a handler for an event that can never be applied (it fails validation):
    dead-lettered at once with the reason, without retries."""


def _json_depth_ok(obj: object, limit: int) -> bool:
    """Whether a parsed JSON value nests at most `limit` levels (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def decode(topic: Topic, value: bytes, headers: dict[str, str]) -> Message:
    """The record as its topic's message; BadEvent (with the reason) for anything else.

    Every failure is a BadEvent, whatever raised it (a JSON document nested 200k deep once
    escaped as RecursionError and crash-looped a consumer: issue 14)."""
    if len(value) > MAX_EVENT_BYTES:
        raise BadEvent(f"record of {len(value)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        return _decode(topic, value, headers)
    except BadEvent:
        raise
    except Exception as exc:  # any failure of foreign input is the input's
        raise BadEvent(f"undecodable {topic.message_type} "
                       f"({type(exc).__name__}: {str(exc)[:200]})") from None


def _decode(topic: Topic, value: bytes, headers: dict[str, str]) -> Message:
    msg = topic.message()
    content_type = headers.get("content-type", "")
    looks_json = value[:1] == b"{"  # protobuf never starts with "{" for these messages
    if content_type == JSON or (not content_type and looks_json):
        if not topic.accepts_json:
            raise BadEvent(f"topic {topic.name} does not accept JSON")
        try:
            obj = json.loads(value)
        except RecursionError:
            raise BadEvent(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:
            raise BadEvent(f"invalid JSON: {str(exc)[:200]}") from None
        if not isinstance(obj, dict):
            raise BadEvent("JSON event must be an object")
        if not _json_depth_ok(obj, MAX_JSON_DEPTH):
            raise BadEvent(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        allowed = set(topic.json_fields)
        for f in msg.DESCRIPTOR.fields if allowed else ():
            if f.name not in allowed and (f.name in obj or f.json_name in obj):
                raise BadEvent(f"JSON on {topic.name} may set only "
                               f"{', '.join(topic.json_fields)}; '{f.name}' comes only "
                               "through an authenticated gRPC call")
        try:
            json_format.ParseDict(obj, msg, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise BadEvent(f"JSON does not match {topic.message_type}: "
                           f"{str(exc)[:200]}") from None
        return msg
    try:
        msg.ParseFromString(value)
    except DecodeError as exc:
        raise BadEvent(f"invalid protobuf for {topic.message_type}: {exc}") from None
    return msg


def _headers(raw: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    out = {}
    for k, v in raw or ():
        with contextlib.suppress(UnicodeDecodeError, AttributeError):
            out[k] = v.decode()
    return out


def derived_event_id(topic: str, value: bytes) -> str:
    """Events from foreign producers carry no id: derive one from the content (dedupes resends)."""
    return str(uuid.uuid5(_EVENT_NS, topic + ":" + hashlib.sha256(value).hexdigest()))


def canonical_event_id(value: str) -> str | None:
    """An event-id header as the canonical UUID text, or None when it is not a UUID."""
    if not _UUID_RE.fullmatch(value):
        return None
    return str(uuid.UUID(value[9:] if value[:9].lower() == "urn:uuid:" else value))


def reconciled_event_id(topic: str, key: str) -> str:
    """The identity of a reconciled item: the same (topic, key) on every pass, so a dead letter
    names the item and a later pass finds it (topic names cannot contain ':')."""
    return str(uuid.uuid5(_EVENT_NS, f"reconciled:{topic}:{key}"))


def _pg_text(value: str) -> str:
    """Postgres text cannot hold NUL; a foreign key or an error message may."""
    return value.replace("\x00", "\ufffd")


# ---------------------------------------------------------------- admin / producer

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def kafka_security() -> dict[str, str]:
    """Client settings for an authenticated broker, from the environment (empty: plaintext,
    as Tansu on one machine). In the cluster each workload is its own Strimzi KafkaUser:
    KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT, KAFKA_SASL_MECHANISM=SCRAM-SHA-512,
    KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (from the user's Secret); its ACLs let it
    write and read only its own topics (deploy/README.md)."""
    protocol = os.environ.get("KAFKA_SECURITY_PROTOCOL", "").strip().upper()
    if protocol in ("", "PLAINTEXT"):
        return {}
    if protocol not in SASL_PROTOCOLS:
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL: {protocol!r} is not PLAINTEXT, "
                          f"{' or '.join(SASL_PROTOCOLS)}")
    user = os.environ.get("KAFKA_SASL_USERNAME", "")
    password = os.environ.get("KAFKA_SASL_PASSWORD", "")
    if not user or not password:
        raise ConfigError("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with "
                          f"KAFKA_SECURITY_PROTOCOL={protocol}")
    return {"security_protocol": protocol,
            "sasl_mechanism": os.environ.get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            "sasl_plain_username": user, "sasl_plain_password": password}


def _brokers_error(bootstrap: str, exc: Exception) -> UnavailableError:
    return UnavailableError(f"Kafka broker at {bootstrap} is unreachable ({type(exc).__name__})")


def ensure_topics(bootstrap: str, topics: Iterable[Topic] | None = None) -> None:
    """Create the topic table's topics when missing (idempotent)."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000,
                                 client_id="magiclens-admin", **kafka_security())
    except (KafkaError, OSError) as exc:
        raise _brokers_error(bootstrap, exc) from None
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t.name, t.partitions, 1) for t in (topics or ALL_TOPICS)
                   if t.name not in existing]
        for topic in missing:
            # Under ACLs (the cluster) the topic operator creates topics and a workload sees
            # only its own: creating the others is refused, which is fine.
            with contextlib.suppress(TopicAlreadyExistsError, TopicAuthorizationFailedError):
                admin.create_topics([topic])
    finally:
        admin.close()


def make_producer(bootstrap: str, client_id: str = "magiclens",
                  timeout_s: float = 15.0) -> KafkaProducer:
    """An idempotent, acks=all producer whose every wait (metadata, a request, a delivery)
    ends within about `timeout_s`, so a dead broker is noticed in seconds, not minutes."""
    ms = int(timeout_s * 1000)
    try:
        return KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                             enable_idempotence=True, linger_ms=5, retries=5,
                             max_request_size=MAX_EVENT_BYTES, compression_type="gzip",
                             request_timeout_ms=ms, max_block_ms=ms,
                             delivery_timeout_ms=ms + 5, reconnect_backoff_max_ms=1000,
                             **kafka_security())
    except (KafkaError, OSError) as exc:
        raise _brokers_error(bootstrap, exc) from None


def publish(producer: KafkaProducer, topic: Topic, key: str, message: Message,
            event_id: str | None = None, timeout: float = 15.0) -> str:
    """Publish one event directly (for producers outside a DB transaction, e.g. ingestion)."""
    value, headers = encode(message, event_id)
    fut = producer.send(topic.name, key=key.encode(), value=value, headers=headers)
    fut.get(timeout=timeout)
    return dict(headers)["event-id"].decode()


# ---------------------------------------------------------------- consumer

Handler = Callable[[psycopg.Connection, Event], None]
Reconciler = Callable[[], Iterable[Event]]


class _Assignments(ConsumerRebalanceListener):
    """Notes each new assignment (it runs on the client's IO thread, where no blocking call
    is allowed); the consumer loop then positions those partitions (`_reposition`)."""

    def __init__(self) -> None:
        self.pending: set = set()
        self.lock = threading.Lock()

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        with self.lock:
            self.pending |= set(assigned)

    def take(self) -> set:
        with self.lock:
            taken, self.pending = self.pending, set()
        return taken


class Throttle:
    """At most one True per `every_s`: outage warnings once, then every so often, not once
    a second for as long as an outage lasts."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every_s
        return True


@dataclass
class ConsumerOptions:
    max_attempts: int = 3
    poll_timeout_ms: int = 500
    max_poll_records: int = 50
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 2000
    max_poll_interval_ms: int = 600_000
    retry_backoff_s: float = 0.5
    # Topics that appear (re-created after a memory broker restarted) are noticed this soon;
    # a member left without partitions this long re-creates its topics (idempotent).
    metadata_max_age_ms: int = 10_000
    unassigned_check_s: float = 10.0
    # A dead-lettered reconciled item is tried again (max_attempts more times) this long after
    # it was dead-lettered, the wait doubling with each dead-lettering up to the max
    # (dead_letters.retry_at; set it to now() or delete the row to retry at the next pass).
    dead_letter_retry_s: float = 300.0
    dead_letter_retry_max_s: float = 86_400.0
    # How often the poll loop samples its partitions' lag (magiclens_kafka_consumer_lag_records).
    lag_sample_s: float = metrics.SAMPLE_INTERVAL_S


class Consumer:
    """A consumer-group member that applies each event exactly once to Postgres.

    `handler(conn, event)` runs inside the transaction that also records the event id, so an
    event redelivered after a crash (or resent by a producer) has no second effect. A handler
    that keeps failing sends the event to `dead_letters` (nothing is lost, nothing blocks).
    A reconciled (synthetic) event is keyed by `reconciled_event_id(topic, key)`: its dead
    letter parks the item, later passes skip it until a retry is due (ConsumerOptions), and
    a retry that succeeds deletes the dead letter in the handler's transaction.
    """

    def __init__(self, name: str, bootstrap: str, database_url: str, topics: list[Topic],
                 handler: Handler, group_id: str | None = None,
                 reconciler: Reconciler | None = None, reconcile_interval_s: float = 30.0,
                 options: ConsumerOptions | None = None) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self.database_url = database_url
        self.topics = topics
        self._by_name = {t.name: t for t in topics}
        self.handler = handler
        self.group_id = group_id or f"magiclens-{name}"
        self.reconciler = reconciler
        self.reconcile_interval_s = reconcile_interval_s
        self.options = options or ConsumerOptions()
        self.stop_event = threading.Event()
        self.assigned = threading.Event()
        self.processed = 0
        self.commit_failures = 0  # offset commits refused (rebalance / eviction)
        self.kafka_restarts = 0  # Kafka consumers recreated after a client failure
        self._kafka: KafkaConsumer | None = None
        self._assignments = _Assignments()
        self._outage_log = Throttle(30.0)
        self._kafka_log = Throttle(30.0)
        self._conn: psycopg.Connection | None = None
        self._lag_due = metrics.Every(self.options.lag_sample_s)
        self._lag_partitions: set[tuple[str, int]] = set()

    # -- lifecycle
    def stop(self) -> None:
        self.stop_event.set()

    def _connect(self) -> None:
        try:
            kafka = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group_id, client_id=f"{self.name}-consumer", **kafka_security(),
                enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=self.options.session_timeout_ms,
                heartbeat_interval_ms=self.options.heartbeat_interval_ms,
                max_poll_records=self.options.max_poll_records,
                max_poll_interval_ms=self.options.max_poll_interval_ms,
                metadata_max_age_ms=self.options.metadata_max_age_ms,
                fetch_max_bytes=MAX_EVENT_BYTES, max_partition_fetch_bytes=MAX_EVENT_BYTES)
            kafka.subscribe([t.name for t in self.topics], listener=self._assignments)
        except (KafkaError, OSError) as exc:
            raise _brokers_error(self.bootstrap, exc) from None
        self._kafka = kafka

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.database_url)
        return self._conn

    def run(self) -> None:
        """Consume until stop(); reconcile at start and every reconcile_interval_s.

        Kafka faults never end this loop (issue 14): a failed commit (the group rebalanced
        or evicted this member) is logged and the uncommitted records come back, to be
        skipped as duplicates; any other client failure recreates the Kafka consumer after
        a back-off. Only stop() ends it."""
        next_reconcile = time.monotonic()
        backoff = 0.0
        unassigned_since = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if self.reconciler and time.monotonic() >= next_reconcile:
                    self.reconcile()
                    next_reconcile = time.monotonic() + self.reconcile_interval_s
                try:
                    if self._kafka is None:
                        self._connect()
                        unassigned_since = time.monotonic()
                    self._poll_once()
                    backoff = 0.0
                    if self._kafka is not None and self._kafka.assignment():
                        unassigned_since = time.monotonic()
                    elif time.monotonic() - unassigned_since > self.options.unassigned_check_s:
                        # A restarted memory broker has no topics: until one is re-created
                        # this member has nothing to read (and a producer's auto-created
                        # topic would have the wrong partition count).
                        unassigned_since = time.monotonic()
                        ensure_topics(self.bootstrap, self.topics)
                except Stopping:
                    return
                except Exception as exc:  # a broker fault must not stop us
                    backoff = min(max(1.0, backoff * 2), 10.0)
                    self.kafka_restarts += 1
                    if self._kafka_log.due():
                        log.warning("Kafka consumer failed; recreating it",
                                    extra={"consumer": self.name, "retry_in_s": backoff,
                                           "error": f"{type(exc).__name__}: {exc}"})
                    self._drop_kafka()
                    if self.stop_event.wait(backoff):
                        return
        finally:
            self._close()

    def _reposition(self, partitions: set) -> None:
        """Read newly assigned partitions from their committed offsets (from the beginning
        when none). The client otherwise keeps positions it held before a rejoin, which after
        a memory broker restarted lie past the new, empty logs: nothing would be read."""
        assert self._kafka is not None
        owned = self._kafka.assignment()
        for tp in partitions & owned:
            offset = self._kafka.committed(tp)
            if offset is None:
                self._kafka.seek_to_beginning(tp)
            else:
                self._kafka.seek(tp, offset)

    def _poll_once(self) -> None:
        assert self._kafka is not None
        batches = self._kafka.poll(timeout_ms=self.options.poll_timeout_ms)
        if self._kafka.assignment():
            self.assigned.set()
        moved = self._assignments.take()
        if moved:
            log.info("partitions assigned", extra={
                "consumer": self.name, "group": self.group_id,
                "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in moved)})
            self._reposition(moved)
            # records fetched from the old positions come again from the right ones
            batches = {tp: recs for tp, recs in batches.items() if tp not in moved}
        for tp, records in batches.items():
            for record in records:
                if self.stop_event.is_set():
                    return
                self._process_record(record)
                try:
                    self._kafka.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
                except CommitFailedError as exc:
                    # Rebalanced or evicted (e.g. a long outage outlasted max_poll_interval):
                    # this batch belongs to the group again; the next poll rejoins and the
                    # records come back, already recorded in processed_events.
                    self.commit_failures += 1
                    log.warning("offset commit failed; rejoining the group",
                                extra={"consumer": self.name, "error": str(exc)[:300]})
                    return
        if self._kafka.assignment() and self._lag_due.due():  # the first sample once assigned
            self.sample_lag()

    def sample_lag(self) -> dict[tuple[str, int], int]:
        """Set the lag gauge of every assigned partition: the highwater of the last fetch minus
        this consumer's position, both as the client already holds them. No broker round trip:
        KafkaConsumer.position() refreshes committed offsets and validates positions against
        the leader epoch over the network, and called from the poll loop it kept a consumer
        from recovering after a broker restart (tests/faults/test_faults_broker.py). Runs in
        the poll loop (the client is not thread-safe) every `lag_sample_s`; a partition not
        fetched yet has no sample. Partitions no longer assigned lose their series."""
        kafka = self._kafka
        lags: dict[tuple[str, int], int] = {}
        if kafka is None:
            return lags
        try:
            states = kafka._subscription.assignment  # the client's own fetch positions
            for tp in list(kafka.assignment()):
                end = kafka.highwater(tp)
                state = states.get(tp)
                position = getattr(getattr(state, "position", None), "offset", None)
                if end is not None and position is not None:
                    lags[(tp.topic, tp.partition)] = max(0, end - position)
        except Exception as exc:  # a sample is best effort; the poll loop handles faults
            log.debug("lag sample failed", extra={"consumer": self.name, "error": str(exc)[:300]})
            return lags
        for (topic, partition), lag in lags.items():
            metrics.CONSUMER_LAG.labels(self.group_id, topic, str(partition)).set(lag)
        for topic, partition in self._lag_partitions - set(lags):
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self.group_id, topic, str(partition))
        self._lag_partitions = set(lags)
        return lags

    def _drop_kafka(self) -> None:
        """Close a failed Kafka consumer without waiting (errors are only logged)."""
        kafka, self._kafka = self._kafka, None
        self._assignments.take()
        if kafka is not None:
            try:
                kafka.close(autocommit=False)
            except Exception as exc:  # closing a broken client may raise
                log.debug("closing the Kafka consumer failed", extra={"error": str(exc)})

    def _close(self) -> None:
        if self._kafka is not None:
            # Tansu can wedge a group if a member leaves before its first assignment.
            deadline = time.monotonic() + 8
            with contextlib.suppress(Exception):
                while not self.assigned.is_set() and time.monotonic() < deadline:
                    self._kafka.poll(timeout_ms=200)
                    if self._kafka.assignment():
                        self.assigned.set()
            self._drop_kafka()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()

    # -- processing
    def _process_record(self, record) -> None:
        """Decode and apply one record. Whatever is wrong with the record itself (any
        exception while reading it) dead-letters it with the reason; nothing about one
        record can stop the consumer."""
        value = record.value if isinstance(record.value, bytes) else b""
        key = ""
        event_id = derived_event_id(record.topic, value)
        try:
            key = (record.key or b"").decode(errors="replace")
            topic = self._by_name.get(record.topic) or BY_NAME[record.topic]
            headers = _headers(record.headers)
            event_id = canonical_event_id(headers.get("event-id") or headers.get("ce_id", "")) \
                or event_id
            message = decode(topic, value, headers)
        except Exception as exc:  # BadEvent and anything else the input causes
            reason = str(exc) if isinstance(exc, BadEvent) else f"{type(exc).__name__}: {exc}"
            self._dead_letter(record.topic, key, event_id, value, reason, processed=True,
                              why="undecodable")
            return
        with tracing.span(f"consume {record.topic}",
                          context=tracing.context_from_traceparent(headers.get(TRACEPARENT, "")),
                          **{"messaging.system": "kafka",
                             "messaging.destination.name": record.topic,
                             "messaging.kafka.offset": record.offset,
                             "messaging.consumer.group.name": self.name}):
            self.handle(Event(record.topic, key, event_id, message, record.partition,
                              record.offset, headers))

    @staticmethod
    def event_id(event: Event) -> str:
        """The id the event is recorded under: its own when it is a UUID; for a reconciled
        event without one, its item's (topic, key); otherwise derived from its content."""
        own = canonical_event_id(event.event_id)
        if own is not None:
            return own
        if event.synthetic:
            return reconciled_event_id(event.topic, event.key)
        return derived_event_id(event.topic, event.message.SerializeToString())

    def handle(self, event: Event) -> bool:
        """Apply one event exactly once; returns False when it was a duplicate, a parked
        reconciled item not due for a retry, or dead-lettered.

        A database outage (connection-class errors only: `db.is_outage`) is waited out:
        nothing committed, the offset not moved, no attempt counted. Anything else a handler
        raises, database errors included (a value too large for an index is bad data, not an
        outage), is retried `max_attempts` times, then the event is dead-lettered; a handler
        that raises InvalidEvent dead-letters it at once.
        """
        event_id = self.event_id(event)
        last_error = ""
        why = "reconcile_failed" if event.synthetic else "failed"
        attempt = 0
        started = time.perf_counter()
        while attempt < self.options.max_attempts:
            try:
                conn = self._db()
                with conn.transaction():
                    parked = self._parked(conn, event_id) if event.synthetic else None
                    if parked == "waiting":
                        return False
                    if not event.synthetic:
                        row = conn.execute(
                            "INSERT INTO processed_events (consumer, event_id) VALUES (%s, %s) "
                            "ON CONFLICT DO NOTHING RETURNING 1", (self.name, event_id)
                        ).fetchone()
                        if row is None:
                            log.debug("duplicate event skipped", extra={"event_id": event_id})
                            metrics.CONSUMER_EVENTS.labels(self.name, "duplicate").inc()
                            return False
                    self.handler(conn, event)
                    if parked:
                        conn.execute("DELETE FROM dead_letters WHERE consumer = %s "
                                     "AND event_id = %s", (self.name, event_id))
                        log.info("dead-lettered item succeeded on retry",
                                 extra={"topic": event.topic, "key": event.key,
                                        "event_id": event_id})
                self.processed += 1
                metrics.CONSUMER_EVENTS.labels(self.name, "applied").inc()
                metrics.CONSUMER_HANDLE_SECONDS.labels(self.name).observe(
                    time.perf_counter() - started)
                return True
            except Stopping:
                raise
            except InvalidEvent as exc:
                last_error = f"invalid event: {exc}"
                why = "invalid"
                break
            except Exception as exc:  # classified below, never escapes
                if db.is_outage(exc, self._conn):
                    self._wait_out_outage(exc, "database unavailable, waiting")
                    continue
                attempt += 1
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("handler failed", exc_info=attempt == 1,
                            extra={"event_id": event_id, "attempt": attempt,
                                   "error": last_error[:300]})
                if self.stop_event.wait(self.options.retry_backoff_s * attempt):
                    raise Stopping from exc
        value = event.message.SerializeToString()
        # A Kafka event is marked processed (redelivery skips it); a reconciled item is not:
        # Postgres still says it is pending, and its dead letter decides when it is retried.
        self._dead_letter(event.topic, event.key, event_id, value, last_error,
                          processed=not event.synthetic, why=why)
        return False

    def _parked(self, conn: psycopg.Connection, event_id: str) -> str | None:
        """None when the item has no dead letter; "due" when its retry is due, else "waiting"
        (retry_at NULL: parked until someone sets it or deletes the row)."""
        row = conn.execute("SELECT retry_at <= now() AS due FROM dead_letters "
                           "WHERE consumer = %s AND event_id = %s",
                           (self.name, event_id)).fetchone()
        if row is None:
            return None
        if row["due"]:
            return "due"
        log.debug("dead-lettered item skipped until its retry", extra={"event_id": event_id})
        return "waiting"

    def _dead_letter(self, topic: str, key: str, event_id: str, value: bytes, error: str,
                     processed: bool, why: str = "failed") -> None:
        """Record the event in dead_letters: a Kafka event (`processed`) also in
        processed_events, never retried; a reconciled item with its next retry_at. A database
        outage is waited out, as in handle(), so the consumer never dies of it. `why` is the
        reason label of magiclens_dead_letters_total (a short fixed word, not the error)."""
        metrics.DEAD_LETTERS.labels(self.name, why).inc()
        metrics.CONSUMER_EVENTS.labels(self.name, "dead_lettered").inc()
        log.error("event dead-lettered", extra={"topic": topic, "key": key,
                                                "event_id": event_id, "error": error})
        o = self.options
        degraded = False
        while True:
            try:
                conn = self._db()
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO dead_letters (consumer, event_id, topic, msg_key, payload, "
                        "error, retry_at) VALUES (%(c)s, %(id)s, %(t)s, %(k)s, %(v)s, %(e)s, "
                        "CASE WHEN %(retry)s THEN now() + make_interval(secs => %(base)s) END) "
                        "ON CONFLICT (consumer, event_id) DO UPDATE SET error = EXCLUDED.error, "
                        "attempts = dead_letters.attempts + 1, failed_at = now(), "
                        "retry_at = CASE WHEN %(retry)s THEN now() + make_interval(secs => "
                        "least(%(max)s, %(base)s * 2 ^ least(dead_letters.attempts, 60))) END",
                        {"c": self.name, "id": event_id, "t": _pg_text(topic),
                         "k": _pg_text(key), "v": value, "e": _pg_text(error[:2000]),
                         "retry": not processed, "base": o.dead_letter_retry_s,
                         "max": o.dead_letter_retry_max_s})
                    if processed:
                        conn.execute("INSERT INTO processed_events (consumer, event_id) "
                                     "VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                     (self.name, event_id))
                return
            except Exception as exc:  # dead-lettering must not stop us either
                if db.is_outage(exc, self._conn):
                    self._wait_out_outage(exc, "database unavailable, waiting to dead-letter")
                    continue
                if degraded:
                    log.error("event could not be dead-lettered; skipped",
                              extra={"topic": topic, "event_id": event_id,
                                     "error": f"{type(exc).__name__}: {exc}"[:300]})
                    return
                # Keep the record of the failure even when its content cannot be stored.
                degraded = True
                error = f"{error[:1000]} (payload of {len(value)} bytes not kept: " \
                        f"{type(exc).__name__})"
                value, key = b"", key[:200]

    def _wait_out_outage(self, exc: BaseException, message: str) -> None:
        """One second of a database outage: a rate-limited warning, a fresh connection next
        time, and `Stopping` if shutdown was asked for meanwhile."""
        if self._outage_log.due():
            log.warning(message, extra={"consumer": self.name, "error": str(exc)[:300]})
        self._drop_conn()
        if self.stop_event.wait(1.0):
            raise Stopping from exc

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def reconcile(self) -> int:
        """Re-derive pending work from Postgres state and apply it (handlers are idempotent)."""
        if self.reconciler is None:
            return 0
        n = 0
        try:
            for event in self.reconciler():
                if self.stop_event.is_set():
                    break
                if self.handle(event):
                    n += 1
        except Stopping:
            return n
        except Exception as exc:
            if db.is_outage(exc, self._conn):
                if self._outage_log.due():
                    log.warning("reconciliation postponed: database unavailable",
                                extra={"consumer": self.name, "error": str(exc)[:300]})
                self._drop_conn()
                return n
            # A reconciler that raises must not take Kafka consumption down with it: the
            # pending work is still in Postgres and the next pass derives it again.
            log.exception("reconciliation pass failed; the next pass retries",
                          extra={"consumer": self.name})
        if n:
            log.info("reconciled pending work", extra={"consumer": self.name, "events": n})
        else:  # a positive signal that a full pass ran (tests wait on it instead of sleeping)
            log.debug("reconciliation found nothing pending", extra={"consumer": self.name})
        return n


__all__ = ["BadEvent", "Consumer", "ConsumerOptions", "Event", "InvalidEvent", "Throttle",
           "canonical_event_id", "decode", "encode", "ensure_topics", "make_producer",
           "publish", "reconciled_event_id"]
