"""gRPC server bootstrap shared by every service: health, reflection, metrics, deadlines.

Each service registers its servicers; the bootstrap adds the standard health service (so
Kubernetes gRPC probes work), server reflection (grpcurl / `buf curl`), a Prometheus
interceptor (requests by method and code, latency), the bearer-token check of every call
(runtime/auth.py; TLS, mutual with a CA, when MAGICLENS_TLS_* are set) and graceful stop with
a grace period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime import auth, metrics, tracing
from runtime.limits import MAX_GRPC_MESSAGE_BYTES

log = logging.getLogger(__name__)

RPC_TOTAL = metrics.counter("magiclens_grpc_requests_total", "gRPC requests", ["method", "code"])
RPC_SECONDS = metrics.histogram("magiclens_grpc_request_seconds", "gRPC request latency",
                                ["method"])


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times unary RPCs by method and status code."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary

        def wrapped(request, context):
            start = time.perf_counter()
            code = "OK"
            try:
                return inner(request, context)
            except Exception:
                code = "UNKNOWN"
                raise
            finally:
                state_code = getattr(context, "code", lambda: None)()
                if state_code is not None and hasattr(state_code, "name"):
                    code = state_code.name
                RPC_TOTAL.labels(method, code).inc()
                RPC_SECONDS.labels(method).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


Registration = tuple[Callable[[object, grpc.Server], None], object, str]


class GrpcServer:
    """A grpc.Server with the suite's standard services; `start()` returns the bound port."""

    def __init__(self, registrations: Sequence[Registration], port: int = 0,
                 host: str = "127.0.0.1", max_workers: int = 16, metrics_port: int | None = None,
                 tokens: auth.Tokens | None = None,
                 credentials: grpc.ServerCredentials | None = None,
                 max_concurrent_rpcs: int | None = None) -> None:
        """`tokens` default to auth.server_tokens() (the environment, else the local token
        file); `credentials` to auth.server_credentials() (None: plaintext).
        `max_concurrent_rpcs`: calls beyond it are refused at once with RESOURCE_EXHAUSTED
        (None: no limit, and calls beyond `max_workers` queue unseen, without a bound)."""
        tokens = tokens if tokens is not None else auth.server_tokens()
        credentials = credentials if credentials is not None else auth.server_credentials()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # Tracing first (a refused call is still a span of its trace), then metrics, so
            # refused calls are counted under their status code.
            interceptors=[*tracing.server_interceptors(), MetricsInterceptor(),
                          auth.AuthInterceptor(tokens)],
            options=[("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES)],
            maximum_concurrent_rpcs=max_concurrent_rpcs)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        self.service_names = []
        for add, servicer, full_name in registrations:
            add(servicer, self.server)
            names.append(full_name)
            self.service_names.append(full_name)
        reflection.enable_server_reflection(names, self.server)
        self.tls = credentials is not None
        self.port = (self.server.add_secure_port(f"{host}:{port}", credentials) if self.tls
                     else self.server.add_insecure_port(f"{host}:{port}"))
        if self.port == 0:
            raise OSError(f"could not bind gRPC port {host}:{port} (in use?)")
        self.metrics_port = metrics_port
        self.host = host

    def start(self) -> int:
        if self.metrics_port is not None:
            # Same interface as the gRPC port: all interfaces in a pod, loopback on a laptop.
            metrics.serve(self.metrics_port, self.host)
        self.server.start()
        self.set_serving(True)
        log.info("gRPC server listening", extra={"host": self.host, "port": self.port,
                                                 "tls": self.tls,
                                                 "services": ",".join(self.service_names)})
        return self.port

    def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set("", status)
        for name in self.service_names:
            self.health.set(name, status)

    def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, then let in-flight RPCs finish within the grace period."""
        self.set_serving(False)
        self.server.stop(grace).wait(grace + 1)
