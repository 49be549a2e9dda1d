"""The SearchService on raw protobuf requests: one query, the index status, and results as
plain dicts, for benchmarks that time the bare call (bench/freshness.py). The CLI and the web
gateway use the typed client, magiclens_client.

Failures are RpcFailure (runtime/rpc.py); each client maps its gRPC status its own way.
"""

from __future__ import annotations

from typing import Any

from magiclens.v1 import search_pb2, search_pb2_grpc

from runtime.auth import READ
from runtime.limits import MAX_IMAGE_ID
from runtime.rpc import RpcFailure, call, channel

SERVICE = "search"
STATUS_RPC_TIMEOUT_S = 3.0


class SearchClient:
    """One channel to the search root, reused by every call (a long-lived caller such as the
    gateway; a channel per request paid a TCP and HTTP/2 handshake each time). Thread-safe,
    as gRPC channels are; it reconnects by itself after the root restarts."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self._channel = channel(addr, role=READ)
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)

    def search(self, request: search_pb2.SearchRequest,
               timeout: float) -> search_pb2.SearchResponse:
        return call(SERVICE, self.addr, self._stub.Search, request, timeout)

    def index_status(self, timeout: float = STATUS_RPC_TIMEOUT_S) -> dict[str, Any]:
        """The search root's view, or {"error": one line} when it cannot be asked."""
        try:
            st = call(SERVICE, self.addr, self._stub.GetIndexStatus,
                      search_pb2.GetIndexStatusRequest(), timeout)
        except RpcFailure as exc:
            return {"available": False, "error": str(exc)}
        return {"available": True, "model_version": st.model_version,
                "num_vectors": st.num_vectors, "shards": st.shards, "shards_up": st.shards_up,
                "freshness_p50_s": st.freshness_p50_s}

    def close(self) -> None:
        self._channel.close()


def hit_dict(h: search_pb2.SearchHit) -> dict[str, Any]:
    c = h.context
    return {"image_id": h.image_id, "image_url": h.image_url, "score": round(h.score, 6),
            "page_url": c.page_url, "page_title": c.page_title, "alt_text": c.alt_text,
            "caption": c.caption}


def response_dict(resp: search_pb2.SearchResponse) -> dict[str, Any]:
    return {"model_version": resp.model_version, "partial": resp.partial,
            "missing_shards": list(resp.missing_shards),
            "hits": [hit_dict(h) for h in resp.hits]}


def parse_image_id(text: str) -> int | None:
    """A positive pool id written as plain digits, else None."""
    text = text.strip()
    if not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if 0 < value <= MAX_IMAGE_ID else None
