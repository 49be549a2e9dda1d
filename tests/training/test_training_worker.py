"""PostgresTripleSource and the worker against real Postgres: which triples train, export,
resumption after a worker dies mid-run, recorded failures, auto-start by new triples."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from runtime import db
from runtime.blobstore import open_blobstore
from runtime.config import load_settings
from services.training import handlers, store
from services.training.config import TrainingSettings
from services.training.progress import latest_checkpoint_step
from services.training.triples import PostgresTripleSource
from services.training.worker import TrainingWorker
from tests.training.training_fixtures import (
    compilation_cache,
    drop_database,
    fresh_database,
    seed,
    tiny_model_kwargs,
)
from trainer.data.triples import JsonlTriples, load_image


@pytest.fixture(scope="module")
def env(infra_servers, tmp_path_factory):
    name = f"training_w_{uuid.uuid4().hex[:8]}"
    url = fresh_database(infra_servers.database_url, name)
    data_dir = tmp_path_factory.mktemp("training-data")
    settings = load_settings(TrainingSettings, database_url=url,
                             kafka_bootstrap_servers=infra_servers.kafka_bootstrap,
                             data_dir=data_dir, training_progress_interval_s=0)
    seeded = seed(url, open_blobstore(settings.blob_root), name)
    with compilation_cache(data_dir / "jax_cache"):
        yield settings, seeded
    drop_database(infra_servers.database_url, name)


def _row(url: str, sql: str, *args):
    with db.connect(url) as conn:
        return conn.execute(sql, args).fetchone()


def test_triple_source_excludes_heldout_superseded_and_broken(env, tmp_path):
    settings, seeded = env
    src = PostgresTripleSource(settings.database_url, settings.blob_root, tmp_path / "img")
    assert sorted(src.triple_ids) == sorted(seeded.train_triples)
    assert src.skipped == {"image unavailable or undecodable": 1}
    for t in src:
        assert load_image(t.query_image).size == (64, 64)
    held = PostgresTripleSource(settings.database_url, settings.blob_root, tmp_path / "img",
                                "heldout")
    assert sorted(held.triple_ids) == sorted(seeded.heldout_triples)
    assert not set(held.triple_ids) & set(src.triple_ids)
    # Export round-trips through the trainer's own JSONL reader.
    back = list(JsonlTriples(src.export(tmp_path / "train.jsonl")))
    assert back == list(src)
    assert all(t.relation for t in back)  # the writer's relation label travels too
    with pytest.raises(ValueError):
        PostgresTripleSource(settings.database_url, settings.blob_root, tmp_path, "test")


def test_interrupted_run_resumes_from_its_checkpoint(env):
    settings, _ = env
    url = settings.database_url
    with db.transaction(url) as conn:
        run = store.create_run(conn, "compact", 12, "frozen", {})
    first = TrainingWorker(settings, tiny_model_kwargs)
    assert first.tick(stop_at=6)  # trains 6 of 12 steps, checkpoints, then "dies"
    r = _row(url, "SELECT status, step, attempts FROM training_runs WHERE run_id = %s",
             run.run_id)
    assert (r["status"], r["step"], r["attempts"]) == ("running", 6, 1)
    first._drop_lock()  # the dead process's session (and its lock) ends

    second = TrainingWorker(settings, tiny_model_kwargs)
    assert second.tick()
    r = _row(url, "SELECT * FROM training_runs WHERE run_id = %s", run.run_id)
    assert r["status"] == "succeeded", r["status_reason"]
    assert (r["step"], r["total_steps"], r["attempts"]) == (12, 12, 2)
    assert r["params"]["resumed_from_step"] == 6
    assert r["params"]["data"]["train"]["triples"] == 16
    mv = _row(url, "SELECT * FROM model_versions WHERE model_version = %s", run.model_version)
    assert mv["status"] == "published" and mv["embed_dim"] == 64
    assert mv["metrics"]["data/heldout_triples"] == 8
    assert "magiclens/R@1" in mv["metrics"] and "image_text_sum/R@1" in mv["metrics"]
    assert Path(mv["checkpoint_uri"].removeprefix("file://"), "params").is_dir()
    event = _row(url, "SELECT * FROM outbox WHERE msg_key = %s", run.model_version)
    assert event["topic"] == settings.training_models_topic
    second._drop_lock()


def test_shutdown_requeues_the_run_and_the_next_worker_resumes_it(env):

    settings, _ = env
    url = settings.database_url
    often = settings.model_copy(update={"training_checkpoint_every": 2})
    with db.transaction(url) as conn:
        run = store.create_run(conn, "compact", 5000, "frozen", {})
    worker = TrainingWorker(often, tiny_model_kwargs)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while _row(url, "SELECT step FROM training_runs WHERE run_id = %s", run.run_id)["step"] < 5:
        assert time.monotonic() < deadline, "run made no progress"
        time.sleep(0.05)
    worker.stop()  # what SIGTERM does: leave the loop after the current step
    thread.join(60)
    assert not thread.is_alive()
    r = _row(url, "SELECT status, status_reason FROM training_runs WHERE run_id = %s",
             run.run_id)
    assert r["status"] == "queued" and "interrupted by shutdown" in r["status_reason"]
    saved = latest_checkpoint_step(often.runs_dir / run.run_id)
    assert saved >= 4

    nxt = TrainingWorker(often, tiny_model_kwargs)
    try:
        assert nxt.tick(stop_at=saved + 4)
        r = _row(url, "SELECT * FROM training_runs WHERE run_id = %s", run.run_id)
        # The interrupted trainer waits for its in-flight checkpoint save before returning.
        assert r["params"]["resumed_from_step"] == saved and r["step"] == saved + 4
        assert r["attempts"] == 2
    finally:
        with db.transaction(url) as conn:
            store.fail(conn, run.run_id, "test over")
        nxt._drop_lock()  # a failed assertion must not starve the next tests of the lock


def test_failures_are_recorded_with_a_reason(env):
    settings, _ = env
    url = settings.database_url
    strict = settings.model_copy(update={"training_min_triples": 1000})
    with db.transaction(url) as conn:
        run = store.create_run(conn, "compact", 5, "frozen", {})
    worker = TrainingWorker(strict, tiny_model_kwargs)
    assert worker.tick()
    r = _row(url, "SELECT status, status_reason FROM training_runs WHERE run_id = %s",
             run.run_id)
    assert r["status"] == "failed" and "usable training triples" in r["status_reason"]
    mv = _row(url, "SELECT status FROM model_versions WHERE model_version = %s",
              run.model_version)
    assert mv["status"] == "failed"

    # A run that kept dying is given up after MAGICLENS_TRAINING_MAX_ATTEMPTS starts.
    with db.transaction(url) as conn:
        run = store.create_run(conn, "compact", 5, "frozen", {})
        conn.execute("UPDATE training_runs SET status = 'running', attempts = %s "
                     "WHERE run_id = %s", (settings.training_max_attempts, run.run_id))
    assert not worker.tick()
    r = _row(url, "SELECT status, status_reason FROM training_runs WHERE run_id = %s",
             run.run_id)
    assert r["status"] == "failed" and "interrupted" in r["status_reason"]
    worker._drop_lock()


@pytest.fixture
def own_env(infra_servers, env):
    """The module's settings on a database of this test's own (it adds triples, which would
    change what the other tests train on, whatever the order)."""
    settings, _ = env
    name = f"training_a_{uuid.uuid4().hex[:8]}"
    url = fresh_database(infra_servers.database_url, name)
    seeded = seed(url, open_blobstore(settings.blob_root), name)
    yield settings.model_copy(update={"database_url": url}), seeded
    drop_database(infra_servers.database_url, name)


def test_auto_start_counts_new_training_triples_only(own_env):
    settings, seeded = own_env
    url = settings.database_url
    auto = settings.model_copy(update={"training_auto_min_new_triples": 3,
                                       "training_auto_steps": 5})
    with db.transaction(url) as conn:
        earlier = store.create_run(conn, "compact", 5, "frozen", {})  # it sees every triple
        store.fail(conn, earlier.run_id, "an earlier run, over")
    with db.transaction(url) as conn:
        assert store.new_training_triples(conn) == 0  # the earlier run saw every triple
        assert handlers.maybe_start(conn, auto) is None
        for tid in seeded.train_triples[:3]:  # three new training triples (same images)
            conn.execute(
                "INSERT INTO triples (pair_id, query_image_id, target_image_id, instruction, "
                "writer, writer_version) SELECT pair_id, query_image_id, target_image_id, "
                "instruction || ' again', writer, 'v2' FROM triples WHERE triple_id = %s",
                (tid,))
        for tid in seeded.heldout_triples[:3]:  # held-out ones do not count
            conn.execute(
                "INSERT INTO triples (pair_id, query_image_id, target_image_id, instruction, "
                "writer, writer_version) SELECT pair_id, query_image_id, target_image_id, "
                "instruction || ' again', writer, 'v2' FROM triples WHERE triple_id = %s",
                (tid,))
        assert store.new_training_triples(conn) == 3
        run = handlers.maybe_start(conn, auto)
        assert run is not None and run.params["trigger"] == "auto"
        assert handlers.maybe_start(conn, auto) is None  # one queued run is enough
        conn.execute("UPDATE training_runs SET status = 'failed' WHERE run_id = %s",
                     (run.run_id,))
