"""Auto-start (off by default): a TripleCreated consumer that queues a run once
MAGICLENS_TRAINING_AUTO_MIN_NEW_TRIPLES usable training triples arrived since the last run.

The decision is re-derived from Postgres on every event (idempotent by state), and the
reconciler offers one synthetic event per interval so a lost event delays, never prevents, it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
from magiclens.v1 import events_pb2

from runtime.bus import Consumer, Event
from runtime.topics import TRIPLES_CREATED, Topic, renamed
from services.training import store
from services.training.config import TrainingSettings
from services.training.worker import TrainingWorker

log = logging.getLogger(__name__)

def triples_topic(settings: TrainingSettings) -> Topic:
    return renamed(TRIPLES_CREATED, settings.training_triples_topic)


def maybe_start(conn: psycopg.Connection, settings: TrainingSettings) -> store.Run | None:
    threshold = settings.training_auto_min_new_triples
    if threshold <= 0:
        return None
    store.lock_auto_start(conn)
    if store.active_run(conn) is not None:
        return None
    n = store.new_training_triples(conn)
    if n < threshold:
        return None
    run = store.create_run(conn, settings.training_auto_config, settings.training_auto_steps, "",
                           {"auto": {"new_triples": n}}, trigger="auto")
    log.info("auto-started training", extra={"run_id": run.run_id, "new_triples": n})
    return run


def make_consumer(settings: TrainingSettings, worker: TrainingWorker | None) -> Consumer:
    def handle(conn: psycopg.Connection, event: Event) -> None:
        if maybe_start(conn, settings) is not None and worker is not None:
            worker.wake.set()

    def reconcile() -> Iterator[Event]:
        yield Event(triples_topic(settings).name, "", "", events_pb2.TripleCreated())

    return Consumer("training", settings.kafka_bootstrap_servers, settings.database_url,
                    [triples_topic(settings)], handle, group_id=settings.training_group,
                    reconciler=reconcile, reconcile_interval_s=settings.reconcile_interval_s)
