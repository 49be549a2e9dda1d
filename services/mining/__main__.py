"""`python -m services.mining`: the page-event consumer, the outbox relay and gRPC MiningService."""

from __future__ import annotations

import json
import logging

from runtime.bus import ensure_topics
from runtime.config import load_settings, run_main
from runtime.logs import setup_logging
from runtime.service import Service
from runtime.topics import IMAGES_DELETED, renamed
from services.mining.config import MiningSettings
from services.mining.handlers import make_consumer, pages_topic
from services.mining.miner import Miner
from services.mining.server import MiningServicer, registration
from services.mining.takedown import Takedowns

log = logging.getLogger("mining")


def main() -> int:
    settings = load_settings(MiningSettings)
    setup_logging("mining", settings.log_level)
    service = Service("mining", settings)
    service.prepare()
    ensure_topics(settings.kafka_bootstrap_servers,
                  [pages_topic(settings), renamed(IMAGES_DELETED,
                                                  settings.mining_images_deleted_topic)])
    miner = Miner(settings)
    service.add_consumer(make_consumer(settings, miner))
    service.add_outbox_relay()
    takedowns = Takedowns(settings, miner.blobs)
    service.add_grpc([registration(MiningServicer(settings, miner, takedowns))])
    service.every(settings.mining_purge_interval_s, takedowns.purge_blobs)
    log.info("mining worker ready", extra={"worker": miner.worker_id,
                                           "allow_hosts": settings.mining_allow_hosts,
                                           "topic": settings.mining_pages_topic})
    try:
        return service.run_forever()
    finally:
        log.info("mining stats", extra={"worker": miner.worker_id,
                                        "stats": json.dumps({"seconds": miner.timings,
                                                             **miner.counts})})
        miner.close()


if __name__ == "__main__":
    run_main("mining", main)
