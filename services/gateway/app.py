"""The web gateway: static UI plus a small JSON API over the gRPC SearchService and Postgres.

Routes
  GET  /, /status, /static/<file>      the UI (plain HTML/JS/CSS from static/)
  GET  /images/<id>                    a pool image's bytes (content type from the stored mime)
  GET  /api/search?image_id=&q=&k=     search by a pool image
  POST /api/search?q=&k=               body = raw image bytes (Content-Type image/*), or JSON
                                       {"image_id"|"image_url", "instruction", "k"}
                                       (each also takes include_query_image=1 / true: keep
                                       the query image and its copies in the results)
  GET  /api/pool?n=                    a random sample of pool images
  GET  /api/examples                   one-click example queries
  GET  /api/health                     is search up (for the UI's banner)
  GET  /api/status                     pipeline counts, models, index status
Every error is JSON {"error": one line}; search down -> 503.

Connections: a socket idle for MAGICLENS_GATEWAY_SOCKET_TIMEOUT_S is closed, and beyond
MAGICLENS_GATEWAY_MAX_CONNECTIONS open connections a new one gets 503 and is closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from magiclens.v1 import common_pb2, search_pb2

from runtime import db
from runtime.blobstore import open_blobstore
from runtime.errors import ServiceError
from runtime.limits import MAX_K, MAX_URL_CHARS
from runtime.pipeline_status import pipeline_status
from runtime.rpc import RpcFailure
from runtime.search_client import SearchClient, parse_image_id, response_dict
from services.gateway import store
from services.gateway.config import GatewaySettings
from services.gateway.examples import ExamplesError, load_examples

log = logging.getLogger("magiclens.gateway")
STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,60}\.(html|js|css|svg)$")
MAX_JSON_BODY = 64 * 1024
_HTTP_FOR_GRPC = {"UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
                  "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "RESOURCE_EXHAUSTED": 429,
                  "FAILED_PRECONDITION": 409,
                  "UNIMPLEMENTED": 501}
PAGES = {"/": "index.html", "/index.html": "index.html", "/status": "status.html"}
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.extra = status, extra


class Gateway:
    """What the handlers share: settings, the blob store; stateless otherwise."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.blobs = open_blobstore(settings.blob_root)
        self.db = db.Pool(settings.database_url, name="gateway", max_size=4)
        self.search_client = SearchClient(settings.search_addr)

    def close(self) -> None:
        self.db.close()
        self.search_client.close()

    # ------------------------------------------------------------------ search
    def search(self, query: common_pb2.ImageInput, instruction: str, k: int,
               include_query_image: bool = False) -> dict[str, Any]:
        s = self.settings
        if len(instruction) > s.gateway_max_instruction_chars:
            raise HttpError(400, f"instruction is longer than "
                                 f"{s.gateway_max_instruction_chars} characters")
        if not 1 <= k <= MAX_K:
            raise HttpError(400, f"k must be between 1 and {MAX_K} (got {k})")
        req = search_pb2.SearchRequest(query=query, instruction=instruction, k=k,
                                       include_query_image=include_query_image)
        try:
            resp = self.search_client.search(req, s.gateway_search_timeout_s)
        except RpcFailure as exc:
            status = _HTTP_FOR_GRPC.get(exc.code, 502)
            extra = {"search_available": False} if status == 503 else {}
            raise HttpError(status, str(exc), **extra) from None
        data = response_dict(resp)
        for h in data["hits"]:
            h["src"] = f"/images/{h['image_id']}"
        return data

    def status(self) -> dict[str, Any]:
        try:
            data = pipeline_status(self.settings.database_url)
            data["database"] = {"available": True}
        except ServiceError as exc:
            data = {"database": {"available": False, "error": str(exc)}}
        data["search"] = self.search_client.index_status(self.settings.gateway_status_timeout_s)
        return data


