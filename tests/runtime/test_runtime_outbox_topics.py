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
