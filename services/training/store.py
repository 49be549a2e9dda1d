"""Postgres state of the training service (one place for its SQL): runs (the job queue),
model versions, promotion, the worker's locks and the triples a run trains on.

The queue is `training_runs` itself (status queued -> running -> succeeded | failed), so a
restart loses nothing. Every publication (training finished, promotion) writes its
ModelPublished event to the outbox in the same transaction as the state change.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from magiclens.v1 import events_pb2

from runtime import outbox
from runtime.serving import set_serving_version
from runtime.topics import MODELS_PUBLISHED, Topic, renamed

_PROMOTE_LOCK = 0x4D4C_5052_4F4D  # serialises PromoteModel calls
_WORKER_LOCK = 0x4D4C_5452_4149  # "MLTRAI": the single active training worker
_AUTO_LOCK = 0x4D4C_4155_544F  # one auto-start decision at a time
SPLITS = ("train", "heldout")

# Training triples (services/training/triples.py): active triples between live images.
# `train` takes triples of split 'train' and drops every triple that touches a held-out page
# (the pair's page, or any page either image appears on); `heldout` is the evaluation set.
_BASE = """
SELECT t.triple_id, t.instruction, p.page_id, t.relation,
       CASE WHEN jsonb_typeof(t.scores->'specificity') = 'number'
            THEN (t.scores->>'specificity')::float8 END AS specificity,
       q.image_id AS q_id, q.blob_uri AS q_uri, g.image_id AS t_id, g.blob_uri AS t_uri
FROM triples t
JOIN pairs p ON p.pair_id = t.pair_id
JOIN pages pg ON pg.page_id = p.page_id
JOIN live_images q ON q.image_id = t.query_image_id
JOIN live_images g ON g.image_id = t.target_image_id
WHERE t.status = 'active'
"""
_HELDOUT_IMAGE = """EXISTS (
    SELECT 1 FROM images i JOIN pages hp ON hp.page_id = i.first_page_id
    WHERE i.image_id IN (t.query_image_id, t.target_image_id) AND hp.split = 'heldout'
  UNION ALL
    SELECT 1 FROM page_images pi JOIN pages hp ON hp.page_id = pi.page_id
    WHERE pi.image_id IN (t.query_image_id, t.target_image_id) AND hp.split = 'heldout')"""
_TRIPLES = {
    "train": _BASE + "  AND t.split = 'train' AND pg.split <> 'heldout'\n"
             + f"  AND NOT {_HELDOUT_IMAGE}\n",
    "heldout": _BASE + "  AND (t.split = 'heldout' OR pg.split = 'heldout')\n",
}


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    """The request is valid but the state does not allow it (FAILED_PRECONDITION)."""


def models_topic(name: str) -> Topic:
    return renamed(MODELS_PUBLISHED, name)


@dataclass(frozen=True)
class Run:
    run_id: str
    model_version: str
    config_name: str
    mode: str
    status: str
    step: int
    total_steps: int
    last_loss: float | None
    reason: str
    attempts: int
    params: dict[str, Any]

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Run:
        return cls(r["run_id"], r["model_version"] or "", r["config_name"], r["mode"] or "",
                   r["status"], r["step"], r["total_steps"] or 0, r["last_loss"],
                   r["status_reason"] or "", r["attempts"], dict(r["params"] or {}))


def new_ids(config_name: str) -> tuple[str, str]:
    """(run_id, model_version): sortable by time, unique without coordination."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    tag = uuid.uuid4().hex[:6]
    return f"run-{stamp}-{tag}", f"{config_name}-{stamp}-{tag}"


