"""Fault-suite fixtures: a private Tansu broker and a private PostgreSQL that a test may stop
and restart without disturbing the session's servers (or any other test)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime import db
from runtime.bus import ensure_topics
from tests.support.processes import free_port
from tools import infra


@dataclass
class PrivateBroker:
    paths: infra.InfraPaths
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        infra.tansu_up(self.paths, self.port)

    def stop(self) -> None:
        infra.tansu_down(self.paths)


@dataclass
class PrivatePostgres:
    paths: infra.InfraPaths
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/magiclens"

    def start(self) -> None:
        infra.pg_up(self.paths, self.port)

    def stop(self) -> None:
        """A clean stop, given time: one took over 30 s in a full, contended suite run.
        (Not `immediate`: the test cluster runs with synchronous_commit=off, so a crash
        would lose acknowledged commits, which is not the fault under test.)"""
        infra.pg_down(self.paths, timeout_s=120)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A Tansu broker of this test's own (memory storage: a restart loses every message)."""
    broker = PrivateBroker(infra.InfraPaths(tmp_path / "tansu"), free_port())
    broker.start()
    ensure_topics(broker.bootstrap)
    yield broker
    broker.stop()


@pytest.fixture
def private_postgres(tmp_path_factory) -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own, migrated, that the test may stop."""
    pg = PrivatePostgres(infra.InfraPaths(tmp_path_factory.mktemp("pg")), free_port())
    pg.start()
    db.migrate(pg.url)
    yield pg
    pg.stop()
