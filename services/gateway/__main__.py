"""`python -m services.gateway`: serve the web UI (default http://127.0.0.1:8080/)."""

from __future__ import annotations

import sys

from runtime.config import load_settings, run_main
from runtime.errors import UnavailableError
from runtime.logs import setup_logging
from services.gateway.config import GatewaySettings
from services.gateway.server import make_server


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

    try:
        server.serve()  # until SIGTERM/SIGINT: uvicorn stops accepting, finishes open requests
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    run_main("gateway", main)
