"""MagicLensClient: the suite's gRPC API (search, index status, takedowns) as typed calls.

One channel per service and role, opened on first use and reused (gRPC channels are
thread-safe and reconnect by themselves); close() or a `with` block releases them. The token
is sent as `authorization: Bearer`; without `token=` the process's MAGICLENS_TOKEN (or, in a
checkout, its local token file) is used, and TLS is on when MAGICLENS_TLS_CA is set
(runtime/auth.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from magiclens.v1 import common_pb2, mining_pb2, mining_pb2_grpc, search_pb2, search_pb2_grpc

from magiclens_client.errors import InvalidRequest, error_for
from magiclens_client.types import DeleteResult, IndexStatus, SearchResult
from runtime import auth, rpc
from runtime.limits import (
    MAX_IMAGE_ID,
    MAX_INSTRUCTION_CHARS,
    MAX_K,
    MAX_QUERY_IMAGE_BYTES,
    MAX_URL_CHARS,
)
from runtime.ports import check_addr

T = TypeVar("T")
ImageRef = bytes | bytearray | memoryview | int | str | os.PathLike[str]
"""A query image: its bytes, a pool image id (int), an http(s) URL, or a file path."""

MAX_REASON_CHARS = 500  # as the mining service enforces (services/mining/takedown.py)
DEFAULT_TIMEOUT_S = 30.0


class MagicLensClient:
    """Calls a MagicLens deployment: `addr` is the search root (host:port), `mining_addr` the
    mining service (needed only for delete). `token` is the bearer token to send."""

    def __init__(self, addr: str, token: str | None = None, *, mining_addr: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.addr = check_addr(addr)
        self.mining_addr = check_addr(mining_addr) if mining_addr else None
        if not 0 < timeout <= 3600:
            raise ValueError(f"timeout must be in (0, 3600] seconds (got {timeout})")
        self.timeout = timeout
        self._token = token
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self._lock = threading.Lock()  # one channel per (addr, role) when threads share us

    # ------------------------------------------------------------------ calls
    def search(self, image: ImageRef | None, instruction: str = "", k: int = 10, *,
               source: str = "", domain: str = "", include_query_image: bool = False,
               timeout: float | None = None) -> SearchResult:
        """The k pool images that best match `image` changed as `instruction` says, best
        first. The query image and its copies are left out unless include_query_image.
        `image=None` searches by the instruction alone (text-to-image)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise self._invalid("search", self.addr, f"k must be between 1 and {MAX_K} (got {k!r})")
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise self._invalid("search", self.addr, "instruction is longer than "
                                f"{MAX_INSTRUCTION_CHARS} characters")
        if image is None and not instruction.strip():
            raise self._invalid("search", self.addr, "give an image, an instruction, or both "
                                "(an instruction alone searches by text)")
        query = common_pb2.ImageInput() if image is None else self._image_input(image)
        request = search_pb2.SearchRequest(
            query=query, instruction=instruction, k=k,
            include_query_image=include_query_image,
            filters=search_pb2.SearchFilters(source=source, page_domain=domain))
        stub = search_pb2_grpc.SearchServiceStub(self._channel(self.addr, auth.READ))
        resp = self._call("search", self.addr, stub.Search, request, timeout)
        return SearchResult.from_proto(resp)

    def index_status(self, timeout: float | None = None) -> IndexStatus:
        """What the search root serves now (model version, vectors, shards up, freshness)."""
        stub = search_pb2_grpc.SearchServiceStub(self._channel(self.addr, auth.READ))
        st = self._call("search", self.addr, stub.GetIndexStatus,
                        search_pb2.GetIndexStatusRequest(), timeout)
        return IndexStatus.from_proto(st)

    def delete(self, *, image_id: int | None = None, page_url: str | None = None,
               domain: str | None = None, reason: str = "",
               timeout: float | None = None) -> DeleteResult:
        """Take content down at once (an admin token): one image, a page and its images, or
        a whole domain, which is then never mined again. Give exactly one target."""
        if self.mining_addr is None:
            raise ValueError("delete needs the mining service: MagicLensClient(..., "
                             "mining_addr='host:port')")
        addr = self.mining_addr
        given = [t for t in (image_id, page_url, domain) if t is not None]
        if len(given) != 1:
            raise self._invalid("mining", addr, "give exactly one of image_id, page_url, domain")
        if len(reason) > MAX_REASON_CHARS:
            raise self._invalid("mining", addr, f"reason is longer than {MAX_REASON_CHARS} "
                                "characters")
        if image_id is not None:
            if isinstance(image_id, bool) or not 0 < image_id <= MAX_IMAGE_ID:
                raise self._invalid("mining", addr, "image_id must be a positive pool image id")
            request = mining_pb2.DeleteContentRequest(image_id=image_id, reason=reason)
        elif page_url is not None:
            request = mining_pb2.DeleteContentRequest(page_url=page_url, reason=reason)
        else:
            request = mining_pb2.DeleteContentRequest(domain=domain, reason=reason)
        stub = mining_pb2_grpc.MiningServiceStub(self._channel(addr, auth.ADMIN))
        return DeleteResult.from_proto(self._call("mining", addr, stub.DeleteContent, request,
                                                  timeout))

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()

    def __enter__(self) -> MagicLensClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _channel(self, addr: str, role: str) -> grpc.Channel:
        key = (addr, role)
        with self._lock:
            if key not in self._channels:
                self._channels[key] = rpc.channel(addr, role=role, token=self._token)
            return self._channels[key]

    def _call(self, service: str, addr: str, fn: Callable[..., T], request: object,
              timeout: float | None) -> T:
        try:
            return rpc.call(service, addr, fn, request, timeout or self.timeout)
        except rpc.RpcFailure as exc:
            raise error_for(exc) from None

    @staticmethod
    def _invalid(service: str, addr: str, message: str) -> InvalidRequest:
        return InvalidRequest(message, "INVALID_ARGUMENT", service, addr)

    def _image_input(self, image: ImageRef) -> common_pb2.ImageInput:
        """bytes → image_bytes, int → image_id, "http(s)://…" → image_url, else a file."""
        def bad(message: str) -> InvalidRequest:
            return self._invalid("search", self.addr, message)

        if isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
            if not data:
                raise bad("the query image is empty")
            if len(data) > MAX_QUERY_IMAGE_BYTES:
                raise bad(f"the query image is {len(data)} bytes, over the "
                          f"{MAX_QUERY_IMAGE_BYTES} byte limit")
            return common_pb2.ImageInput(image_bytes=data)
        if isinstance(image, int) and not isinstance(image, bool):
            if not 0 < image <= MAX_IMAGE_ID:
                raise bad(f"image id must be a positive pool image id (got {image})")
            return common_pb2.ImageInput(image_id=image)
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            if len(image) > MAX_URL_CHARS:
                raise bad(f"the image URL is longer than {MAX_URL_CHARS} characters")
            return common_pb2.ImageInput(image_url=image)
        if isinstance(image, str | os.PathLike):
            path = Path(image).expanduser()
            try:
                size = path.stat().st_size
            except OSError:
                raise bad(f"{image}: no such file") from None
            if not path.is_file():
                raise bad(f"{image}: not a regular file")
            if size == 0:
                raise bad(f"{image}: the file is empty")
            if size > MAX_QUERY_IMAGE_BYTES:
                raise bad(f"{image}: {size} bytes is over the {MAX_QUERY_IMAGE_BYTES} byte "
                          "limit for a query image")
            try:
                return self._image_input(path.read_bytes())
            except OSError as exc:
                raise bad(f"{image}: cannot read ({exc.strerror})") from None
        raise TypeError("image must be bytes, a pool image id (int), an http(s) URL or a "
                        f"file path, not {type(image).__name__}")
