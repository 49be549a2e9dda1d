"""The outbox cannot be blocked by one row, and does not grow without bound: a row the broker
refuses for its own sake (larger than any record may be) is parked after its attempts while
the rows around it are published; published rows and processed-event ids past their
retention are pruned."""

from __future__ import annotations

import threading
import uuid

import psycopg
from magiclens.v1 import events_pb2

from runtime import db, outbox
from runtime.limits import MAX_EVENT_BYTES
from runtime.topics import PAGES_DISCOVERED
from tests.support.processes import wait_for


def _rows(url: str) -> dict[str, dict]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        return {r["msg_key"]: r for r in conn.execute(
            "SELECT msg_key, published_at IS NOT NULL AS published, attempts, last_error, "
            "failed_at IS NOT NULL AS parked FROM outbox")}


def test_one_refused_row_is_parked_and_the_rest_are_published(infra_servers, own_db):
    url = own_db
    with db.transaction(url) as conn:
        outbox.enqueue(conn, PAGES_DISCOVERED, "a", events_pb2.PageDiscovered(url="a"))
        outbox.enqueue(conn, PAGES_DISCOVERED, "huge", events_pb2.PageDiscovered(
            url="huge", html="x" * (MAX_EVENT_BYTES + 1024)))
        outbox.enqueue(conn, PAGES_DISCOVERED, "b", events_pb2.PageDiscovered(url="b"))
    relay = outbox.OutboxRelay(url, infra_servers.kafka_bootstrap, max_attempts=3)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: _rows(url)["huge"]["parked"], 60, "the refused row to be parked")
        wait_for(lambda: _rows(url)["b"]["published"], 30, "the row behind it")
        enqueued_later = str(uuid.uuid4())
        with db.transaction(url) as conn:
            outbox.enqueue(conn, PAGES_DISCOVERED, "c", events_pb2.PageDiscovered(url="c"),
                           event_id=enqueued_later)
        wait_for(lambda: _rows(url)["c"]["published"], 30, "a row written afterwards")
        assert thread.is_alive()
    finally:
        relay.stop()
        thread.join(30)
    rows = _rows(url)
    assert [k for k, r in rows.items() if r["published"]] == ["a", "b", "c"]
    huge = rows["huge"]
    assert (huge["published"], huge["parked"], huge["attempts"]) == (False, True, 3)
    assert "MessageSizeTooLarge" in huge["last_error"]
    assert relay.parked == 1


def test_published_rows_and_processed_ids_are_pruned_after_their_retention(own_db):
    url = own_db
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    with db.transaction(url) as conn:
        for eid, age in ((old, "8 days"), (new, "1 hour")):
            outbox.enqueue(conn, PAGES_DISCOVERED, f"prune-{eid}",
                           events_pb2.PageDiscovered(url="p"), event_id=eid)
            conn.execute("UPDATE outbox SET published_at = now() - %s::interval "
                         "WHERE event_id = %s", (age, eid))
            conn.execute("INSERT INTO processed_events (consumer, event_id, processed_at) "
                         "VALUES ('prune-test', %s, now() - %s::interval)", (eid, age))
        outbox.enqueue(conn, PAGES_DISCOVERED, "prune-unpublished",
                       events_pb2.PageDiscovered(url="p"))
        conn.execute("UPDATE outbox SET created_at = now() - interval '30 days' "
                     "WHERE msg_key = 'prune-unpublished'")
    relay = outbox.OutboxRelay(url, "127.0.0.1:1", outbox_retention_s=7 * 86400,
                               processed_retention_s=7 * 86400)
    with db.connect(url) as conn:
        assert relay.prune(conn, chunk=1) == 2
    with psycopg.connect(url) as conn:
        kept = {str(r[0]) for r in conn.execute("SELECT event_id FROM outbox "
                                                "WHERE msg_key LIKE 'prune-%'")}
        ids = {str(r[0]) for r in conn.execute(
            "SELECT event_id FROM processed_events WHERE consumer = 'prune-test'")}
        unpublished = conn.execute("SELECT count(*) FROM outbox WHERE msg_key = "
                                   "'prune-unpublished'").fetchone()[0]
    assert new in kept and old not in kept and unpublished == 1  # never an unsent row
    assert ids == {new}
