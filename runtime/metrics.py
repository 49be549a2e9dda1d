"""Prometheus metrics: the naming rules, the series the runtime itself reports, the endpoint.

Why one module: every process exports the same operator-facing series (consumer lag, dead
letters, outbox backlog, pipeline rates) under one set of names, and a service declares its
own (LLM calls, training steps, shard freshness) through `counter` / `gauge` / `histogram`,
which refuse names that break the conventions the dashboard and alerts rely on
(`magiclens_` prefix, base units `_seconds` / `_bytes`, counters ending `_total`).
`DEFINED` lists every series declared in this process; the deploy tests check that the
dashboard and the alert rules name only those. The table is in docs/operations.md.

Gauges that describe a backlog are sampled periodically by the loop that owns the
connection (the consumer's poll loop, the relay's loop), never per event: `Every(seconds)`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_NAME = re.compile(r"^magiclens_[a-z][a-z0-9_]*$")
# Names a series must not end in: the exposition format's own suffixes, or a unit that is
# not a base unit (milliseconds, kilobytes...).
_BAD_SUFFIXES = ("_ms", "_millis", "_milliseconds", "_kb", "_mb", "_count", "_sum",
                 "_bucket", "_created")

# name -> type ("counter", "gauge", "histogram"); the exposed names add _total / _bucket...
DEFINED: dict[str, str] = {}
_lock = threading.Lock()


def _check(name: str, kind: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"metric {name!r} must match {_NAME.pattern}")
    if name.endswith(_BAD_SUFFIXES):
        raise ValueError(f"metric {name!r} ends in a reserved or non-base-unit suffix")
    if (kind == "counter") != name.endswith("_total"):
        raise ValueError(f"metric {name!r}: counters, and only counters, end in _total")
    with _lock:
        if name in DEFINED:
            raise ValueError(f"metric {name!r} is defined twice")
        DEFINED[name] = kind


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    """A counter; `name` ends in `_total` (prometheus_client exposes it under that name)."""
    _check(name, "counter")
    return Counter(name.removesuffix("_total"), doc, list(labels))


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    _check(name, "gauge")
    return Gauge(name, doc, list(labels))


def histogram(name: str, doc: str, labels: Sequence[str] = (),
              buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS) -> Histogram:
    _check(name, "histogram")
    return Histogram(name, doc, list(labels), buckets=tuple(buckets))


def exposed_names() -> set[str]:
    """Every series name a scrape of this process can show (histograms as their three)."""
    out = set()
    for name, kind in DEFINED.items():
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out


class Every:
    """True at most once per `seconds` (the first call is due): periodic sampling inside a
    loop that owns its connection, so the sample costs nothing per event."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


_served: set[int] = set()


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on host:port (0: not at all); once per process and port."""
    if not port or port in _served:
        return
    start_http_server(port, addr=host)
    _served.add(port)
    log.info("metrics endpoint listening", extra={"host": host, "port": port})


# ------------------------------------------------------------------ the runtime's own series
SAMPLE_INTERVAL_S = 15.0  # how often backlog gauges are re-read (a scrape interval)

CONSUMER_LAG = gauge(
    "magiclens_kafka_consumer_lag_records",
    "Records in a partition past this consumer's position (end offset minus position)",
    ["group", "topic", "partition"])
CONSUMER_EVENTS = counter(
    "magiclens_consumer_events_total",
    "Events a consumer handled, by outcome (applied, duplicate, dead_lettered)",
    ["consumer", "outcome"])
CONSUMER_HANDLE_SECONDS = histogram(
    "magiclens_consumer_handle_seconds", "Time to apply one event (its transaction)",
    ["consumer"])
DEAD_LETTERS = counter(
    "magiclens_dead_letters_total",
    "Events dead-lettered, by consumer and reason (undecodable, invalid, failed, "
    "reconcile_failed)", ["consumer", "reason"])
OUTBOX_BACKLOG = gauge(
    "magiclens_outbox_backlog_rows",
    "Outbox rows not yet published (parked rows excluded), of this relay's topics", ["topic"])
OUTBOX_OLDEST_AGE = gauge(
    "magiclens_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row (0 when none), of this relay's topics",
    ["topic"])
OUTBOX_PARKED = gauge(
    "magiclens_outbox_parked_rows", "Outbox rows the broker refused for good (failed_at)",
    ["topic"])
OUTBOX_PUBLISHED = counter(
    "magiclens_outbox_published_total", "Outbox rows this relay published", ["topic"])
PIPELINE_ITEMS = counter(
    "magiclens_pipeline_items_total",
    "Items each pipeline stage produced (pages_mined, images_stored, pairs_mined, "
    "triples_written, embeddings_written)", ["stage"])

STAGES = ("pages_mined", "images_stored", "pairs_mined", "triples_written",
          "embeddings_written")


def pipeline(stage: str, n: int = 1) -> None:
    """Count `n` items produced by a pipeline stage (one of STAGES)."""
    if stage not in STAGES:
        raise ValueError(f"unknown pipeline stage {stage!r}")
    if n:
        PIPELINE_ITEMS.labels(stage).inc(n)
