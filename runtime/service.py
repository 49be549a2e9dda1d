"""Process lifecycle shared by every service: start workers, stop them gracefully.

A service is a gRPC server plus background workers (Kafka consumers, the outbox relay,
periodic jobs). On SIGTERM/SIGINT it reports NOT_SERVING, lets in-flight RPCs finish, lets
each consumer finish (and commit) its current event, and flushes the relay.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence

from runtime import db
from runtime.bus import Consumer, ensure_topics
from runtime.config import BaseServiceSettings
from runtime.grpc_server import GrpcServer, Registration
from runtime.outbox import OutboxRelay

log = logging.getLogger(__name__)


class Service:
    def __init__(self, name: str, settings: BaseServiceSettings) -> None:
        self.name = name
        self.settings = settings
        self.stop_event = threading.Event()
        self.consumers: list[Consumer] = []
        self.relay: OutboxRelay | None = None
        self.grpc: GrpcServer | None = None
        self._periodic: list[tuple[float, Callable[[], None]]] = []
        self._threads: list[threading.Thread] = []

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
        self.relay = OutboxRelay(self.settings.database_url,
                                 self.settings.kafka_bootstrap_servers)
        return self.relay

    def add_grpc(self, registrations: Sequence[Registration], max_workers: int = 16) -> GrpcServer:
        metrics = self.settings.metrics_port or None
        self.grpc = GrpcServer(registrations, port=self.settings.grpc_port,
                               host="0.0.0.0" if self.settings.grpc_port else "127.0.0.1",
                               max_workers=max_workers, metrics_port=metrics)
        return self.grpc

    def every(self, seconds: float, job: Callable[[], None]) -> None:
        self._periodic.append((seconds, job))

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception:
                log.exception("worker crashed; stopping the service", extra={"worker": name})
                self.stop_event.set()

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _periodic_loop(self, seconds: float, job: Callable[[], None]) -> None:
        while not self.stop_event.wait(seconds):
            try:
                job()
            except Exception:
                log.exception("periodic job failed")

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def start(self) -> None:
        if self.grpc is not None:
            self.grpc.start()
        for c in self.consumers:
            self._spawn(c.run, f"consumer-{c.name}")
        if self.relay is not None:
            self._spawn(self.relay.run, "outbox-relay")
        for seconds, job in self._periodic:
            self._spawn(lambda s=seconds, j=job: self._periodic_loop(s, j), "periodic")
        log.info("service started", extra={"service": self.name})

    def stop(self) -> None:
        self.stop_event.set()
        if self.grpc is not None:
            self.grpc.stop(self.settings.shutdown_grace_s)
        for c in self.consumers:
            c.stop()
        if self.relay is not None:
            self.relay.stop()
        for t in self._threads:
            t.join(timeout=self.settings.shutdown_grace_s + 10)
        log.info("service stopped", extra={"service": self.name})

    def run_forever(self) -> int:
        self.install_signal_handlers()
        self.start()
        self.stop_event.wait()
        self.stop()
        return 0
