"""Helpers for the mining tests: a scripted local HTTP server, image makers, DB reports."""

from __future__ import annotations

import contextlib
import http.server
import io
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import psycopg
from magiclens.v1 import events_pb2
from PIL import Image

from runtime import db
from runtime.bus import Event
from services.mining.miner import Miner


@dataclass
class Route:
    body: bytes = b""
    ctype: str = "text/html; charset=utf-8"
    status: int = 200
    location: str = ""
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class WebServer:
    """Serves `routes[path]`; records each request's path and Host header."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Host", "")))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if route.delay_s:
                    time.sleep(route.delay_s)
                self.send_response(route.status)
                if route.location:
                    self.send_header("Location", route.location)
                self.send_header("Content-Type", route.ctype)
                self.send_header("Content-Length", str(len(route.body)))
                for k, v in route.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(route.body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes | str = b"", ctype: str = "text/html; charset=utf-8",
            **kw) -> str:
        self.routes[path] = Route(body.encode() if isinstance(body, str) else body, ctype, **kw)
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def noise_image(seed: str, w: int = 160, h: int = 120, fmt: str = "PNG", **save) -> bytes:
    """A random-content image: distinct bytes and perceptual hash for every seed."""
    rng = random.Random(seed)
    small = Image.frombytes("RGB", (w // 8 + 1, h // 8 + 1),
                            bytes(rng.randrange(256) for _ in range(3 * (w // 8 + 1)
                                                                    * (h // 8 + 1))))
    img = small.resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def mine(miner: Miner, url: str, html: str = "", event_id: str | None = None) -> None:
    """Deliver one page event to the production handler, in its own transaction."""
    with db.connect(miner.settings.database_url) as conn, conn.transaction():
        miner.handle(conn, Event("test", url, event_id or str(uuid.uuid4()),
                                 events_pb2.PageDiscovered(url=url, html=html)))


def page_report(database_url: str, url: str) -> dict:
    """Everything the miner stored for a page."""
    with psycopg.connect(database_url) as conn:
        page = conn.execute("SELECT page_id, status, status_reason, title, attempts FROM pages "
                            "WHERE url = %s", (url,)).fetchone()
        if page is None:
            return {}
        pid = page[0]
        images = conn.execute(
            "SELECT pi.image_id, pi.position, pi.src_url, pi.alt_text, pi.caption, "
            "pi.context_text, i.first_page_id, i.width, i.height, i.mime_type FROM page_images pi "
            "JOIN images i USING (image_id) WHERE pi.page_id = %s ORDER BY pi.position",
            (pid,)).fetchall()
        rejections = dict(conn.execute("SELECT src_url, reason FROM image_rejections "
                                       "WHERE page_id = %s", (pid,)).fetchall())
        pairs = conn.execute("SELECT query_image_id, target_image_id FROM pairs "
                             "WHERE page_id = %s", (pid,)).fetchall()
    return {"page_id": pid, "status": page[1], "reason": page[2], "title": page[3],
            "attempts": page[4], "images": images, "rejections": rejections, "pairs": pairs}
