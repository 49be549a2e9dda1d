"""A bus consumer run in a thread for tests, and a private topic to run it on."""

from __future__ import annotations

import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
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


def log_ends(bootstrap: str, topic: str, records: int, timeout: float = 60) -> dict[int, int]:
    """{partition: the offset after its last record} of a topic known to hold `records`
    records, read from the beginning (Tansu's reported end offsets are wrong: platform notes)."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic))]
        reader.assign(parts)
        reader.seek_to_beginning(*parts)
        ends: dict[int, int] = {}
        seen, deadline = 0, time.monotonic() + timeout
        while seen < records:
            assert time.monotonic() < deadline, f"only {seen} of {records} records in {topic}"
            for tp, batch in reader.poll(timeout_ms=500).items():
                seen += len(batch)
                ends[tp.partition] = batch[-1].offset + 1
        return ends
    finally:
        reader.close(autocommit=False)


def committed_past(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> bool:
    """Whether `group` has committed offsets at or past `ends` on every partition: its
    consumer has had (and taken) its chance at every record up to there."""
    parts = [TopicPartition(topic, p) for p in ends]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        committed = admin.list_group_offsets({group: parts})[group]
    finally:
        admin.close()
    return all((c := committed.get(tp)) is not None and c.offset >= ends[tp.partition]
               for tp in parts)  # an uncommitted partition reads -1
