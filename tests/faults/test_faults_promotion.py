"""Promotion is state: with every ModelPublished event lost, the embedding worker (and through
its current-model file, Triton) converges on the promoted version from Postgres alone, and
re-promoting a version repairs a serving row that drifted."""

from __future__ import annotations

import psycopg

from runtime import db
from runtime.serving import serving_version
from runtime.topics import MODELS_PUBLISHED
from services.embedding.current import read_current
from services.training import store as training_store
from tests.faults.fault_support import dead_letters
from tests.support.processes import free_port, start, stop, wait_for


def _versions(url: str, tmp_path, names: list[str]) -> dict[str, str]:
    dirs = {}
    with db.transaction(url) as conn:
        for name in names:
            path = tmp_path / "checkpoints" / name
            path.mkdir(parents=True)
            dirs[name] = str(path)
            conn.execute("INSERT INTO model_versions (model_version, config_name, "
                         "checkpoint_uri, status, embed_dim) VALUES (%s, 'compact', %s, "
                         "'published', 64)", (name, f"file://{path}"))
    return dirs


def _promote(url: str, version: str) -> None:
    with db.transaction(url) as conn:
        training_store.promote(conn, MODELS_PUBLISHED, version)


def _serving(url: str) -> str | None:
    with db.connect(url) as conn:
        found = serving_version(conn)
    return found[0] if found else None


def test_a_promotion_whose_event_is_lost_converges(private_broker, infra_servers, fresh_db,
                                                   unique, tmp_path):
    url = fresh_db
    a, b = f"fault-a-{unique}", f"fault-b-{unique}"
    dirs = _versions(url, tmp_path, [a, b])
    current = tmp_path / "serving" / "current_model.json"
    log = tmp_path / "worker.log"
    # The worker listens on a models topic nobody publishes to: every promotion event is lost.
    worker = start("services.embedding.worker", log=log, env=infra_servers.env(
        DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS=private_broker.bootstrap,
        MAGICLENS_EMBEDDING_MODELS_TOPIC=f"test.lost.models.{unique}",
        MAGICLENS_EMBEDDING_IMAGES_TOPIC=f"test.lost.images.{unique}",
        MAGICLENS_EMBEDDING_GROUP=f"g-{unique}", MAGICLENS_TRITON_URL=f"127.0.0.1:{free_port()}",
        MAGICLENS_CURRENT_MODEL_FILE=str(current), MAGICLENS_RECONCILE_INTERVAL_S="1"))
    try:
        _promote(url, a)
        assert _serving(url) == a  # written by the promotion itself, not by a consumer
        wait_for(lambda: read_current(current) == (a, dirs[a]), 60,
                 "the worker to point Triton at the first promotion", proc=worker, log=log)
        _promote(url, b)
        wait_for(lambda: read_current(current) == (b, dirs[b]), 30,
                 "the worker to follow the second promotion", proc=worker, log=log)
        # Drift (the state the lost event used to leave): re-promoting repairs it.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE serving_models SET model_version = %s, checkpoint_uri = %s",
                         (a, f"file://{dirs[a]}"))
        wait_for(lambda: read_current(current) == (a, dirs[a]), 30, "the drift to show",
                 proc=worker, log=log)
        _promote(url, b)
        assert _serving(url) == b
        wait_for(lambda: read_current(current) == (b, dirs[b]), 30,
                 "re-promoting to repair the serving version", proc=worker, log=log)
        assert worker.poll() is None, "the embedding worker stopped"
    finally:
        code = stop(worker)
    with psycopg.connect(url) as conn:
        promoted = [r[0] for r in conn.execute(
            "SELECT model_version FROM model_versions WHERE status = 'promoted'")]
    assert promoted == [b]
    assert dead_letters(url, "embedding-worker") == []
    assert code == 0
