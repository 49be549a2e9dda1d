"""Kafka side of the miner: the page-event consumer (handler + reconciler)."""

from __future__ import annotations

from magiclens.v1 import events_pb2

from runtime.bus import Consumer
from runtime.topics import PAGES_DISCOVERED, Topic
from services.mining.config import MiningSettings
from services.mining.miner import Miner


def pages_topic(settings: MiningSettings) -> Topic:
    """The page topic (a private name in tests/benchmarks; same message and JSON rules)."""
    if settings.mining_pages_topic == PAGES_DISCOVERED.name:
        return PAGES_DISCOVERED
    return Topic(settings.mining_pages_topic, "url", events_pb2.PageDiscovered,
                 PAGES_DISCOVERED.producers, PAGES_DISCOVERED.consumers,
                 PAGES_DISCOVERED.partitions, accepts_json=True)


def make_consumer(settings: MiningSettings, miner: Miner) -> Consumer:
    return Consumer("mining", settings.kafka_bootstrap_servers, settings.database_url,
                    [pages_topic(settings)], miner.handle, group_id=settings.mining_group,
                    reconciler=miner.reconcile,
                    reconcile_interval_s=settings.reconcile_interval_s)