def create_run(conn: psycopg.Connection, config_name: str, steps: int, mode: str,
               config: dict[str, Any], trigger: str = "api",
               init: tuple[str, str] | None = None) -> Run:
    """Queue a run and reserve its model version (status 'training'). `init`:
    (model_version, checkpoint_uri) whose weights the run starts from."""
    run_id, version = new_ids(config_name)
    max_tid = conn.execute("SELECT coalesce(max(triple_id), 0) AS m FROM triples").fetchone()["m"]
    params = {"steps": steps, "mode": mode, "trigger": trigger, "max_triple_id": int(max_tid)}
    if init is not None:
        params.update(init_version=init[0], init_uri=init[1])
        config = {**config, "init_version": init[0]}
    conn.execute("INSERT INTO model_versions (model_version, config_name, config, status) "
                 "VALUES (%s, %s, %s, 'training')", (version, config_name, json.dumps(config)))
    row = conn.execute(
        "INSERT INTO training_runs (run_id, model_version, config_name, params, status, "
        "total_steps, mode) VALUES (%s, %s, %s, %s, 'queued', %s, %s) RETURNING *",
        (run_id, version, config_name, json.dumps(params), steps, mode)).fetchone()
    conn.execute("NOTIFY magiclens_training")
    return Run.from_row(row)


def get_run(conn: psycopg.Connection, run_id: str) -> Run:
    row = conn.execute("SELECT * FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"no training run {run_id!r}")
    return Run.from_row(row)


def list_models(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM model_versions ORDER BY created_at DESC, model_version"
                        ).fetchall()


def get_model(conn: psycopg.Connection, model_version: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM model_versions WHERE model_version = %s",
                       (model_version,)).fetchone()
    if row is None:
        raise NotFound(f"no model version {model_version!r}")
    return row


def reserve_import(conn: psycopg.Connection, model_version: str, config_name: str,
                   config: dict[str, Any]) -> None:
    """Claim the name of an imported version (status 'training' while its checkpoint is
    written); Conflict if the name is taken."""
    row = conn.execute(
        "INSERT INTO model_versions (model_version, config_name, config, status, status_reason)"
        " VALUES (%s, %s, %s, 'training', 'importing') ON CONFLICT (model_version) DO NOTHING "
        "RETURNING model_version", (model_version, config_name, json.dumps(config))).fetchone()
    if row is None:
        raise Conflict(f"model version {model_version!r} already exists; pick another --name")


def publish_import(conn: psycopg.Connection, topic: Topic, model_version: str,
                   config_name: str, checkpoint_uri: str, embed_dim: int) -> dict[str, Any]:
    """The imported version becomes 'published' and its ModelPublished goes to the outbox,
    exactly as a trained version's does (so `promote` serves it the same way)."""
    row = conn.execute(
        "UPDATE model_versions SET status = 'published', status_reason = NULL, "
        "checkpoint_uri = %s, embed_dim = %s, updated_at = now() WHERE model_version = %s "
        "AND status = 'training' RETURNING *",
        (checkpoint_uri, embed_dim, model_version)).fetchone()
    if row is None:
        raise Conflict(f"model version {model_version!r} is no longer being imported")
    outbox.enqueue(conn, topic, model_version, events_pb2.ModelPublished(
        model_version=model_version, config_name=config_name,
        checkpoint_uri=checkpoint_uri, embed_dim=embed_dim, promoted=False))
    return row


def fail_import(conn: psycopg.Connection, model_version: str, reason: str) -> None:
    conn.execute("UPDATE model_versions SET status = 'failed', status_reason = %s, "
                 "updated_at = now() WHERE model_version = %s AND status = 'training'",
                 (reason.strip()[:2000] or "import failed", model_version))


def active_run(conn: psycopg.Connection) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM training_runs WHERE status IN ('queued', 'running') "
                        "ORDER BY created_at LIMIT 1").fetchone()


