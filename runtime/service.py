"""Process lifecycle shared by every service: start workers, stop them gracefully.

A service is a gRPC server plus background workers (Kafka consumers, the outbox relay,
periodic jobs, loops of its own such as the training worker). On SIGTERM/SIGINT it reports
NOT_SERVING, lets in-flight RPCs finish, lets each consumer finish (and commit) its current
event, flushes the relay and asks its own loops to stop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from runtime import db, metrics, tracing
from runtime.bus import Consumer, Throttle, ensure_topics
from runtime.config import BaseServiceSettings
from runtime.grpc_server import GrpcServer, Registration
from runtime.outbox import OutboxRelay

log = logging.getLogger(__name__)


class Worker(Protocol):
    """A loop of a service's own: `run()` until `stop()` is called (from another thread)."""

    def run(self) -> None: ...
    def stop(self) -> None: ...


class Service:
    def __init__(self, name: str, settings: BaseServiceSettings) -> None:
        self.name = name
        self.settings = settings
        tracing.setup(name)  # before any gRPC server or channel exists (off unless configured)
        self.stop_event = threading.Event()
        self.consumers: list[Consumer] = []
        self.relay: OutboxRelay | None = None
        self.grpc: GrpcServer | None = None
        self._periodic: list[tuple[float, Callable[[], None]]] = []
        self._workers: list[tuple[str, Worker]] = []
        self._threads: list[threading.Thread] = []
        self._worker_threads: list[threading.Thread] = []
        self.abandoned: list[str] = []  # own loops still running when stop() gave up on them
        self.crashed: list[str] = []  # workers that raised: the process exits non-zero

    def prepare(self, migrate: bool = True, topics: bool = True) -> None:
        """Check dependencies up front so a bad setting fails fast with one line."""
        if migrate:
            db.migrate(self.settings.database_url)
        if topics:
            ensure_topics(self.settings.kafka_bootstrap_servers)

    def add_consumer(self, consumer: Consumer) -> Consumer:
        self.consumers.append(consumer)
        return consumer

    def add_outbox_relay(self) -> OutboxRelay:
        self.relay = OutboxRelay(
            self.settings.database_url, self.settings.kafka_bootstrap_servers,
            outbox_retention_s=self.settings.outbox_retention_s,
            processed_retention_s=self.settings.processed_events_retention_s,
            topics=self.settings.outbox_topics.split(","))
        return self.relay

    def add_grpc(self, registrations: Sequence[Registration], max_workers: int = 16,
                 max_concurrent_rpcs: int | None = None) -> GrpcServer:
        metrics = self.settings.metrics_port or None
        self.grpc = GrpcServer(registrations, port=self.settings.grpc_port,
                               host=self.settings.grpc_host,
                               max_workers=max_workers, metrics_port=metrics,
                               max_concurrent_rpcs=max_concurrent_rpcs)
        return self.grpc

    def every(self, seconds: float, job: Callable[[], None]) -> None:
        self._periodic.append((seconds, job))

    def add_worker(self, name: str, worker: Worker) -> None:
        """A loop of the service's own, started with the others and stopped with them.

        One that has not returned within the shutdown grace is abandoned (a native
        computation in progress, such as an XLA step, cannot be interrupted): `run_forever`
        then ends the process at once, because interpreter shutdown aborts under it. Its
        work must therefore be resumable from Postgres (the training worker's is)."""
        self._workers.append((name, worker))

    def _spawn(self, target: Callable[[], None], name: str,
               into: list[threading.Thread] | None = None) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception:
                # Consumers and the relay recover from every fault themselves; reaching this
                # is a bug or a bad configuration: stop, exit non-zero, let the supervisor
                # restart us.
                log.exception("worker crashed; stopping the service", extra={"worker": name})
                self.crashed.append(name)
                self.stop_event.set()

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        (self._threads if into is None else into).append(t)

    def _periodic_loop(self, seconds: float, job: Callable[[], None]) -> None:
        outage_log = Throttle(60.0)
        while not self.stop_event.wait(seconds):
            try:
                job()
            except Exception as exc:
                if not db.is_outage(exc):
                    log.exception("periodic job failed")
                elif outage_log.due():  # one line a minute, not a traceback every pass
                    log.warning("periodic job postponed: database unavailable",
                                extra={"job": getattr(job, "__name__", "job"),
                                       "error": str(exc)[:300]})

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def start(self) -> None:
        if self.grpc is not None:
            self.grpc.start()
        else:  # a service without gRPC (the embedding worker) still serves its metrics
            metrics.serve(self.settings.metrics_port, self.settings.grpc_host)
        for c in self.consumers:
            self._spawn(c.run, f"consumer-{c.name}")
        if self.relay is not None:
            self._spawn(self.relay.run, "outbox-relay")
        for seconds, job in self._periodic:
            self._spawn(lambda s=seconds, j=job: self._periodic_loop(s, j), "periodic")
        for name, worker in self._workers:
            self._spawn(worker.run, name, into=self._worker_threads)
        log.info("service started", extra={"service": self.name})

    def stop(self) -> None:
        self.stop_event.set()
        if self.grpc is not None:
            self.grpc.stop(self.settings.shutdown_grace_s)
        for c in self.consumers:
            c.stop()
        if self.relay is not None:
            self.relay.stop()
        for _, worker in self._workers:
            worker.stop()
        for t in self._threads:
            t.join(timeout=self.settings.shutdown_grace_s + 10)
        for t in self._worker_threads:
            t.join(timeout=self.settings.shutdown_grace_s)
        self.abandoned = [t.name for t in self._worker_threads if t.is_alive()]
        log.info("service stopped", extra={"service": self.name})

    def run_forever(self) -> int:
        self.install_signal_handlers()
        self.start()
        self.stop_event.wait()
        self.stop()
        if self.abandoned:
            log.warning("exiting with work in progress; it resumes on restart",
                        extra={"service": self.name, "workers": ",".join(self.abandoned)})
            logging.shutdown()
            os._exit(1 if self.crashed else 0)  # a running XLA computation aborts a normal exit
        return 1 if self.crashed else 0
