"""Session fixtures: the real PostgreSQL and Tansu broker, started by the project itself.

When DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS are set, those servers are used instead. Servers
this session started are stopped at the end; servers that were already running are left.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from runtime import db
from runtime.bus import ensure_topics
from tools import infra


@dataclass(frozen=True)
class Infra:
    database_url: str
    kafka_bootstrap: str

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(DATABASE_URL=self.database_url, KAFKA_BOOTSTRAP_SERVERS=self.kafka_bootstrap)
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def infra_servers() -> Iterator[Infra]:
    paths = infra.default_paths()
    was_running = (infra.pg_running(paths) or infra.external_database(),
                   infra.tansu_running(paths) or infra.external_kafka())
    env = infra.up(paths)
    db.migrate(env["DATABASE_URL"])
    ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"])
    yield Infra(env["DATABASE_URL"], env["KAFKA_BOOTSTRAP_SERVERS"])
    if not was_running[1]:
        infra.tansu_down(paths)
    if not was_running[0]:
        infra.pg_down(paths)


@pytest.fixture
def unique() -> str:
    """A short unique token for names (groups, topics, tables) so tests never collide."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def checkpoints() -> dict[str, Path]:
    """{'serving-a': dir, 'serving-b': dir}: two real model versions with distinct heads.

    The compact model with pretrained towers + a seeded random fusion head is a genuine
    servable version; it is cached under data/cache/serving-test (building it compiles the
    full model once). A second version perturbs the fusion head (same shapes, another model).
    """
    # JAX and the model load only for the tests that use real checkpoints.
    from tests.serving.serving_support import serving_checkpoints

    return serving_checkpoints()


def _private_database(admin: str) -> Iterator[str]:
    name = f"ml_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rpartition('/')[0]}/{name}"
    db.migrate(url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fresh_db(infra_servers) -> Iterator[str]:
    """A private, freshly migrated database per test module, so counts are exact."""
    yield from _private_database(infra_servers.database_url)


@pytest.fixture
def own_db(infra_servers) -> Iterator[str]:
    """A private, freshly migrated database for one test: exact counts in any test order."""
    yield from _private_database(infra_servers.database_url)


# ----------------------------------------------------------------- no silent skips (issue 20)
# A skipped test is a test that did not run: the run prints how many were skipped and fails
# when any was, so that a machine missing what a test needs shows up in CI. Set
# MAGICLENS_ALLOW_SKIPS=1 to allow skips on a machine known to lack something.

_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def _skips_allowed() -> bool:
    return os.environ.get("MAGICLENS_ALLOW_SKIPS", "") not in ("", "0")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED and not _skips_allowed() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    verdict = ("none" if not _SKIPPED else "allowed by MAGICLENS_ALLOW_SKIPS"
               if _skips_allowed() else "the run fails: a skipped test did not run")
    terminalreporter.write_line(f"skipped tests: {len(_SKIPPED)} ({verdict})",
                                red=bool(_SKIPPED) and not _skips_allowed())
    for nodeid in _SKIPPED:
        terminalreporter.write_line(f"  skipped: {nodeid}")
