"""`python -m services.gateway`: serve the web UI (default http://127.0.0.1:8080/)."""

from __future__ import annotations

import signal
import sys
import threading

from runtime.config import load_settings, run_main
from runtime.errors import UnavailableError
from runtime.logs import setup_logging
from services.gateway.app import make_server
from services.gateway.config import GatewaySettings


def main() -> int:
    settings = load_settings(GatewaySettings)
    setup_logging("gateway", settings.log_level)
    try:
        server = make_server(settings)
    except OSError as exc:
        raise UnavailableError(f"cannot listen on {settings.gateway_host}:"
                               f"{settings.gateway_port}: {exc.strerror}") from None
    host, port = server.server_address[:2]
    print(f"gateway: serving http://{host}:{port}/ (search at {settings.search_addr})",
          file=sys.stderr, flush=True)

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    run_main("gateway", main)
