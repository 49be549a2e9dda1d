"""The web gateway: static UI plus a small JSON API over the gRPC SearchService and Postgres,
as a Starlette (ASGI) app; services/gateway/server.py serves it on uvicorn.

Routes
  GET  /, /status, /static/<file>      the UI (plain HTML/JS/CSS from static/)
  GET  /images/<id>                    a pool image's bytes (content type from the stored mime)
  GET  /api/search?image_id=&q=&k=     search by a pool image
  POST /api/search?q=&k=               body = raw image bytes (Content-Type image/*), or JSON
                                       {"image_id"|"image_url", "instruction", "k"}; JSON with
                                       an instruction and no image goes to the search root as
                                       it is (the root decides whether text alone is a query)
                                       (each also takes include_query_image=1 / true: keep
                                       the query image and its copies in the results)
  GET  /api/pool?n=                    a random sample of pool images
  GET  /api/examples                   one-click example queries
  GET  /api/health                     is search up (for the UI's banner)
  GET  /api/status                     pipeline counts, models, index status
  GET  /api/openapi.json               the JSON API's OpenAPI 3.1 description (openapi.py)
Every error is JSON {"error": one line}; search down -> 503.

The event loop never blocks: bodies are read as they stream in (over the limit -> 413 at
once, nothing more is buffered; not whole within MAGICLENS_GATEWAY_BODY_TIMEOUT_S -> 408), and
every gRPC or Postgres call runs in a worker thread, at most MAGICLENS_GATEWAY_MAX_WORKERS at
once (a request that waits MAGICLENS_GATEWAY_QUEUE_TIMEOUT_S for one -> 503 busy).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from magiclens.v1 import common_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from magiclens_client import MagicLensClient
from runtime import db
from runtime.blobstore import open_blobstore
from runtime.errors import ServiceError
from runtime.limits import MAX_K, MAX_URL_CHARS
from runtime.pipeline_status import pipeline_status
from runtime.rpc import RpcFailure
from runtime.search_client import parse_image_id
from services.gateway import store
from services.gateway.config import GatewaySettings
from services.gateway.examples import ExamplesError, load_examples
from services.gateway.openapi import openapi_spec

log = logging.getLogger("magiclens.gateway")
STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,60}\.(html|js|css|svg)$")
MAX_JSON_BODY = 64 * 1024
MAX_QUERY_FIELDS = 20
_HTTP_FOR_GRPC = {"UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
                  "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "RESOURCE_EXHAUSTED": 429,
                  "FAILED_PRECONDITION": 409,
                  "UNIMPLEMENTED": 501}
def _image_ref(query: common_pb2.ImageInput | None) -> bytes | int | str | None:
    """The parsed request's image as the client takes it. A URL must be http(s): the client
    would read any other string as a local file path, which a web request must never name."""
    if query is None:
        return None
    which = query.WhichOneof("source")
    if which == "image_bytes":
        return query.image_bytes
    if which == "image_id":
        return query.image_id
    if which == "image_url":
        if not query.image_url.lower().startswith(("http://", "https://")):
            raise HttpError(400, "image_url must be an http(s) URL")
        return query.image_url
    raise HttpError(400, "the query image is empty")


PAGES = {"/": "index.html", "/index.html": "index.html", "/status": "status.html"}
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
# What a connection beyond MAGICLENS_GATEWAY_MAX_CONNECTIONS gets before it is closed (written
# by server.py as the connection is accepted, before any request is read).
_BUSY_BODY = b'{"error": "too many connections; retry"}\n'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY

Params = dict[str, list[str]]
T = TypeVar("T")


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.extra = status, extra


class Gateway:
    """What the handlers share: settings, the blob store, the database pool, one search
    channel, and the bound on blocking calls in flight."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.blobs = open_blobstore(settings.blob_root)
        self.db = db.Pool(settings.database_url, name="gateway", max_size=4)
        # The typed client the CLI uses too (thread-safe; one channel reused by every call).
        self.search_client = MagicLensClient(settings.search_addr,
                                             timeout=settings.gateway_search_timeout_s)
        # Made on first use, inside the event loop that uses them.
        self._admission: anyio.Semaphore | None = None
        self._threads: anyio.CapacityLimiter | None = None

    def close(self) -> None:
        self.db.close()
        self.search_client.close()

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread (gRPC and psycopg calls block): at most
        gateway_max_workers at once; 503 after waiting gateway_queue_timeout_s for a turn."""
        s = self.settings
        if self._admission is None or self._threads is None:
            self._admission = anyio.Semaphore(s.gateway_max_workers)
            self._threads = anyio.CapacityLimiter(s.gateway_max_workers)
        with anyio.move_on_after(s.gateway_queue_timeout_s) as waited:
            await self._admission.acquire()
        if waited.cancelled_caught:
            raise HttpError(503, f"the gateway is busy ({s.gateway_max_workers} calls to search "
                                 "or the database in flight); retry")
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)
        finally:
            self._admission.release()

    # ------------------------------------------------------------------ search
    def search(self, query: common_pb2.ImageInput | None, instruction: str, k: int,
               include_query_image: bool = False) -> dict[str, Any]:
        """One search (blocking). query None: instruction only, for the root to accept or
        refuse (INVALID_ARGUMENT -> 400)."""
        s = self.settings
        if len(instruction) > s.gateway_max_instruction_chars:
            raise HttpError(400, f"instruction is longer than "
                                 f"{s.gateway_max_instruction_chars} characters")
        if not 1 <= k <= MAX_K:
            raise HttpError(400, f"k must be between 1 and {MAX_K} (got {k})")
        try:
            result = self.search_client.search(
                _image_ref(query), instruction, k, include_query_image=include_query_image,
                timeout=s.gateway_search_timeout_s)
        except RpcFailure as exc:  # magiclens_client's errors are RpcFailures
            status = _HTTP_FOR_GRPC.get(exc.code, 502)
            extra = {"search_available": False} if status == 503 else {}
            raise HttpError(status, str(exc), **extra) from None
        data = result.to_dict()
        for h in data["hits"]:
            h["src"] = f"/images/{h['image_id']}"
        return data

    def status(self) -> dict[str, Any]:
        try:
            data = pipeline_status(self.settings.database_url)
            data["database"] = {"available": True}
        except ServiceError as exc:
            data = {"database": {"available": False, "error": str(exc)}}
        data["search"] = self.index_status()
        return data

    def health(self) -> dict[str, Any]:
        return {"search": self.index_status()}

    def index_status(self) -> dict[str, Any]:
        """The search root's view, or {"available": false, "error": one line}."""
        try:
            st = self.search_client.index_status(self.settings.gateway_status_timeout_s)
        except RpcFailure as exc:
            return {"available": False, "error": str(exc)}
        return {"available": True, **st.to_dict()}

    def image(self, image_id: int) -> tuple[bytes, str]:
        try:
            found = store.image_bytes(self.db, self.blobs, image_id)
        except ServiceError as exc:
            raise HttpError(503, str(exc)) from None
        except store.BlobMissing as exc:
            raise HttpError(404, str(exc)) from None
        if found is None:
            raise HttpError(404, f"no image {image_id} in the pool")
        return found

    def sample(self, n: int) -> list[dict[str, Any]]:
        try:
            return store.sample(self.db, n)
        except ServiceError as exc:
            raise HttpError(503, str(exc)) from None


