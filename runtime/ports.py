"""The suite's ports in one table: what each process listens on by default, and where its
clients look for it.

Why one table: the same numbers were set in service settings, clients, the demo, the
deployment catalog and the docs; now each of those reads them from here.
"""

from __future__ import annotations

import os

# Local infrastructure (tools/infra.py starts these on a developer machine; a cluster sets
# DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS instead). MAGICLENS_PG_PORT / _KAFKA_PORT move them.
POSTGRES_LOCAL = 55432
KAFKA_LOCAL = 19092


def pg_port() -> int:
    return int(os.environ.get("MAGICLENS_PG_PORT", POSTGRES_LOCAL))


def kafka_port() -> int:
    return int(os.environ.get("MAGICLENS_KAFKA_PORT", KAFKA_LOCAL))


def local_database_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{pg_port()}/magiclens"


def local_kafka_bootstrap() -> str:
    return f"127.0.0.1:{kafka_port()}"
