"""Mining test fixtures: a local HTTP server with scripted routes, settings, a Miner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.mining.config import MiningSettings
from services.mining.miner import Miner
from tests.mining.mining_support import WebServer


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer()
    yield server
    server.close()


@pytest.fixture
def settings_for(infra_servers, tmp_path: Path):
    def make(web: WebServer | None = None, **overrides) -> MiningSettings:
        allow = f"127.0.0.1:{web.port}" if web is not None else ""
        values = dict(mining_allow_hosts=allow, blob_uri=f"file://{tmp_path / 'blobs'}",
                      mining_per_host_delay_s=0.0, mining_connect_timeout_s=2.0,
                      mining_read_timeout_s=3.0)
        values.update(overrides)
        return MiningSettings(DATABASE_URL=infra_servers.database_url,
                              KAFKA_BOOTSTRAP_SERVERS=infra_servers.kafka_bootstrap, **values)
    return make


@pytest.fixture
def make_miner(settings_for):
    made: list[Miner] = []

    def make(web: WebServer | None = None, **overrides) -> Miner:
        miner = Miner(settings_for(web, **overrides), worker_id="test")
        made.append(miner)
        return miner

    yield make
    for m in made:
        m.close()


