"""The gateway drops clients that stall and serves a bounded number of connections.

Real gateway servers on free ports, real sockets; nothing here asserts a duration: a
stalled client is seen to be disconnected by the server (its read returns end-of-stream
long before the client's own, much longer timeout), the connection over the limit is seen
to get the 503 answer, and while slow clients (trickled uploads, trickled request heads, a
hanging search root) are held, other requests are seen to be answered before them.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from services.gateway.app import BUSY
from services.gateway.config import GatewaySettings
from services.gateway.server import make_server
from tests.gateway.gwutil import running_gateway, serving
from tests.support.processes import free_port, wait_for

CLIENT_PATIENCE_S = 60.0  # far beyond the server's timeout: the server must act first
DEAD = {"database_url": "postgresql://postgres@127.0.0.1:9/none"}  # no Postgres needed here


def _connect(base: str) -> socket.socket:
    u = urlsplit(base)
    return socket.create_connection((u.hostname, u.port), timeout=CLIENT_PATIENCE_S)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_client_that_stops_sending_is_disconnected():
    with running_gateway(gateway_socket_timeout_s=0.5) as base:
        with _connect(base) as s:
            s.sendall(b"GET / HT")  # half a request line, then silence
            assert _read_all(s) == b""  # closed by the server, nothing answered
        assert httpx.get(f"{base}/", timeout=30).status_code == 200  # still serving


def test_connections_beyond_the_limit_get_503_and_a_freed_slot_is_reused():
    with running_gateway(gateway_max_connections=2, gateway_socket_timeout_s=300) as base:
        idle = [_connect(base), _connect(base)]  # two clients holding their connections
        try:
            with _connect(base) as third:
                assert _read_all(third) == BUSY
        finally:
            for s in idle:
                s.close()

        def served() -> bool:
            try:
                return httpx.get(f"{base}/", timeout=30).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(served, 60, "a request served once the idle connections closed")


def test_responses_are_not_held_back_for_acks():
    """TCP_NODELAY on every accepted connection: asyncio sets it only where the listening
    socket says TCP in its proto, and without it each response's body waited for the
    client's delayed ACK (44 ms a request, as with the old http.server, against 0.5 ms)."""
    server = make_server(GatewaySettings(gateway_port=0, **DEAD,
                                         search_addr=f"127.0.0.1:{free_port()}"))
    with serving(server) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/").status_code == 200  # the connection stays open (keep-alive)
        conns = list(server.server.server_state.connections)
        assert conns
        for conn in conns:
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_requests_that_cannot_be_parsed_get_a_json_400():
    with running_gateway(**DEAD, search_addr=f"127.0.0.1:{free_port()}") as base:
        for raw in (b"GET / HTTP/1.1\r\nHost: gw\r\nContent-Length: ten\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: gw\r\nno colon here\r\n\r\n",
                    b"NOT HTTP AT ALL\r\n\r\n"):
            with _connect(base) as s:
                s.sendall(raw)
                answer = _read_all(s)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
            assert json.loads(body)["error"].startswith("bad request: ")


# ---------------------------------------------------------------------- slow clients


