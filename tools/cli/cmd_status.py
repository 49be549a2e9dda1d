"""`magiclens status`: what the pipeline holds (Postgres) and what search serves (the
client's index_status)."""

from __future__ import annotations

import argparse
from typing import Any

from magiclens_client import MagicLensClient, MagicLensError
from runtime.pipeline_status import pipeline_status
from tools.cli.output import emit, table
from tools.cli.settings import ClientSettings


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


STATUS_TIMEOUT_S = 3.0  # a stopped search root must not hold up the pipeline's counts


def search_status(addr: str) -> dict[str, Any]:
    """The search root's view, or {"available": False, "error": one line}."""
    try:
        with MagicLensClient(addr, timeout=STATUS_TIMEOUT_S) as client:
            return {"available": True, **client.index_status().to_dict()}
    except MagicLensError as exc:
        return {"available": False, "error": str(exc)}


def run(args: argparse.Namespace, settings: ClientSettings) -> int:
    data = pipeline_status(settings.database_url)
    data["search"] = search_status(settings.search_addr)
    emit(data, args.json, _human)
    return 0