def recover_orphans(conn: psycopg.Connection, max_attempts: int) -> list[str]:
    """Runs left 'running' by a worker that died: requeue (resume) or fail after retries.

    Call only while holding the worker lock: then nobody is running anything.
    """
    out = []
    rows = conn.execute("SELECT run_id, attempts FROM training_runs WHERE status = 'running' "
                        "FOR UPDATE").fetchall()
    for r in rows:
        if r["attempts"] >= max_attempts:
            fail(conn, r["run_id"], f"interrupted {r['attempts']} times (worker restarts); "
                                    "giving up")
        else:
            requeue(conn, r["run_id"], "interrupted by a worker restart; resuming from the "
                                       "last checkpoint")
        out.append(r["run_id"])
    return out


def requeue(conn: psycopg.Connection, run_id: str, reason: str) -> None:
    conn.execute("UPDATE training_runs SET status = 'queued', status_reason = %s, "
                 "updated_at = now() WHERE run_id = %s AND status = 'running'", (reason, run_id))


def claim_next(conn: psycopg.Connection, worker: str) -> Run | None:
    row = conn.execute(
        "UPDATE training_runs SET status = 'running', attempts = attempts + 1, worker = %s, "
        "started_at = coalesce(started_at, now()), updated_at = now() WHERE run_id = ("
        "  SELECT run_id FROM training_runs WHERE status = 'queued' ORDER BY created_at "
        "  LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *", (worker,)).fetchone()
    return Run.from_row(row) if row else None


def set_progress(conn: psycopg.Connection, run_id: str, step: int, loss: float | None) -> None:
    conn.execute("UPDATE training_runs SET step = %s, last_loss = %s, updated_at = now() "
                 "WHERE run_id = %s AND status = 'running'", (step, loss, run_id))


def set_plan(conn: psycopg.Connection, run_id: str, total_steps: int, mode: str,
             step: int) -> None:
    """What a started run will do: its steps, mode and the step it starts (or resumes) at."""
    conn.execute("UPDATE training_runs SET total_steps = %s, mode = %s, step = %s "
                 "WHERE run_id = %s", (total_steps, mode, step, run_id))


def set_params(conn: psycopg.Connection, run_id: str, **extra: Any) -> None:
    conn.execute("UPDATE training_runs SET params = params || %s::jsonb, updated_at = now() "
                 "WHERE run_id = %s", (json.dumps(extra), run_id))


def fail(conn: psycopg.Connection, run_id: str, reason: str) -> None:
    reason = reason.strip()[:2000] or "failed"
    row = conn.execute(
        "UPDATE training_runs SET status = 'failed', status_reason = %s, finished_at = now(), "
        "updated_at = now() WHERE run_id = %s AND status IN ('queued', 'running') "
        "RETURNING model_version", (reason, run_id)).fetchone()
    if row and row["model_version"]:
        conn.execute("UPDATE model_versions SET status = 'failed', status_reason = %s, "
                     "updated_at = now() WHERE model_version = %s AND status = 'training'",
                     (reason, row["model_version"]))


def publish(conn: psycopg.Connection, topic: Topic, run: Run, *, checkpoint_uri: str,
            config: dict[str, Any], metrics: dict[str, float], embed_dim: int,
            final_loss: float | None) -> bool:
    """Success: the version becomes 'published' and ModelPublished goes to the outbox.

    Returns False (and changes nothing) when the run is no longer ours to finish.
    """
    row = conn.execute(
        "UPDATE training_runs SET status = 'succeeded', status_reason = NULL, step = %s, "
        "last_loss = coalesce(%s, last_loss), finished_at = now(), updated_at = now() "
        "WHERE run_id = %s AND status = 'running' RETURNING run_id",
        (run.total_steps, final_loss, run.run_id)).fetchone()
    if row is None:
        return False
    conn.execute(
        "UPDATE model_versions SET status = 'published', checkpoint_uri = %s, config = %s, "
        "metrics = %s, embed_dim = %s, status_reason = NULL, updated_at = now() "
        "WHERE model_version = %s",
        (checkpoint_uri, json.dumps(config), json.dumps(metrics), embed_dim, run.model_version))
    outbox.enqueue(conn, topic, run.model_version, events_pb2.ModelPublished(
        model_version=run.model_version, config_name=run.config_name,
        checkpoint_uri=checkpoint_uri, embed_dim=embed_dim, promoted=False))
    return True


