"""`python -m services.outbox_relay`: publish outbox rows to Kafka until SIGTERM/SIGINT.

Every service already relays its own outbox (runtime/service.py); this workload adds
publishers (rows are claimed with SKIP LOCKED, so replicas share the work).
"""

from __future__ import annotations

import logging
import signal
import time

from runtime import metrics
from runtime.config import load_settings, run_main
from runtime.logs import setup_logging
from runtime.outbox import OutboxRelay, check_dependencies
from services.outbox_relay.config import RelaySettings

log = logging.getLogger("outbox-relay")


def main() -> int:
    settings = load_settings(RelaySettings)
    setup_logging("outbox-relay", settings.log_level)
    check_dependencies(settings)
    relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap_servers,
                        batch_size=settings.outbox_batch,
                        outbox_retention_s=settings.outbox_retention_s,
                        processed_retention_s=settings.processed_events_retention_s,
                        topics=settings.outbox_topics.split(","))
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    signal.signal(signal.SIGINT, lambda *_: relay.stop())
    # Its backlog gauges and published counts (MAGICLENS_METRICS_PORT; the pod sets it).
    metrics.serve(settings.metrics_port, settings.grpc_host)
    log.info("outbox relay started")
    started = time.monotonic()
    relay.run()
    log.info("outbox relay stopped", extra={"published": relay.published,
                                            "uptime_s": round(time.monotonic() - started, 1)})
    return 0


if __name__ == "__main__":
    run_main("outbox-relay", main)
