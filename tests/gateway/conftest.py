"""A private, freshly migrated database per module, so pool counts are exact and repeatable."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from services.runtime import db


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="module")
def fresh_db(infra_servers) -> Iterator[str]:
    import uuid

    name = f"ml_gw_{uuid.uuid4().hex[:10]}"
    admin = infra_servers.database_url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(admin, name)
    db.migrate(url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
