"""Both ends of one traced event, each run as its own process by test_runtime_tracing.py:

    python -m tests.runtime.traced_events produce TOPIC KEY   # a span that writes the outbox row
    python -m tests.runtime.traced_events consume TOPIC KEY   # consumes it; prints its headers

Tracing is on in these processes only (the test passes its OTLP receiver's endpoint), so the
test run's own process stays untraced."""

from __future__ import annotations

import json
import os
import sys

from magiclens.v1 import events_pb2

from runtime import db, outbox, tracing
from runtime.bus import Consumer, ensure_topics
from tests.support.consumers import Running, page_topic


def main() -> int:
    action, topic_name, key = sys.argv[1:4]
    url, bootstrap = os.environ["DATABASE_URL"], os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    topic = page_topic(topic_name)
    assert tracing.setup(f"test-{action}"), "tracing is not configured"
    if action == "produce":
        ensure_topics(bootstrap, [topic])
        with tracing.span("submit page") as span, db.transaction(url) as conn:
            outbox.enqueue(conn, topic, key, events_pb2.PageDiscovered(url=key))
            print(json.dumps({"span_id": format(span.get_span_context().span_id, "016x")}))
        return 0
    seen: list[dict[str, str]] = []
    consumer = Consumer(f"traced-{topic_name}", bootstrap, url, [topic],
                        lambda conn, event: seen.append(event.headers))
    with Running(consumer) as running:
        running.wait(lambda: seen, 60, "the traced event")
    print(json.dumps(seen[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
