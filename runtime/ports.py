"""The suite's ports in one table: what each process listens on by default, and where its
clients look for it.

Why one table: the same numbers were set in service settings, clients, the demo, the
deployment catalog (deploy/catalog.py) and the docs. Each of those reads them from here;
docs/runtime.md holds `python -m runtime.ports` (a test keeps it current). Locally every
process binds 127.0.0.1 and search shard i listens on the shard ports + i; in a pod a
process binds all interfaces and every shard uses the base ports.

Pure Python and standard library only: the Triton server (.venv-triton) reads it too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Listener:
    """One process's default ports (None: it has no such port)."""

    name: str
    grpc: int | None = None
    metrics: int | None = None
    http: int | None = None


MINING = Listener("mining", grpc=50051, metrics=9151)
TRIPLEGEN = Listener("triplegen", grpc=50052, metrics=9152)
TRAINING = Listener("training", grpc=50053, metrics=9153)
TRITON = Listener("embedding: Triton server", grpc=8001, metrics=8002, http=8000)
# Processes without a server of their own serve only /metrics (when MAGICLENS_METRICS_PORT
# is set; their pods set it).
EMBEDDING_WORKER = Listener("embedding worker", metrics=9154)
OUTBOX_RELAY = Listener("outbox relay", metrics=9156)
SEARCH_ROOT = Listener("search root", grpc=50055, metrics=9155)
SEARCH_SHARD = Listener("search shard i", grpc=50060, metrics=9160)  # + i locally
GATEWAY = Listener("web gateway", http=8080)
CORPUS_SITE = Listener("demo corpus site (tools/corpus)", http=8765)
LISTENERS = (MINING, TRIPLEGEN, TRAINING, TRITON, EMBEDDING_WORKER, SEARCH_ROOT, SEARCH_SHARD,
             GATEWAY, OUTBOX_RELAY, CORPUS_SITE)

# Local infrastructure (tools/infra.py starts these on a developer machine; a cluster sets
# DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS instead). MAGICLENS_PG_PORT / _KAFKA_PORT move them.
POSTGRES_LOCAL = 55432
KAFKA_LOCAL = 19092
LOCAL_HOST = "127.0.0.1"


def local(port: int) -> str:
    """`host:port` of a process on this machine."""
    return f"{LOCAL_HOST}:{port}"


def shard_grpc_port(shard: int) -> int:
    """Search shard `shard`'s gRPC port on one machine (each shard its own)."""
    return SEARCH_SHARD.grpc + shard


def shard_addrs(num_shards: int) -> str:
    """The search root's default MAGICLENS_SHARDS: every local shard, comma-separated."""
    return ",".join(local(shard_grpc_port(i)) for i in range(num_shards))


MINING_ADDR = local(MINING.grpc)
SEARCH_ADDR = local(SEARCH_ROOT.grpc)
TRAINING_ADDR = local(TRAINING.grpc)
TRITON_ADDR = local(TRITON.grpc)
GATEWAY_URL = f"http://{local(GATEWAY.http)}/"
CORPUS_SITE_URL = f"http://{local(CORPUS_SITE.http)}/"


def pg_port() -> int:
    return int(os.environ.get("MAGICLENS_PG_PORT", POSTGRES_LOCAL))


def kafka_port() -> int:
    return int(os.environ.get("MAGICLENS_KAFKA_PORT", KAFKA_LOCAL))


def local_database_url() -> str:
    return f"postgresql://postgres@{local(pg_port())}/magiclens"


def local_kafka_bootstrap() -> str:
    return local(kafka_port())


def _cell(listener: Listener) -> tuple[str, str]:
    if listener is TRITON:
        return (f"Triton gRPC {listener.grpc}, HTTP {listener.http}", f"Triton {listener.metrics}")
    if listener is SEARCH_SHARD:
        return f"{listener.grpc}+i", f"{listener.metrics}+i"
    port = (str(listener.grpc) if listener.grpc else f"HTTP {listener.http}" if listener.http
            else "—")
    return port, str(listener.metrics) if listener.metrics else "—"


def markdown_table() -> str:
    """The table docs/runtime.md shows (plain numbers are gRPC ports)."""
    rows = ["| process | port | metrics |", "|---|---|---|"]
    rows += [f"| {x.name} | {' | '.join(_cell(x))} |" for x in LISTENERS]
    rows += [f"| PostgreSQL (local, tools/infra) | {POSTGRES_LOCAL} | — |",
             f"| Kafka broker (local, tools/infra) | {KAFKA_LOCAL} | — |"]
    return "\n".join(rows) + "\n"



def check_addr(v: str) -> str:
    """A `host:port` setting (a service another process calls), stripped."""
    host, _, port = v.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{v}' is not host:port")
    return v.strip()


if __name__ == "__main__":
    sys.stdout.write(markdown_table())