# ---------------------------------------------------------------------- request helpers
def _params(request: Request) -> Params:
    """The query string as lists of values; over MAX_QUERY_FIELDS fields -> ValueError (400)."""
    return parse_qs(request.scope["query_string"].decode("latin-1"),
                    max_num_fields=MAX_QUERY_FIELDS)


def _int_param(params: Params, name: str, default: int) -> int:
    raw = params.get(name, [""])[0].strip()
    if not raw:
        return default
    if not re.fullmatch(r"-?\d{1,6}", raw):
        raise HttpError(400, f"{name} must be an integer")
    return int(raw)


def _bool_param(params: Params, name: str) -> bool:
    raw = params.get(name, [""])[0].strip().lower()
    if raw not in ("", "0", "1", "true", "false"):
        raise HttpError(400, f"{name} must be 1/true or 0/false")
    return raw in ("1", "true")


def _image_id(raw: Any) -> int:
    image_id = parse_image_id(str(raw)) if not isinstance(raw, bool) else None
    if image_id is None:
        raise HttpError(400, "image_id must be a positive integer")
    return image_id


async def _read_body(request: Request, limit: int, what: str, timeout_s: float) -> bytes:
    """The request body as it streams in: a declared length over `limit` is refused before a
    byte is read, a chunked body as soon as it passes `limit` (never more is held); the whole
    body must arrive within timeout_s (a slow uploader holds a connection no longer)."""
    length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if length is not None:
        n = int(length)  # h11 has already refused a malformed Content-Length
        if n > limit:
            raise HttpError(413, f"{what} of {n} bytes is over the {limit} byte limit")
    elif not chunked:
        raise HttpError(411, "Content-Length is required (or a chunked body)")
    body = bytearray()
    with anyio.move_on_after(timeout_s) as waited:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise HttpError(413, f"{what} is over the {limit} byte limit")
            body += chunk
    if waited.cancelled_caught:
        raise HttpError(408, f"the {what} did not arrive within {timeout_s:g} s")
    request.state.body_read = True
    return bytes(body)