def _int_param(params: dict[str, list[str]], name: str, default: int) -> int:
    raw = params.get(name, [""])[0].strip()
    if not raw:
        return default
    if not re.fullmatch(r"-?\d{1,6}", raw):
        raise HttpError(400, f"{name} must be an integer")
    return int(raw)


def _bool_param(params: dict[str, list[str]], name: str) -> bool:
    raw = params.get(name, [""])[0].strip().lower()
    if raw not in ("", "0", "1", "true", "false"):
        raise HttpError(400, f"{name} must be 1/true or 0/false")
    return raw in ("1", "true")


def _image_id(raw: Any) -> int:
    image_id = parse_image_id(str(raw)) if not isinstance(raw, bool) else None
    if image_id is None:
        raise HttpError(400, "image_id must be a positive integer")
    return image_id


class Handler(BaseHTTPRequestHandler):
    server_version = "MagicLensGateway/0.1"
    protocol_version = "HTTP/1.1"
    gateway: Gateway  # set on the subclass made by make_server

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if self.command == "POST" and not getattr(self, "_body_read", False):
            # An unread request body must never be parsed as the next request.
            self.close_connection = True
            self.send_header("Connection", "close")
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, default=str).encode(), "application/json")

    def _read_body(self, limit: int, what: str) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise HttpError(411, "Content-Length is required")
        n = int(length)
        if n > limit:
            raise HttpError(413, f"{what} of {n} bytes is over the {limit} byte limit")
        body = self.rfile.read(n)
        self._body_read = True
        return body

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        parts = urlsplit(self.path)
        params = parse_qs(parts.query, max_num_fields=20)
        try:
            route = getattr(self, f"_{method}_{self._route_name(parts.path)}", None)
            if route is None:
                raise HttpError(404 if method == "get" else 405, f"no route {parts.path}")
            route(parts.path, params)
        except HttpError as exc:
            self._json(exc.status, {"error": str(exc), **exc.extra})
        except ValueError as exc:  # e.g. parse_qs over max_num_fields
            self._json(400, {"error": f"bad request: {exc}"})
        except Exception:
            log.exception("gateway request failed")
            self._json(500, {"error": "internal error (see the gateway log)"})

    @staticmethod
    def _route_name(path: str) -> str:
        if path in PAGES:
            return "page"
        if path.startswith("/static/"):
            return "static"
        if path.startswith("/images/"):
            return "image"
        if path.startswith("/api/") and re.fullmatch(r"/api/[a-z]{1,20}", path):
            return "api_" + path[5:]
        return "none"

    def do_GET(self) -> None:
        self._dispatch("get")

    def do_HEAD(self) -> None:
        self._dispatch("get")

    def do_POST(self) -> None:
        self._dispatch("post")

    # ------------------------------------------------------------------ routes
    def _get_page(self, path: str, params: dict) -> None:
        self._static_file(PAGES[path])

    def _get_static(self, path: str, params: dict) -> None:
        self._static_file(path.removeprefix("/static/"))

    def _static_file(self, name: str) -> None:
        if not _STATIC_NAME.fullmatch(name) or not (STATIC_DIR / name).is_file():
            raise HttpError(404, "no such file")
        body = (STATIC_DIR / name).read_bytes()
        self._send(200, body, STATIC_TYPES[Path(name).suffix], cache="no-cache")

    def _get_image(self, path: str, params: dict) -> None:
        image_id = _image_id(path.removeprefix("/images/"))
        try:
            found = store.image_bytes(self.gateway.db, self.gateway.blobs,
                                     image_id)
        except ServiceError as exc:
            raise HttpError(503, str(exc)) from None
        except store.BlobMissing as exc:
            raise HttpError(404, str(exc)) from None
        if found is None:
            raise HttpError(404, f"no image {image_id} in the pool")
        data, mime = found
        self._send(200, data, mime, cache="public, max-age=86400, immutable")

    def _get_api_search(self, path: str, params: dict) -> None:
        if "image_id" not in params:
            raise HttpError(400, "give image_id (or POST an image)")
        query = common_pb2.ImageInput(image_id=_image_id(params["image_id"][0]))
        self._json(200, self.gateway.search(query, params.get("q", [""])[0],
                                            _int_param(params, "k", 12),
                                            _bool_param(params, "include_query_image")))

    def _post_api_search(self, path: str, params: dict) -> None:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        s = self.gateway.settings
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            data = self._read_body(s.gateway_max_upload_bytes, "upload")
            if not data:
                raise HttpError(400, "the uploaded image is empty")
            query = common_pb2.ImageInput(image_bytes=data)
            instruction, k = params.get("q", [""])[0], _int_param(params, "k", 12)
            include = _bool_param(params, "include_query_image")
        elif ctype == "application/json":
            try:
                body = json.loads(self._read_body(MAX_JSON_BODY, "JSON body"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise HttpError(400, "body is not valid JSON") from None
            if not isinstance(body, dict):
                raise HttpError(400, "body must be a JSON object")
            if "image_id" in body:
                query = common_pb2.ImageInput(image_id=_image_id(body["image_id"]))
            elif isinstance(body.get("image_url"), str) and \
                    body["image_url"].startswith(("http://", "https://")) and \
                    len(body["image_url"]) <= MAX_URL_CHARS:
                query = common_pb2.ImageInput(image_url=body["image_url"])
            else:
                raise HttpError(400, "give image_id or an http(s) image_url")
            instruction = body.get("instruction", "")
            k = body.get("k", 12)
            if not isinstance(instruction, str):
                raise HttpError(400, "instruction must be a string")
            if isinstance(k, bool) or not isinstance(k, int):
                raise HttpError(400, "k must be an integer")
            include = body.get("include_query_image", False)
            if not isinstance(include, bool):
                raise HttpError(400, "include_query_image must be true or false")
        else:
            raise HttpError(415, "send an image (Content-Type image/*) or JSON")
        self._json(200, self.gateway.search(query, instruction, k, include))

    def _get_api_pool(self, path: str, params: dict) -> None:
        n = _int_param(params, "n", 24)
        if not 1 <= n <= store.MAX_SAMPLE:
            raise HttpError(400, f"n must be between 1 and {store.MAX_SAMPLE}")
        try:
            images = store.sample(self.gateway.db, n)
        except ServiceError as exc:
            raise HttpError(503, str(exc)) from None
        self._json(200, {"images": images})

    def _get_api_examples(self, path: str, params: dict) -> None:
        s = self.gateway.settings
        try:
            examples = load_examples(s.examples_path, s.gateway_max_instruction_chars)
        except ExamplesError as exc:
            raise HttpError(500, f"examples file: {exc}") from None
        self._json(200, {"examples": examples})

    def _get_api_health(self, path: str, params: dict) -> None:
        s = self.gateway.settings
        self._json(200, {"search": self.gateway.search_client.index_status(
            s.gateway_status_timeout_s)})

    def _get_api_status(self, path: str, params: dict) -> None:
        self._json(200, self.gateway.status())


_BUSY_BODY = b'{"error": "too many connections; retry"}\n'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY


class BoundedServer(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` of them."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def server_close(self) -> None:
        super().server_close()
        gateway = getattr(self.RequestHandlerClass, "gateway", None)
        if gateway is not None:
            gateway.close()


def make_server(settings: GatewaySettings) -> ThreadingHTTPServer:
    """A ready-to-serve HTTP server bound to the configured address (port 0: any free port)."""
    handler = type("BoundHandler", (Handler,), {
        "gateway": Gateway(settings),
        # StreamRequestHandler applies it to the socket: a read that waits longer ends the
        # connection (http.server logs "Request timed out").
        "timeout": settings.gateway_socket_timeout_s})
    return BoundedServer((settings.gateway_host, settings.gateway_port), handler,
                         settings.gateway_max_connections)
