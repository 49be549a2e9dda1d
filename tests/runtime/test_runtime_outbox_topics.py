"""A service's outbox relay publishes only its own topics (MAGICLENS_OUTBOX_TOPICS, what its
Kafka user may write in the cluster), and Kafka client security comes from the environment;
real Postgres and Tansu."""

from __future__ import annotations

import threading

import psycopg
import pytest
from magiclens.v1 import events_pb2

from runtime import db, outbox
from runtime.bus import kafka_security
from runtime.errors import ConfigError
from runtime.topics import MODELS_PUBLISHED, PAGES_DISCOVERED
from tests.support.processes import wait_for


def _published(url: str) -> dict[str, bool]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT msg_key, published_at IS NOT NULL FROM outbox"))


def _relay(url: str, bootstrap: str, topics: list[str]):
    relay = outbox.OutboxRelay(url, bootstrap, idle_poll_s=0.05, topics=topics)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    return relay, thread


def test_a_relay_leaves_rows_of_topics_it_may_not_write(infra_servers, fresh_db):
    url, bootstrap = fresh_db, infra_servers.kafka_bootstrap
    with db.transaction(url) as conn:
        # A ModelPublished row is training's; mining's relay (and its Kafka user) may not
        # write that topic, so the row waits for a relay that may.
        outbox.enqueue(conn, MODELS_PUBLISHED, "forged", events_pb2.ModelPublished(
            model_version="forged", checkpoint_uri="s3://elsewhere/evil.tar", promoted=True))
        outbox.enqueue(conn, PAGES_DISCOVERED, "page-1", events_pb2.PageDiscovered(url="p1"))
    relay, thread = _relay(url, bootstrap, [PAGES_DISCOVERED.name])
    try:
        wait_for(lambda: _published(url)["page-1"], 60, "mining's own row to be published")
        with db.transaction(url) as conn:  # a later row: the relay has passed the forged one
            outbox.enqueue(conn, PAGES_DISCOVERED, "page-2", events_pb2.PageDiscovered(url="p2"))
        wait_for(lambda: _published(url)["page-2"], 30, "a row written afterwards")
        assert _published(url)["forged"] is False
    finally:
        relay.stop()
        thread.join(30)
    relay, thread = _relay(url, bootstrap, [])  # the outbox-relay workload: every topic
    try:
        wait_for(lambda: _published(url)["forged"], 60, "an all-topics relay to publish it")
    finally:
        relay.stop()
        thread.join(30)


def test_kafka_security_from_the_environment(monkeypatch):
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
                 "KAFKA_SASL_MECHANISM"):
        monkeypatch.delenv(name, raising=False)
    assert kafka_security() == {}
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        kafka_security()
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "magiclens-mining")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    assert kafka_security() == {"security_protocol": "SASL_PLAINTEXT",
                                "sasl_mechanism": "SCRAM-SHA-512",
                                "sasl_plain_username": "magiclens-mining",
                                "sasl_plain_password": "pw"}
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL_MAYBE")
    with pytest.raises(ConfigError, match="KAFKA_SECURITY_PROTOCOL"):
        kafka_security()


def test_a_relayed_event_is_a_cloudevent_any_sdk_reads(infra_servers, fresh_db, unique):
    """The relay's record, read from Kafka by a plain consumer, parses with the CloudEvents
    SDK's Kafka binding: id, type, source and spec version from the ce_ headers, the data
    content type from content-type, and the protobuf payload as its data."""
    from cloudevents.core.bindings import kafka as ce_kafka
    from kafka import KafkaConsumer

    from runtime.bus import ensure_topics
    from tests.support.consumers import page_topic

    url, bootstrap = fresh_db, infra_servers.kafka_bootstrap
    topic = page_topic(f"test.cloudevents.{unique}", partitions=1)
    ensure_topics(bootstrap, [topic])
    page = f"https://example.org/{unique}"
    with db.transaction(url) as conn:
        event_id = outbox.enqueue(conn, topic, page, events_pb2.PageDiscovered(url=page))
    relay, thread = _relay(url, bootstrap, [topic.name])
    try:
        consumer = KafkaConsumer(topic.name, bootstrap_servers=bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=30000)
        record = next(iter(consumer))
        consumer.close()
    finally:
        relay.stop()
        thread.join(30)
    event = ce_kafka.from_binary_event(ce_kafka.KafkaMessage(
        headers=dict(record.headers), key=record.key, value=record.value))
    assert event.get_id() == event_id
    assert event.get_type() == "magiclens.v1.PageDiscovered"
    assert event.get_source() == "urn:magiclens"
    assert event.get_specversion() == "1.0"
    assert event.get_datacontenttype() == "application/x-protobuf"
    data = event.get_data()  # the SDK's JSON format hands back valid UTF-8 as str
    data = data.encode() if isinstance(data, str) else data
    assert events_pb2.PageDiscovered.FromString(data).url == page