def _send(request: Request, status: int, body: bytes, ctype: str,
          cache: str = "no-store") -> Response:
    headers = {"Cache-Control": cache, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer"}
    if request.method == "POST" and not getattr(request.state, "body_read", False):
        # An unread request body must never be parsed as the next request.
        headers["Connection"] = "close"
    if ctype.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
    return Response(body, status, headers=headers, media_type=ctype)


def _json(request: Request, status: int, data: Any) -> Response:
    return _send(request, status, json.dumps(data, default=str).encode(), "application/json")


Handler = Callable[[Request, Gateway], Awaitable[Response]]


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route's handler with the gateway's error contract: JSON {"error": one line}."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, request.app.state.gateway)
        except HttpError as exc:
            return _json(request, exc.status, {"error": str(exc), **exc.extra})
        except ClientDisconnect:
            return _json(request, 400, {"error": "the client went away"})  # nobody reads it
        except ValueError as exc:  # e.g. parse_qs over max_num_fields
            return _json(request, 400, {"error": f"bad request: {exc}"})
        except Exception:
            log.exception("gateway request failed")
            return _json(request, 500, {"error": "internal error (see the gateway log)"})

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


# ---------------------------------------------------------------------- routes
def _static_file(request: Request, name: str) -> Response:
    if not _STATIC_NAME.fullmatch(name) or not (STATIC_DIR / name).is_file():
        raise HttpError(404, "no such file")
    body = (STATIC_DIR / name).read_bytes()  # a few KB from the package: not worth a thread
    return _send(request, 200, body, STATIC_TYPES[Path(name).suffix], cache="no-cache")


async def page(request: Request, gw: Gateway) -> Response:
    return _static_file(request, PAGES[request.url.path])


async def static(request: Request, gw: Gateway) -> Response:
    return _static_file(request, request.path_params["name"])


async def image(request: Request, gw: Gateway) -> Response:
    image_id = _image_id(request.path_params["image_id"])
    data, mime = await gw.blocking(gw.image, image_id)
    return _send(request, 200, data, mime, cache="public, max-age=86400, immutable")


async def get_search(request: Request, gw: Gateway) -> Response:
    params = _params(request)
    if "image_id" not in params:
        raise HttpError(400, "give image_id (or POST an image)")
    query = common_pb2.ImageInput(image_id=_image_id(params["image_id"][0]))
    return _json(request, 200, await gw.blocking(
        gw.search, query, params.get("q", [""])[0], _int_param(params, "k", 12),
        _bool_param(params, "include_query_image")))


async def post_search(request: Request, gw: Gateway) -> Response:
    params = _params(request)
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    s = gw.settings
    query: common_pb2.ImageInput | None
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        data = await _read_body(request, s.gateway_max_upload_bytes, "upload",
                                s.gateway_body_timeout_s)
        if not data:
            raise HttpError(400, "the uploaded image is empty")
        query = common_pb2.ImageInput(image_bytes=data)
        instruction, k = params.get("q", [""])[0], _int_param(params, "k", 12)
        include = _bool_param(params, "include_query_image")
    elif ctype == "application/json":
        raw = await _read_body(request, MAX_JSON_BODY, "JSON body", s.gateway_body_timeout_s)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HttpError(400, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        instruction = body.get("instruction", "")
        k = body.get("k", 12)
        if not isinstance(instruction, str):
            raise HttpError(400, "instruction must be a string")
        if isinstance(k, bool) or not isinstance(k, int):
            raise HttpError(400, "k must be an integer")
        if "image_id" in body:
            query = common_pb2.ImageInput(image_id=_image_id(body["image_id"]))
        elif isinstance(body.get("image_url"), str) and \
                body["image_url"].startswith(("http://", "https://")) and \
                len(body["image_url"]) <= MAX_URL_CHARS:
            query = common_pb2.ImageInput(image_url=body["image_url"])
        elif "image_url" not in body and instruction.strip():
            query = None  # text only: the search root decides
        else:
            raise HttpError(400, "give image_id, an http(s) image_url, or an instruction")
        include = body.get("include_query_image", False)
        if not isinstance(include, bool):
            raise HttpError(400, "include_query_image must be true or false")
    else:
        raise HttpError(415, "send an image (Content-Type image/*) or JSON")
    return _json(request, 200, await gw.blocking(gw.search, query, instruction, k, include))


async def pool(request: Request, gw: Gateway) -> Response:
    n = _int_param(_params(request), "n", 24)
    if not 1 <= n <= store.MAX_SAMPLE:
        raise HttpError(400, f"n must be between 1 and {store.MAX_SAMPLE}")
    return _json(request, 200, {"images": await gw.blocking(gw.sample, n)})


async def examples(request: Request, gw: Gateway) -> Response:
    s = gw.settings
    try:
        found = load_examples(s.examples_path, s.gateway_max_instruction_chars)
    except ExamplesError as exc:
        raise HttpError(500, f"examples file: {exc}") from None
    return _json(request, 200, {"examples": found})


async def health(request: Request, gw: Gateway) -> Response:
    return _json(request, 200, await gw.blocking(gw.health))


async def status(request: Request, gw: Gateway) -> Response:
    return _json(request, 200, await gw.blocking(gw.status))


async def openapi(request: Request, gw: Gateway) -> Response:
    return _json(request, 200, request.app.state.openapi)


async def _no_route(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such path, or a method the path does not take) as JSON."""
    code = exc.status_code if isinstance(exc, HTTPException) else 404
    return _json(request, code, {"error": f"no route {request.method} {request.url.path}"})


ROUTES: list[tuple[str, Handler, list[str]]] = [
    *((path, page, ["GET"]) for path in PAGES),
    ("/static/{name}", static, ["GET"]),
    ("/images/{image_id}", image, ["GET"]),
    ("/api/search", get_search, ["GET"]),
    ("/api/search", post_search, ["POST"]),
    ("/api/pool", pool, ["GET"]),
    ("/api/examples", examples, ["GET"]),
    ("/api/health", health, ["GET"]),
    ("/api/status", status, ["GET"]),
    ("/api/openapi.json", openapi, ["GET"]),
]


def make_app(gateway: Gateway) -> Starlette:
    """The ASGI app over one Gateway (GET routes also answer HEAD, without a body)."""
    app = Starlette(routes=[Route(path, _endpoint(fn), methods=methods)
                            for path, fn, methods in ROUTES],
                    exception_handlers={404: _no_route, 405: _no_route})
    app.state.gateway = gateway
    app.state.openapi = openapi_spec(gateway.settings)
    return app
