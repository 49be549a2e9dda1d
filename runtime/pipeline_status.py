"""Pipeline counts straight from PostgreSQL (the system of record), shared by CLI and gateway.

Tables another service has not created yet are reported as absent rather than failing, so the
status works at every stage of the project's growth.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from runtime import db

_BY_STATUS = ("pages", "images", "pairs", "triples", "training_runs", "index_snapshots")


def _tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = current_schema()").fetchall()
    return {r["table_name"] for r in rows}


def _metrics(value: Any) -> dict[str, float]:
    if isinstance(value, str):
        value = json.loads(value or "{}")
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int | float)}


def pipeline_status(database_url: str) -> dict[str, Any]:
    """Counts by status, model versions with metrics, embeddings and index snapshots.

    Raises runtime.errors.UnavailableError (one line) when Postgres is unreachable.
    """
    with db.connect(database_url, timeout=3) as conn:
        tables = _tables(conn)
        out: dict[str, Any] = {"counts": {}, "models": [], "embeddings": {}, "index": {}}
        for name in _BY_STATUS:
            if name not in tables:
                out["counts"][name] = None
                continue
            rows = conn.execute(f"SELECT status, count(*) AS n FROM {name} "  # fixed names
                                "GROUP BY status ORDER BY status").fetchall()
            out["counts"][name] = {r["status"]: r["n"] for r in rows}
        if "model_versions" in tables:
            for r in conn.execute(
                    "SELECT model_version, config_name, status, metrics, checkpoint_uri, "
                    "created_at FROM model_versions ORDER BY created_at DESC LIMIT 50"):
                out["models"].append({
                    "model_version": r["model_version"], "config_name": r["config_name"],
                    "status": r["status"], "metrics": _metrics(r["metrics"]),
                    "checkpoint_uri": r["checkpoint_uri"] or "",
                    "created_at": r["created_at"].isoformat()})
        if "image_embeddings" in tables:
            out["embeddings"] = {r["model_version"]: r["n"] for r in conn.execute(
                "SELECT model_version, count(*) AS n FROM image_embeddings "
                "GROUP BY model_version ORDER BY model_version")}
        if "index_snapshots" in tables:
            rows = conn.execute(
                "SELECT model_version, count(*) AS shards, sum(num_vectors) AS vectors, "
                "max(created_at) AS newest FROM index_snapshots WHERE status = 'serving' "
                "GROUP BY model_version ORDER BY model_version").fetchall()
            out["index"] = {r["model_version"]: {
                "shards": r["shards"], "vectors": int(r["vectors"] or 0),
                "newest_snapshot": r["newest"].isoformat() if r["newest"] else None}
                for r in rows}
    return out
