"""OpenTelemetry tracing: where a search's milliseconds go, across processes.

Off unless configured, with the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g.
`http://127.0.0.1:4317`, any OTLP/gRPC collector: the OpenTelemetry Collector, Jaeger,
Tempo) or `OTEL_TRACES_EXPORTER=otlp`, and `OTEL_SDK_DISABLED=true` to force it off. Off,
every span here is a no-op.

Off, nothing of OpenTelemetry is even imported (the CLI's start-up stays short). On,
`setup(service)` installs a tracer provider that batches spans to the exporter; gRPC
calls between the suite's services carry the W3C `traceparent` in their metadata (the
interceptors below, which GrpcServer and rpc.channel add), and calls to Triton carry it as a
request parameter (`TRITON_PARAMETER`), which the embedding server reads to parent its own
spans. So one search is one trace: root → Triton (decode, towers, head) → shards (ScaNN).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

TRITON_PARAMETER = "traceparent"
T = TypeVar("T")
_enabled = False


def configured() -> bool:
    """Whether the environment asks for traces."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "otlp")


def setup(service: str) -> bool:
    """Install the SDK's tracer provider for this process when configured; idempotent."""
    global _enabled
    if _enabled or not configured():
        return _enabled
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # flush what is batched
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def span(name: str, context: Any = None, **attributes: Any) -> Iterator[Any]:
    """A span, child of the current one (or of `context`); a no-op when tracing is off."""
    if not _enabled:
        yield None
        return
    from opentelemetry import trace

    with trace.get_tracer("magiclens").start_as_current_span(
            name, context=context, attributes=attributes or None) as s:
        yield s


def in_current_context(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` bound to the caller's trace context, for running it on another thread."""
    if not _enabled:
        return fn
    from opentelemetry import context as otel_context

    ctx = otel_context.get_current()

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        token = otel_context.attach(ctx)
        try:
            return fn(*args, **kwargs)
        finally:
            otel_context.detach(token)

    return run


def traceparent() -> str:
    """The current span's W3C traceparent ("" when tracing is off or no span is open)."""
    if not _enabled:
        return ""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def context_from_traceparent(value: str) -> Any:
    """The remote parent (an OpenTelemetry Context) named by a traceparent, or None."""
    if not value or not _enabled:
        return None
    from opentelemetry import propagate

    return propagate.extract({"traceparent": value})


def server_interceptors() -> list:
    """gRPC server interceptors that continue the caller's trace (none when off)."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor()]


def traced_channel(channel: Any) -> Any:
    """`channel` with a client span per call that sends traceparent (unchanged when off).

    OpenTelemetry's client interceptor implements its own interceptor protocol (grpcext),
    so it wraps a channel with grpcext.intercept_channel, not grpc.intercept_channel."""
    if not _enabled:
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

    return intercept_channel(channel, client_interceptor())
