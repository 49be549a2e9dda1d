"""Trace context crosses Kafka: a span that writes an outbox row is the parent of the span
that consumes the event, in another process, through the relay (real Postgres, Tansu, the
outbox relay service, and an OTLP receiver)."""

from __future__ import annotations

import json
import subprocess
import sys

from runtime.bus import TRACEPARENT
from tests.support.processes import ROOT, running, wait_for
from tools.otlp_receiver import OtlpReceiver


def _run(env: dict[str, str], *args: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "tests.runtime.traced_events", *args], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_consumed_event_continues_the_trace_that_wrote_it(infra_servers, unique, tmp_path):
    receiver = OtlpReceiver()
    try:
        env = infra_servers.env(**receiver.env())
        topic, key = f"test.traced.{unique}", f"https://example.org/{unique}"
        produced = _run(env, "produce", topic, key)
        with running("services.outbox_relay", env=env, log=tmp_path / "relay.log"):
            headers = _run(env, "consume", topic, key)
        assert TRACEPARENT in headers, headers  # the relay sent the row's trace context

        def spans():
            got = {(s.service, s.name): s for s in receiver.snapshot()}
            return got if {("test-produce", "submit page"),
                           ("test-consume", f"consume {topic}")} <= got.keys() else None

        got = wait_for(spans, 30, "the producer's and the consumer's spans")
        submit = got["test-produce", "submit page"]
        consume = got["test-consume", f"consume {topic}"]
        assert submit.span_id == produced["span_id"]
        assert consume.trace_id == submit.trace_id and consume.parent_id == submit.span_id
    finally:
        receiver.close()
