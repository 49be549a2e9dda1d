"""Dead letters against the real Postgres and Tansu: an item that keeps failing is parked under
a stable id and the consumer goes on; a transient failure is waited out, never dead-lettered."""

from __future__ import annotations

import threading
import uuid

import psycopg
from kafka import KafkaProducer
from magiclens.v1 import events_pb2

from runtime.bus import Consumer, ConsumerOptions, Event, ensure_topics
from runtime.errors import UnavailableError
from runtime.topics import Topic
from tests.support.consumers import Running, page_topic


def _jobs(url: str, table: str, keys: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, n INT NOT NULL)")
        conn.execute(f"CREATE TABLE {table}_jobs (k TEXT PRIMARY KEY, done BOOL NOT NULL)")
        for k in keys:
            conn.execute(f"INSERT INTO {table}_jobs (k, done) VALUES (%s, false)", (k,))


def _counts(url: str, table: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(f"SELECT k, n FROM {table}").fetchall())


def _dead_letters(url: str, consumer: str) -> list[dict]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT event_id, topic, msg_key, payload, error, attempts, "
                            "extract(epoch FROM retry_at - failed_at) AS wait_s "
                            "FROM dead_letters WHERE consumer = %s ORDER BY msg_key",
                            (consumer,)).fetchall()