def promote(conn: psycopg.Connection, topic: Topic, model_version: str) -> dict[str, Any]:
    """Make `model_version` the one promoted version and the serving one, in this
    transaction; emit ModelPublished{promoted=true}.

    Promotion is state, not an event (issue 14): `serving_models` is written here, so the
    embedding worker (Triton's current-model file) and the shards converge from Postgres
    within their reconcile interval even when every event is lost. Promoting the version
    that is already promoted repairs: it rewrites the serving row and emits the event again.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PROMOTE_LOCK,))
    row = conn.execute("SELECT * FROM model_versions WHERE model_version = %s FOR UPDATE",
                       (model_version,)).fetchone()
    if row is None:
        raise NotFound(f"no model version {model_version!r}")
    if row["status"] not in ("published", "promoted") or not row["checkpoint_uri"]:
        raise Conflict(f"model version {model_version} is {row['status']}; only a published "
                       "version can be promoted")
    if row["status"] != "promoted":
        conn.execute("UPDATE model_versions SET status = 'published', updated_at = now() "
                     "WHERE status = 'promoted'")
        row = conn.execute(
            "UPDATE model_versions SET status = 'promoted', promoted_at = now(), "
            "updated_at = now() WHERE model_version = %s RETURNING *",
            (model_version,)).fetchone()
    set_serving_version(conn, model_version, row["checkpoint_uri"])
    outbox.enqueue(conn, topic, model_version, events_pb2.ModelPublished(
        model_version=model_version, config_name=row["config_name"],
        checkpoint_uri=row["checkpoint_uri"], embed_dim=row["embed_dim"] or 0, promoted=True))
    return row


# ------------------------------------------------------------------ training data


def triple_rows(conn: psycopg.Connection, split: str, limit: int) -> list[dict[str, Any]]:
    """(triple_id, instruction, page_id, relation, specificity, q_id, q_uri, t_id, t_uri) of
    one split, oldest first. The page lets the trainer use other targets of the same query on
    the same page as hard negatives; specificity is the writer's score (NULL if none)."""
    return conn.execute(_TRIPLES[split] + "ORDER BY t.triple_id LIMIT %s", (limit,)).fetchall()


def caption_rows(conn: psycopg.Connection, image_ids: list[int]) -> list[dict[str, Any]]:
    """(image_id, alt_text, caption) of the given images, in id order."""
    return conn.execute("SELECT image_id, alt_text, caption FROM images "
                        "WHERE image_id = ANY(%s) ORDER BY image_id", (image_ids,)).fetchall()


def new_training_triples(conn: psycopg.Connection) -> int:
    """Usable training triples newer than the newest triple the last run could have seen."""
    row = conn.execute("SELECT (params->>'max_triple_id')::bigint AS m FROM training_runs "
                       "WHERE params ? 'max_triple_id' ORDER BY created_at DESC LIMIT 1"
                       ).fetchone()
    since = int(row["m"]) if row and row["m"] is not None else 0
    return conn.execute(
        f"SELECT count(*) AS n FROM ({_TRIPLES['train']} AND t.triple_id > %s) x",
        (since,)).fetchone()["n"]


# ------------------------------------------------------------------ locks


def lock_auto_start(conn: psycopg.Connection) -> None:
    """Serialise auto-start decisions until this transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_AUTO_LOCK,))


def try_worker_lock(conn: psycopg.Connection) -> bool:
    """Take the single-worker lock for this session (autocommit); False if another has it."""
    return bool(conn.execute("SELECT pg_try_advisory_lock(%s) AS ok",
                             (_WORKER_LOCK,)).fetchone()["ok"])


def ping(conn: psycopg.Connection) -> None:
    """Raise psycopg.Error when the session (and a lock it holds) is gone."""
    conn.execute("SELECT 1")
