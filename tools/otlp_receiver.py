"""An in-process OTLP/gRPC trace receiver: what the tests and `bench/search_e2e.py --trace`
point the services' `OTEL_EXPORTER_OTLP_ENDPOINT` at, to read the spans they export.

It implements the OpenTelemetry collector's TraceService with the official protos
(opentelemetry-proto) and keeps flat span records; for anything beyond a test or a bench,
run a real collector (the OpenTelemetry Collector, Jaeger) on the same endpoint instead.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class SpanRecord:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        got = []
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(SpanRecord(service, s.name, s.trace_id.hex(), s.span_id.hex(),
                                          s.parent_span_id.hex(), s.start_time_unix_nano,
                                          s.end_time_unix_nano))
        with self.receiver.lock:
            self.receiver.spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Listens on 127.0.0.1:`port` (0: any free port); `endpoint` is what OTEL_EXPORTER_
    OTLP_ENDPOINT should say."""

    def __init__(self, port: int = 0) -> None:
        self.spans: list[SpanRecord] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self),
                                                                  self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        if self.port == 0:
            raise OSError(f"could not bind 127.0.0.1:{port} for the OTLP receiver")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a traced process needs: the endpoint, plaintext, a short batching delay."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
                "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "200"}

    def snapshot(self) -> list[SpanRecord]:
        with self.lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[SpanRecord]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def clear(self) -> None:
        with self.lock:
            self.spans.clear()

    def close(self) -> None:
        self.server.stop(0)
