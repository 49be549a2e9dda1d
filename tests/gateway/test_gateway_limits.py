"""The gateway drops clients that stall and serves a bounded number of connections.

Real gateway servers on free ports, real sockets; nothing here asserts a duration: a
stalled client is seen to be disconnected by the server (its read returns end-of-stream
long before the client's own, much longer timeout), and the connection over the limit is
seen to get the 503 answer.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx

from services.gateway.app import BUSY
from tests.gateway.gwutil import running_gateway
from tests.support.processes import wait_for

CLIENT_PATIENCE_S = 60.0  # far beyond the server's timeout: the server must act first


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
