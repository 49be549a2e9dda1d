"""Kafka side of the miner: the page-event consumer (handler + reconciler)."""

from __future__ import annotations

from runtime.bus import Consumer
from runtime.topics import PAGES_DISCOVERED, Topic, renamed
from services.mining.config import MiningSettings
from services.mining.miner import Miner


def pages_topic(settings: MiningSettings) -> Topic:
    """The page topic (a private name in tests/benchmarks; same message and JSON rules)."""
    return renamed(PAGES_DISCOVERED, settings.mining_pages_topic)


def make_consumer(settings: MiningSettings, miner: Miner) -> Consumer:
    return Consumer("mining", settings.kafka_bootstrap_servers, settings.database_url,
                    [pages_topic(settings)], miner.handle, group_id=settings.mining_group,
                    reconciler=miner.reconcile,
                    reconcile_interval_s=settings.reconcile_interval_s)