class Trickle(threading.Thread):
    """A client that sends `head`, then `body` one small piece every `every_s` seconds, until
    the server stops it (a send fails) or it is done; records how far it got."""

    def __init__(self, base: str, head: bytes, body: bytes, piece: int = 16,
                 every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.sock = _connect(base)
        self.head, self.body, self.piece, self.every_s = head, body, piece, every_s
        self.sent = 0
        self.finished = False  # sent everything: the server never cut it off

    def run(self) -> None:
        try:
            self.sock.sendall(self.head)
            while self.sent < len(self.body):
                self.sock.sendall(self.body[self.sent:self.sent + self.piece])
                self.sent += self.piece
                time.sleep(self.every_s)
            self.finished = True
        except OSError:
            pass

    def answer(self) -> bytes:
        """Everything the server sent before it closed the connection."""
        return _read_all(self.sock)


def _served_promptly(base: str, paths: tuple[str, ...], slow: list[Trickle]) -> None:
    """Each path answers 200 while every slow client is still connected and unanswered."""
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in paths:
            assert client.get(path).status_code == 200, path
    for t in slow:
        readable = select.select([t.sock], [], [], 0)[0]
        assert not readable, "a slow client was answered or closed before the others"
        assert t.is_alive() and not t.finished


def test_a_slow_uploader_is_cut_off_while_others_are_served():
    """An upload trickled in (16 bytes every 50 ms of a 200 kB body: 10 minutes) does not
    hold the server: other requests are answered meanwhile, and the upload is answered 408
    and closed once the body deadline passes."""
    with running_gateway(**DEAD, search_addr=f"127.0.0.1:{free_port()}",
                         gateway_body_timeout_s=3.0, gateway_socket_timeout_s=300) as base:
        body = b"\xff" * 200_000
        head = (b"POST /api/search?q=x HTTP/1.1\r\nHost: gw\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        slow = [Trickle(base, head, body) for _ in range(4)]
        for t in slow:
            t.start()
        _served_promptly(base, ("/", "/api/openapi.json", "/api/examples", "/static/app.js"),
                         slow)
        for t in slow:
            answer = t.answer()
            t.join(30)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'"error": "the upload did not arrive within 3 s"' in answer
            assert not t.finished and t.sent < len(body)
        assert httpx.get(f"{base}/", timeout=30).status_code == 200


def test_clients_that_trickle_a_request_head_are_cut_off_while_others_are_served():
    """Slowloris: request heads sent a few bytes at a time never complete; the connections
    are closed once the socket timeout passes since they opened (further bytes do not buy
    more time), and other clients are served all along."""
    with running_gateway(**DEAD, search_addr=f"127.0.0.1:{free_port()}",
                         gateway_socket_timeout_s=2.0) as base:
        head = b"GET / HTTP/1.1\r\nHost: gw\r\n" + b"X-Slow: 1\r\n" * 5000
        slow = [Trickle(base, b"", head, piece=4) for _ in range(6)]
        for t in slow:
            t.start()
        _served_promptly(base, ("/", "/status", "/api/openapi.json"), slow)
        for t in slow:
            assert t.answer() == b""  # closed, nothing answered
            t.join(30)
            assert not t.finished and t.sent < len(head)


def test_a_hanging_search_root_holds_only_worker_threads():
    """Blocking gRPC and Postgres calls run in worker threads, at most gateway_max_workers (1
    here) at once: with the search root hanging (a socket that accepts and never answers),
    a search holds the worker, a database read waiting for it is answered 503 busy, and
    pages and static files are served meanwhile; the search ends with its deadline (504)."""
    with socket.create_server(("127.0.0.1", 0)) as hole:
        addr = f"127.0.0.1:{hole.getsockname()[1]}"
        with running_gateway(**DEAD, search_addr=addr, gateway_search_timeout_s=10.0,
                             gateway_max_workers=1, gateway_queue_timeout_s=0.5) as base:
            results: list[httpx.Response] = []
            hanging = threading.Thread(target=lambda: results.append(httpx.get(
                f"{base}/api/search", params={"image_id": 1}, timeout=60)), daemon=True)
            hanging.start()

            def busy() -> httpx.Response | None:
                # Postgres is down: a read that gets the worker fails at once ("unreachable")
                r = httpx.get(f"{base}/api/pool", timeout=60)
                return r if "busy" in r.json()["error"] else None

            r = wait_for(busy, 30, "a database read answered busy while the search hangs")
            assert r.status_code == 503, r.text
            for path in ("/", "/api/openapi.json", "/static/style.css", "/api/examples"):
                assert httpx.get(f"{base}{path}", timeout=30).status_code == 200
            assert not results  # the search still hangs
            hanging.join(60)
            assert [r.status_code for r in results] == [504], [r.text for r in results]
            assert "did not answer within 10s" in results[0].json()["error"]
