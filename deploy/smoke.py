"""Smoke test of a running suite: every service's health endpoint, then one Search.

Works against anything reachable from here: port-forwards to a cluster (deploy/tool.py sets
them up) or local processes. Targets are `name=host:port`; the kind of check follows the
workload table (gRPC health for gRPC services, HTTP for the gateway and Triton).

    python -m deploy.smoke --target search-root=127.0.0.1:50055 --target mining=127.0.0.1:50051
    python -m deploy.smoke ... --search search-root --min-hits 1

Exit 0 when every check passes; otherwise one line per failure and exit 1.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from magiclens.v1 import common_pb2, search_pb2, search_pb2_grpc
from PIL import Image

from deploy import catalog
from runtime import auth, rpc


@dataclass(frozen=True)
class Target:
    name: str
    address: str  # host:port


def parse_target(text: str) -> Target:
    name, sep, addr = text.partition("=")
    host, _, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not name=host:port")
    return Target(name, addr)


def grpc_health(address: str, timeout: float) -> str | None:
    """None when SERVING, otherwise a one-line reason."""
    with grpc.insecure_channel(address) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            return f"health check failed: {exc.code().name}: {exc.details()}"
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        return f"health status {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
    return None


def http_health(address: str, path: str, timeout: float) -> str | None:
    try:
        r = httpx.get(f"http://{address}{path}", timeout=timeout)
    except httpx.HTTPError as exc:
        return f"GET {path} failed: {type(exc).__name__}: {exc}"
    return None if r.status_code == 200 else f"GET {path} returned HTTP {r.status_code}"


def check_target(t: Target, timeout: float) -> str | None:
    w = catalog.BY_NAME.get(t.name)
    if w is not None and not w.grpc_port and w.http_port:
        return http_health(t.address, w.http_health_path, timeout)
    return grpc_health(t.address, timeout)


def _query_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def search(address: str, instruction: str, k: int, timeout: float) -> tuple[str | None, int]:
    """One Search call; returns (problem or None, number of hits)."""
    req = search_pb2.SearchRequest(query=common_pb2.ImageInput(image_bytes=_query_png()),
                                   instruction=instruction, k=k)
    with rpc.channel(address, role=auth.READ) as ch:
        try:
            resp = search_pb2_grpc.SearchServiceStub(ch).Search(req, timeout=timeout)
        except grpc.RpcError as exc:
            return f"Search failed: {exc.code().name}: {exc.details()}", 0
    if resp.partial:
        return f"Search answered partially (missing shards {list(resp.missing_shards)})", \
            len(resp.hits)
    return None, len(resp.hits)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Smoke-test a running MagicLens suite.")
    ap.add_argument("--target", action="append", type=parse_target, default=[],
                    help="name=host:port (repeat)")
    ap.add_argument("--search", metavar="NAME", help="target to send one Search to")
    ap.add_argument("--instruction", default="the same object in blue")
    ap.add_argument("--min-hits", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    if not args.target:
        ap.error("give at least one --target")
    failures = 0
    for t in args.target:
        problem = check_target(t, args.timeout)
        print(f"smoke: {t.name} ({t.address}): {problem or 'SERVING'}")
        failures += problem is not None
    if args.search:
        addr = {t.name: t.address for t in args.target}.get(args.search)
        if addr is None:
            print(f"smoke: --search {args.search} is not among the targets")
            return 1
        problem, hits = search(addr, args.instruction, 10, args.timeout)
        if problem is None and hits < args.min_hits:
            problem = f"{hits} hits < --min-hits {args.min_hits}"
        print(f"smoke: Search via {args.search}: {problem or f'{hits} hits'}")
        failures += problem is not None
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
