"""The gateway's app on uvicorn, with the connection limits a public server needs.

uvicorn (h11 protocol) times out a keep-alive connection only after a response, so a client
that connects and sends nothing, or trickles a request line, would hold its connection
forever. `GuardedH11Protocol` closes it: the keep-alive timer (MAGICLENS_GATEWAY_SOCKET_TIMEOUT_S)
runs from the moment the connection opens or the last response ends until a whole request
head has arrived (partial data does not restart it). It also refuses a connection beyond
MAGICLENS_GATEWAY_MAX_CONNECTIONS at once with a JSON 503 (app.BUSY), before reading anything.
The body's own deadline is the app's (app._read_body), as is the bound on worker threads.

Closing a connection whose request body was not read (a 413 to an upload still streaming in)
would make the kernel answer the client's next bytes with a reset, which can destroy the 413
before the client reads it. So a close is lingering, as nginx's is: send everything, half-close
(FIN), drop whatever still arrives for LINGER_S, then close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.gateway.app import BUSY, Gateway, make_app
from services.gateway.config import GatewaySettings

SERVER_HEADER = "MagicLensGateway/0.2"
LINGER_S = 2.0


class _LingeringTransport:
    """The connection's transport as uvicorn sees it, with a lingering close()."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 linger_s: float) -> None:
        self._transport, self._loop, self._linger_s = transport, loop, linger_s
        self.lingering = False
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:  # everything else as the real transport has it
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            return
        self.lingering = True
        if not self._transport.can_write_eof():
            self._transport.close()
            return
        self._transport.write_eof()  # FIN once the answer is written; reading goes on
        self._transport.resume_reading()
        self._timer = self._loop.call_later(self._linger_s, self._transport.close)

    def connection_lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request heads and a connection cap."""

    max_connections = 64  # set on the subclass made by make_server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.rejected = len(self.connections) >= self.max_connections
        if self.rejected:
            transport.write(BUSY)  # type: ignore[attr-defined]
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets this only on sockets whose proto says TCP, which the listening
            # socket made by socket.create_server does not: without it every response waits
            # for the client's delayed ACK (40 ms) between its head and its body.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.guarded = _LingeringTransport(transport, self.loop,  # type: ignore[arg-type]
                                             min(LINGER_S, self.timeout_keep_alive))
        super().connection_made(self.guarded)  # type: ignore[arg-type]
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.rejected:
            self.guarded.connection_lost()
            super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (a malformed line or header, or an unfinished head over
        the 16 KB h11 buffers): JSON like every other error of the gateway, then close."""
        body = json.dumps({"error": f"bad request: {msg}"}).encode()
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(body), body))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        # uvicorn's own cancels the keep-alive timer on any byte; handle_events cancels it
        # once a whole request head is parsed, which is what a deadline on heads needs.
        if self.rejected or self.guarded.lingering:
            return  # after our close: dropped unread
        self.conn.receive_data(data)
        self.handle_events()


class _Server(uvicorn.Server):
    """uvicorn's server, except that SIGTERM/SIGINT end serve() normally: uvicorn re-raises
    the signal after its graceful shutdown (the process would die of it, not exit 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = (signal.SIGTERM, signal.SIGINT)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class GatewayServer:
    """The gateway bound to its address at construction (so a bind error is known before
    serving, and port 0 gives a free port); `serve()` blocks until `stop()` or SIGTERM/SIGINT
    (uvicorn handles those when serve() runs in the main thread)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.socket = socket.create_server((settings.gateway_host, settings.gateway_port),
                                           backlog=2048)
        try:
            self.gateway = Gateway(settings)
        except BaseException:
            self.socket.close()
            raise
        protocol = type("BoundGuardedH11Protocol", (GuardedH11Protocol,),
                        {"max_connections": settings.gateway_max_connections})
        config: dict[str, Any] = {
            "http": protocol, "loop": "asyncio", "lifespan": "off", "ws": "none",
            "interface": "asgi3", "log_config": None, "server_header": False,
            "headers": [("Server", SERVER_HEADER)],
            "timeout_keep_alive": settings.gateway_socket_timeout_s,
            "timeout_graceful_shutdown": settings.gateway_shutdown_timeout_s}
        self.server = _Server(uvicorn.Config(make_app(self.gateway), **config))

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return host, port

    def serve(self) -> None:
        self.server.run(sockets=[self.socket])

    def stop(self) -> None:
        """Ask serve() to return (from any thread): open requests get the shutdown timeout."""
        self.server.should_exit = True

    def close(self) -> None:
        self.socket.close()
        self.gateway.close()


def make_server(settings: GatewaySettings) -> GatewayServer:
    """A ready-to-serve gateway bound to the configured address (port 0: any free port)."""
    return GatewayServer(settings)
