"""A compressed Kafka batch that inflates beyond the cap is skipped, not inflated
(runtime/kafka_limits.py), and the consumer goes on with the next batch; real Tansu, the
real bus Consumer, a raw producer sending one highly compressible gzip batch."""

from __future__ import annotations

import gzip

import pytest
from kafka import KafkaProducer
from magiclens.v1 import events_pb2

from runtime import kafka_limits
from runtime.bus import Consumer, ConsumerOptions, ensure_topics
from tests.support.consumers import Running, page_topic

LIMIT = 256 * 1024


def test_bounded_gzip_decode_stops_at_the_limit(monkeypatch):
    monkeypatch.setattr(kafka_limits, "batch_limit", LIMIT)
    assert kafka_limits.bounded_gzip_decode(gzip.compress(b"\0" * LIMIT)) == b"\0" * LIMIT
    two_members = gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10)
    assert kafka_limits.bounded_gzip_decode(two_members) == b"a" * 10 + b"b" * 10
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB in ~64 KB
    with pytest.raises(kafka_limits.OversizedBatch):
        kafka_limits.bounded_gzip_decode(bomb)
    with pytest.raises(kafka_limits.OversizedBatch):  # the limit counts every member
        kafka_limits.bounded_gzip_decode(gzip.compress(b"\0" * LIMIT) + gzip.compress(b"x"))
    with pytest.raises(kafka_limits.CorruptRecordError):
        kafka_limits.bounded_gzip_decode(gzip.compress(b"abc")[:-12])


def test_an_oversized_compressed_batch_is_skipped_and_the_next_one_consumed(
        infra_servers, unique, monkeypatch):
    monkeypatch.setattr(kafka_limits, "batch_limit", LIMIT)
    url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic = page_topic(f"test.bomb.{unique}", partitions=1)
    ensure_topics(bootstrap, [topic])
    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip",
                             batch_size=4 * 1024 * 1024, linger_ms=1000)
    big = events_pb2.PageDiscovered(url="https://x.example/", html="0" * 60_000)
    # 20 records, 1.2 MB inflated, a few KB on the wire: one batch, over the 256 KiB cap.
    sent = [producer.send(topic.name, key=f"big-{i}".encode(), value=big.SerializeToString())
            for i in range(20)]
    producer.flush(30)
    assert len({f.get(10).offset for f in sent}) == 20
    after = events_pb2.PageDiscovered(url="https://x.example/after")
    producer.send(topic.name, key=b"after", value=after.SerializeToString()).get(10)
    producer.close()

    seen: list[str] = []
    skipped_before = kafka_limits.skipped_batches
    consumer = Consumer(f"test-bomb-{unique}", bootstrap, url, [topic],
                        lambda conn, event: seen.append(event.key), group_id=f"g-{unique}",
                        options=ConsumerOptions(retry_backoff_s=0.01))
    with Running(consumer) as running:
        running.wait(lambda: "after" in seen, 60, "the record after the oversized batch")
    assert seen == ["after"]
    assert kafka_limits.skipped_batches > skipped_before
