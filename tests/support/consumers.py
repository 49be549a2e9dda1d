"""A bus consumer run in a thread for tests, and a private topic to run it on."""

from __future__ import annotations

import threading

from magiclens.v1 import events_pb2

from runtime.bus import Consumer
from runtime.topics import Topic
from tests.support.processes import wait_for


def page_topic(name: str, partitions: int = 2) -> Topic:
    """A private topic carrying PageDiscovered (JSON accepted, like the ingestion topic)."""
    return Topic(name, "url", events_pb2.PageDiscovered, ("test",), ("test",), partitions,
                 accepts_json=True, json_fields=("url",))


class Running:
    """consumer.run() in a thread; a crash is kept and fails the waits at once."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:  # the test reports it
            self.error = exc

    def alive(self) -> bool:
        return self.error is None and self.thread.is_alive()

    def wait(self, predicate, timeout: float, what: str) -> None:
        def done() -> bool:
            if self.error is not None:
                raise AssertionError(f"the consumer crashed: {self.error!r}") from self.error
            if not self.thread.is_alive():
                raise AssertionError("the consumer stopped by itself")
            return predicate()

        wait_for(done, timeout, what, interval=0.1)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.consumer.stop()
        self.thread.join(30)