def _retry_now(url: str, consumer: str) -> None:
    """As if the backoff had passed (what an operator does to retry a parked item now)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE dead_letters SET retry_at = now() WHERE consumer = %s",
                     (consumer,))


def _reconciling_consumer(url: str, bootstrap: str, topic: Topic, table: str, handler,
                          passes: list[int], **options) -> Consumer:
    def reconciler():
        passes[0] += 1
        with psycopg.connect(url) as conn:
            keys = [r[0] for r in conn.execute(
                f"SELECT k FROM {table}_jobs WHERE NOT done ORDER BY k")]
        for k in keys:
            yield Event(topic.name, k, "", events_pb2.PageDiscovered(url=k))

    return Consumer(f"test-{table}", bootstrap, url, [topic], handler, group_id=f"g-{table}",
                    reconciler=reconciler, reconcile_interval_s=0.2,
                    options=ConsumerOptions(retry_backoff_s=0.01, **options))


def _count_once(conn, table: str, key: str) -> None:
    """The effect, idempotent by state as every real handler is."""
    if conn.execute(f"UPDATE {table}_jobs SET done = true WHERE k = %s AND NOT done "
                    "RETURNING k", (key,)).fetchone() is not None:
        conn.execute(f"INSERT INTO {table} (k, n) VALUES (%s, 1) ON CONFLICT (k) "
                     f"DO UPDATE SET n = {table}.n + 1", (key,))


def test_a_reconciled_item_that_keeps_failing_is_parked_and_the_rest_is_done(
        infra_servers, unique):
    url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic, table = page_topic(f"test.poison.{unique}"), f"t_poison_{unique}"
    ensure_topics(bootstrap, [topic])
    keys = [f"img-{i:02d}" for i in range(12)]
    poison = keys[3]  # e.g. an image whose blob cannot be read
    _jobs(url, table, keys)
    calls = {"poison": 0}
    broken = [True]
    passes = [0]

    def handler(conn, event) -> None:
        if event.key == poison and broken[0]:
            calls["poison"] += 1
            raise FileNotFoundError(f"blob of {event.key} is gone")
        _count_once(conn, table, event.key)

    consumer = _reconciling_consumer(url, bootstrap, topic, table, handler, passes)
    name = consumer.name
    with Running(consumer) as running:
        running.wait(lambda: len(_counts(url, table)) == len(keys) - 1, 60,
                     "every other item to be done")
        seen = passes[0]
        running.wait(lambda: passes[0] >= seen + 5, 30, "five more reconcile passes")
        # dead-lettered once, under an id that means (topic, key), and not retried each pass
        assert calls["poison"] == consumer.options.max_attempts
        (dead,) = _dead_letters(url, name)
        assert (dead["topic"], dead["msg_key"], dead["attempts"]) == (topic.name, poison, 1)
        assert dead["wait_s"] == consumer.options.dead_letter_retry_s
        assert isinstance(dead["event_id"], uuid.UUID)
        assert events_pb2.PageDiscovered.FromString(dead["payload"]).url == poison
        assert "FileNotFoundError: blob of img-03 is gone" in dead["error"]
        first_id = dead["event_id"]

        # once its retry is due it is tried again, fails again: the same row, one more attempt
        _retry_now(url, name)
        running.wait(lambda: _dead_letters(url, name)[0]["attempts"] == 2, 30, "a retry")
        seen = passes[0]
        running.wait(lambda: passes[0] >= seen + 3, 30, "three more reconcile passes")
        assert calls["poison"] == 2 * consumer.options.max_attempts
        (dead,) = _dead_letters(url, name)
        assert dead["event_id"] == first_id
        assert dead["wait_s"] == 2 * consumer.options.dead_letter_retry_s  # backing off

        # the cause is fixed: the next due retry succeeds and the dead letter is cleared
        broken[0] = False
        _retry_now(url, name)
        running.wait(lambda: poison in _counts(url, table), 30, "the healed item")
        running.wait(lambda: not _dead_letters(url, name), 10, "the dead letter to go")
    assert running.error is None
    assert _counts(url, table) == {k: 1 for k in keys}
    with psycopg.connect(url) as conn:  # a reconciled item never marks a Kafka event processed
        assert conn.execute("SELECT count(*) FROM processed_events WHERE consumer = %s",
                            (name,)).fetchone()[0] == 0


def test_a_transient_failure_of_a_reconciled_item_is_waited_out_not_dead_lettered(
        infra_servers, unique):
    url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic, table = page_topic(f"test.transient.{unique}"), f"t_transient_{unique}"
    ensure_topics(bootstrap, [topic])
    keys = ["a", "b", "c"]
    _jobs(url, table, keys)
    outages = {"b": 3}  # more failures in a row than max_attempts

    def handler(conn, event) -> None:
        if outages.get(event.key):
            outages[event.key] -= 1
            if outages[event.key] % 2:
                raise UnavailableError("embedding server: unreachable")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        _count_once(conn, table, event.key)

    consumer = _reconciling_consumer(url, bootstrap, topic, table, handler, [0],
                                     max_attempts=2)
    with Running(consumer) as running:
        running.wait(lambda: len(_counts(url, table)) == len(keys), 60, "every item")
    assert running.error is None
    assert _counts(url, table) == {k: 1 for k in keys}
    assert _dead_letters(url, consumer.name) == []


def test_kafka_events_with_missing_or_malformed_ids_never_crash_the_consumer(
        infra_servers, unique):
    url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic, table = page_topic(f"test.ids.{unique}"), f"t_ids_{unique}"
    ensure_topics(bootstrap, [topic])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, n INT NOT NULL)")

    def handler(conn, event) -> None:  # counts every application: duplicates would show
        if event.message.url.startswith("poison"):
            raise ValueError(f"cannot apply {event.message.url}")
        conn.execute(f"INSERT INTO {table} (k, n) VALUES (%s, 1) ON CONFLICT (k) "
                     f"DO UPDATE SET n = {table}.n + 1", (event.message.url,))

    ids = [uuid.uuid4() for _ in range(3)]
    records = [  # (key, url, event-id header or None)
        ("a", "poison-no-id", None),
        ("b", "ok-urn", f"urn:uuid:{ids[0]}"),  # Python's uuid accepts these, Postgres not
        ("c", "ok-urn", str(ids[0])),  # the same event again, spelt canonically: a duplicate
        ("d", "ok-underscore", "1234567_" + ids[1].hex[8:]),
        ("e", "poison-not-a-uuid", "not-a-uuid"),
        ("nul\x00key", "poison-nul", str(ids[2])),  # Postgres text cannot hold NUL
        ("f", "last", None),
    ]
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    for key, page, event_id in records:
        headers = [("content-type", b"application/x-protobuf")]
        if event_id is not None:
            headers.append(("event-id", event_id.encode()))
        raw.send(topic.name, key=key.encode(), headers=headers, partition=0,
                 value=events_pb2.PageDiscovered(url=page).SerializeToString()).get(10)
    raw.close()

    consumer = Consumer(f"test-{table}", bootstrap, url, [topic], handler,
                        group_id=f"g-{unique}", options=ConsumerOptions(retry_backoff_s=0.01))
    with Running(consumer) as running:
        running.wait(lambda: "last" in _counts(url, table), 60, "the last record")
    assert running.error is None
    assert _counts(url, table) == {"ok-urn": 1, "ok-underscore": 1, "last": 1}
    dead = _dead_letters(url, consumer.name)
    assert [(d["msg_key"], d["attempts"]) for d in dead] == [
        ("a", 1), ("e", 1), ("nul\ufffdkey", 1)]
    assert dead[2]["event_id"] == ids[2]
    assert [d["wait_s"] for d in dead] == [None] * 3  # Kafka events: never retried by the bus
    assert len({d["event_id"] for d in dead}) == 3
    with psycopg.connect(url) as conn:  # dead-lettered events are never applied on redelivery
        processed = {r[0] for r in conn.execute(
            "SELECT event_id FROM processed_events WHERE consumer = %s", (consumer.name,))}
    assert {d["event_id"] for d in dead} | {ids[0]} <= processed


def test_an_unreachable_database_url_while_dead_lettering_is_waited_out_simulated(
        infra_servers, unique):
    """Simulated outage, not a stopped server: the handler drops the consumer's connection and
    points its database_url at a closed port for 1.5 s, so the dead-letter write meets
    connection errors (the real Postgres is never stopped; the fault tests in tests/faults
    stop it for real). The event is dead-lettered once the URL works again."""
    url = infra_servers.database_url
    topic = page_topic(f"test.outage.{unique}")
    left_open: list[psycopg.Connection] = []

    def handler(conn, event) -> None:
        # Postgres goes away right after this last failure, before the dead letter is written
        # (the bus reconnects: drop its connection and point it at a closed port for a while).
        left_open.append(conn)
        consumer._conn = None
        consumer.database_url = "postgresql://postgres@127.0.0.1:1/magiclens"
        threading.Timer(1.5, lambda: setattr(consumer, "database_url", url)).start()
        raise RuntimeError("cannot apply")

    consumer = Consumer(f"test-outage-{unique}", infra_servers.kafka_bootstrap, url, [topic],
                        handler, options=ConsumerOptions(max_attempts=1, retry_backoff_s=0.01))
    try:
        assert consumer.handle(Event(topic.name, "x", "", events_pb2.PageDiscovered(url="x")))\
            is False
    finally:
        for conn in left_open:
            conn.close()
    (dead,) = _dead_letters(url, consumer.name)
    assert (dead["msg_key"], dead["attempts"]) == ("x", 1)


def test_a_reconciler_that_raises_postpones_its_pass_instead_of_crashing(infra_servers, unique):
    url = infra_servers.database_url
    topic, table = page_topic(f"test.rbug.{unique}"), f"t_rbug_{unique}"
    _jobs(url, table, ["a", "b"])
    passes = [0]

    def reconciler():
        passes[0] += 1
        yield Event(topic.name, "a", "", events_pb2.PageDiscovered(url="a"))
        if passes[0] == 1:
            raise KeyError("a bug half-way through the first pass")
        yield Event(topic.name, "b", "", events_pb2.PageDiscovered(url="b"))

    consumer = Consumer(f"test-{table}", infra_servers.kafka_bootstrap, url, [topic],
                        lambda conn, event: _count_once(conn, table, event.key),
                        reconciler=reconciler)
    assert consumer.reconcile() == 1
    assert consumer.reconcile() == 2  # "a" again is a no-op by state, "b" is done
    assert _counts(url, table) == {"a": 1, "b": 1}
