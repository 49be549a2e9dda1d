"""`python -m services.training`: gRPC TrainingService, the training worker, the outbox relay
and (when MAGICLENS_TRAINING_AUTO_MIN_NEW_TRIPLES > 0) the TripleCreated auto-start consumer."""

from __future__ import annotations

import logging

import jax

from runtime.bus import ensure_topics
from runtime.config import load_settings, run_main
from runtime.logs import setup_logging
from runtime.service import Service
from services.training import store
from services.training.config import TrainingSettings
from services.training.handlers import make_consumer, triples_topic
from services.training.server import TrainingServicer, registration
from services.training.worker import TrainingWorker

log = logging.getLogger("training")


def enable_compilation_cache(settings: TrainingSettings) -> None:
    """Reuse XLA compilations across runs (backbone feature extraction compiles for minutes)."""
    path = settings.jax_cache_dir or settings.data_dir / "jax_cache"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def main() -> int:
    settings = load_settings(TrainingSettings)
    setup_logging("training", settings.log_level)
    service = Service("training", settings)
    service.prepare()
    ensure_topics(settings.kafka_bootstrap_servers,
                  [store.models_topic(settings.training_models_topic), triples_topic(settings)])
    if settings.training_jax_cache:
        enable_compilation_cache(settings)
    worker = TrainingWorker(settings)
    if settings.training_auto_min_new_triples > 0:
        service.add_consumer(make_consumer(settings, worker))
    service.add_outbox_relay()
    service.add_grpc([registration(TrainingServicer(settings, worker))])
    # On shutdown a job leaves its training loop after the current step and is requeued; it
    # resumes from its last checkpoint. Phases without a step hook (feature extraction,
    # evaluation) cannot be interrupted: the service then exits without waiting for them
    # (Service.add_worker), and the run, still 'running', is recovered the same way by the
    # next worker.
    service.add_worker("training-worker", worker)
    log.info("training service ready", extra={"auto_min_new_triples":
                                              settings.training_auto_min_new_triples})
    return service.run_forever()


if __name__ == "__main__":
    run_main("training", main)
