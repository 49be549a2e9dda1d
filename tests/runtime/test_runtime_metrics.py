"""runtime/metrics.py: the naming rules, and the sampled gauges against the real broker and
database (consumer lag from position vs end offset, outbox backlog and age)."""

from __future__ import annotations

import time

import pytest
from magiclens.v1 import events_pb2

from runtime import db, metrics, outbox
from runtime.bus import Consumer, ConsumerOptions, ensure_topics, make_producer, publish
from runtime.outbox import OutboxRelay
from runtime.topics import Topic
from tests.support.processes import wait_for


@pytest.mark.parametrize(("kind", "name", "why"), [
    ("counter", "magiclens_things", "_total"),
    ("gauge", "magiclens_things_total", "_total"),
    ("gauge", "things_rows", "must match"),
    ("histogram", "magiclens_latency_ms", "suffix"),
    ("gauge", "magiclens_Rows", "must match"),
    ("counter", "magiclens_grpc_requests_total", "defined twice"),
])
def test_names_that_break_the_conventions_are_refused(kind, name, why):
    import runtime.grpc_server  # noqa: F401 - declares magiclens_grpc_requests_total

    with pytest.raises(ValueError, match=why):
        getattr(metrics, kind)(name, "doc")


def test_pipeline_stages_are_a_closed_set():
    with pytest.raises(ValueError, match="unknown pipeline stage"):
        metrics.pipeline("pages_crawled")
    before = metrics.PIPELINE_ITEMS.labels("pairs_mined")._value.get()
    metrics.pipeline("pairs_mined", 3)
    assert metrics.PIPELINE_ITEMS.labels("pairs_mined")._value.get() == before + 3
    assert {"magiclens_pipeline_items_total", "magiclens_consumer_handle_seconds_bucket",
            "magiclens_kafka_consumer_lag_records"} <= metrics.exposed_names()


def _lag(group: str, topic: str) -> float | None:
    try:
        return metrics.CONSUMER_LAG.labels(group, topic, "0")._value.get()
    except KeyError:
        return None


def test_consumer_lag_is_end_offset_minus_position(infra_servers, own_db, unique):
    bootstrap = infra_servers.kafka_bootstrap
    topic = Topic(f"test.lag.{unique}", "url", events_pb2.PageDiscovered, ("test",),
                  ("test",), 1)
    ensure_topics(bootstrap, [topic])
    producer = make_producer(bootstrap)
    for i in range(5):
        publish(producer, topic, f"k{i}", events_pb2.PageDiscovered(url=f"k{i}"))
    producer.close()
    seen: list[str] = []
    consumer = Consumer(f"test-lag-{unique}", bootstrap, own_db, [topic],
                        lambda conn, event: seen.append(event.key),
                        options=ConsumerOptions(max_poll_records=1, lag_sample_s=3600))
    consumer._connect()
    try:
        wait_for(lambda: consumer._poll_once() or seen, 60, "the first record")
        lags = consumer.sample_lag()
        assert lags == {(topic.name, 0): 5 - len(seen)} and len(seen) < 5
        assert _lag(consumer.group_id, topic.name) == 5 - len(seen)
        wait_for(lambda: consumer._poll_once() or len(seen) == 5, 60, "every record")
        assert consumer.sample_lag() == {(topic.name, 0): 0}
        assert _lag(consumer.group_id, topic.name) == 0
    finally:
        consumer._close()


def test_outbox_backlog_and_age_are_sampled_per_topic(infra_servers, own_db, unique):
    topic = Topic(f"test.backlog.{unique}", "url", events_pb2.PageDiscovered, ("test",),
                  ("test",), 1)
    ensure_topics(infra_servers.kafka_bootstrap, [topic])
    with db.transaction(own_db) as conn:
        for i in range(3):
            outbox.enqueue(conn, topic, f"k{i}", events_pb2.PageDiscovered(url=f"k{i}"))
        conn.execute("UPDATE outbox SET created_at = now() - interval '90 seconds'")
    relay = OutboxRelay(own_db, infra_servers.kafka_bootstrap, topics=[topic.name])
    with db.connect(own_db) as conn:
        assert relay.sample_backlog(conn)[topic.name]["backlog"] == 3
        assert metrics.OUTBOX_BACKLOG.labels(topic.name)._value.get() == 3
        assert 90 <= metrics.OUTBOX_OLDEST_AGE.labels(topic.name)._value.get() < 600
        published = metrics.OUTBOX_PUBLISHED.labels(topic.name)._value.get()
        deadline = time.monotonic() + 60
        while relay.publish_batch(conn) == 0:
            assert time.monotonic() < deadline
        assert metrics.OUTBOX_PUBLISHED.labels(topic.name)._value.get() == published + 3
        assert relay.sample_backlog(conn) == {}
    relay.drop_producer()
    assert metrics.OUTBOX_BACKLOG.labels(topic.name)._value.get() == 0
    assert metrics.OUTBOX_OLDEST_AGE.labels(topic.name)._value.get() == 0
