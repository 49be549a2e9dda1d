"""`magiclens status`: what the pipeline holds (Postgres) and what search serves (gRPC)."""

from __future__ import annotations

import argparse
from typing import Any

from magiclens.v1 import search_pb2, search_pb2_grpc

from services.cli import rpc
from services.cli.errors import CliError
from services.cli.output import emit, table
from services.cli.pipeline import pipeline_status
from services.cli.settings import ClientSettings

STATUS_RPC_TIMEOUT_S = 3.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="pipeline counts, models and index size")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def index_status(addr: str, timeout: float = STATUS_RPC_TIMEOUT_S) -> dict[str, Any]:
    """The search root's view, or {"error": one line} when it cannot be asked."""
    try:
        with rpc.channel(addr) as ch:
            st = rpc.call("search", addr, search_pb2_grpc.SearchServiceStub(ch).GetIndexStatus,
                          search_pb2.GetIndexStatusRequest(), timeout)
    except CliError as exc:
        return {"available": False, "error": str(exc)}
    return {"available": True, "model_version": st.model_version,
            "num_vectors": st.num_vectors, "shards": st.shards, "shards_up": st.shards_up,
            "freshness_p50_s": st.freshness_p50_s}


def _counts(name: str, counts: dict[str, int] | None) -> str:
    if counts is None:
        return f"{name:<16}(table not created yet)"
    total = sum(counts.values())
    detail = ", ".join(f"{k} {v}" for k, v in counts.items())
    return f"{name:<16}{total}" + (f"  ({detail})" if detail else "")


def _human(data: dict[str, Any]) -> str:
    lines = ["Pipeline (PostgreSQL)"]
    lines += ["  " + _counts(k, v) for k, v in data["counts"].items()]
    lines.append("Models")
    if data["models"]:
        rows = [[m["model_version"], m["config_name"], m["status"],
                 ", ".join(f"{k}={v:.4g}" for k, v in sorted(m["metrics"].items())[:4]),
                 str(data["embeddings"].get(m["model_version"], 0))] for m in data["models"]]
        lines += ["  " + ln for ln in
                  table(rows, ["version", "config", "status", "metrics", "embedded"])
                  .splitlines()]
    else:
        lines.append("  none yet")
    s = data["search"]
    lines.append("Search index")
    if s["available"]:
        lines.append(f"  model {s['model_version'] or '-'}: {s['num_vectors']} vectors, "
                     f"{s['shards_up']}/{s['shards']} shards up, freshness p50 "
                     f"{s['freshness_p50_s']:.1f}s")
    else:
        lines.append(f"  {s['error']}")
    for version, snap in data["index"].items():
        lines.append(f"  serving snapshots of {version}: {snap['vectors']} vectors in "
                     f"{snap['shards']} shard(s), newest {snap['newest_snapshot']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: ClientSettings) -> int:
    data = pipeline_status(settings.database_url)
    data["search"] = index_status(settings.search_addr)
    emit(data, args.json, _human)
    return 0
