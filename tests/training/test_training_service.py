"""TrainingService end to end against real Postgres and Kafka: triples rows -> queued runs
(one at a time) -> model_versions rows + ModelPublished on Kafka; promotion flips the one
promoted version; request validation and status codes through the real entry point."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import pytest
from kafka import KafkaConsumer
from magiclens.v1 import events_pb2
from prometheus_client.parser import text_string_to_metric_families

from runtime import db
from runtime import metrics as runtime_metrics
from runtime.blobstore import open_blobstore
from runtime.bus import ensure_topics
from runtime.config import load_settings
from runtime.grpc_server import GrpcServer
from runtime.outbox import OutboxRelay
from runtime.serving import serving_version
from services.training import client, store
from services.training.config import TrainingSettings
from services.training.server import TrainingServicer, registration
from services.training.worker import TrainingWorker, resolve_config
from tests.support.processes import free_port, start, stop, wait_grpc
from tests.training.training_fixtures import (
    compilation_cache,
    drop_database,
    fresh_database,
    seed,
    tiny_model_kwargs,
)
from trainer.checkpoints import load_params


class Events:
    """Collects ModelPublished events from a unique consumer group (from the earliest offset)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"test-training-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest", enable_auto_commit=False,
            session_timeout_ms=6000, heartbeat_interval_ms=2000)
        self.seen: list[events_pb2.ModelPublished] = []

    def wait_for(self, predicate, timeout: float = 60.0) -> list[events_pb2.ModelPublished]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=500).values():
                for r in records:
                    msg = events_pb2.ModelPublished()
                    msg.ParseFromString(r.value)
                    assert r.key.decode() == msg.model_version
                    self.seen.append(msg)
            if predicate(self.seen):
                return self.seen
        raise AssertionError(f"events not seen in {timeout}s: {self.seen}")

    def close(self) -> None:
        deadline = time.monotonic() + 10  # Tansu: never leave a group before assignment
        while not self.consumer.assignment() and time.monotonic() < deadline:
            self.consumer.poll(timeout_ms=200)
        self.consumer.close(autocommit=False)


@pytest.fixture(scope="module")
def svc(infra_servers, tmp_path_factory):
    name = f"training_s_{uuid.uuid4().hex[:8]}"
    url = fresh_database(infra_servers.database_url, name)
    data_dir = tmp_path_factory.mktemp("training-svc")
    topic = f"test.models.{name}"
    settings = load_settings(TrainingSettings, database_url=url,
                             kafka_bootstrap_servers=infra_servers.kafka_bootstrap,
                             data_dir=data_dir, training_models_topic=topic,
                             training_poll_s=0.2, training_progress_interval_s=0)
    ensure_topics(infra_servers.kafka_bootstrap, [store.models_topic(topic)])
    seed(url, open_blobstore(settings.blob_root), name)
    events = Events(infra_servers.kafka_bootstrap, topic)
    worker = TrainingWorker(settings, tiny_model_kwargs)
    server = GrpcServer([registration(TrainingServicer(settings, worker))], port=0)
    port = server.start()
    relay = OutboxRelay(url, infra_servers.kafka_bootstrap, idle_poll_s=0.1)
    threads = [threading.Thread(target=t, daemon=True) for t in (worker.run, relay.run)]
    with compilation_cache(data_dir / "jax_cache"):
        for t in threads:
            t.start()
        yield SimpleNamespace(url=url, stub=client.stub(f"127.0.0.1:{port}"), events=events,
                              settings=settings)
        worker.stop()
        relay.stop()
        for t in threads:
            t.join(60)
        server.stop(1)
        events.close()
    drop_database(infra_servers.database_url, name)


@pytest.fixture(scope="module")
def metrics_port(svc) -> tuple[int, dict]:
    """This process's /metrics (the worker runs in it), and its training series before the
    runs of `trained`: the counters are process-wide, so the test compares differences."""
    port = free_port()
    runtime_metrics.serve(port)
    return port, _training_series(port)


def _training_series(port: int) -> dict:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.startswith("magiclens_training_")}


@pytest.fixture(scope="module")
def trained(svc, metrics_port) -> SimpleNamespace:
    """Two runs queued together and trained to the end (one at a time), watched as they go:
    the published models every test of this module starts from, whatever the test order."""
    a = client.start_training("compact", 10, "frozen", target=svc.stub)
    b = client.start_training("compact", 6, "frozen", target=svc.stub)
    both_running, steps_seen = False, set()
    deadline = time.monotonic() + 300  # two runs in turn; CI machines run at load ~10
    while time.monotonic() < deadline:
        ra, rb = (client.get_run(r.run_id, svc.stub) for r in (a, b))
        both_running |= ra.status == rb.status == "running"
        if ra.status == "running":
            steps_seen.add(ra.step)
        if ra.status in client.FINAL and rb.status in client.FINAL:
            break
        time.sleep(0.1)
    return SimpleNamespace(a=a, b=b, ra=ra, rb=rb, both_running=both_running,
                           steps_seen=steps_seen)


def _recall_promises(metrics: dict[str, float], queries: int) -> None:
    """What a published R@k is: a recall over the held-out queries, in %, growing with k."""
    for method in ("magiclens", "image_only", "text_only", "image_text_sum"):
        r = [metrics[f"{method}/R@{k}"] for k in (1, 5, 10)]
        assert r == sorted(r), (method, r)
        for v in r:
            hits = v * queries / 100
            assert hits == pytest.approx(round(hits), abs=1e-6), (method, v, queries)


def test_runs_train_one_at_a_time_and_publish_models(svc, trained):
    a, b, ra, rb = trained.a, trained.b, trained.ra, trained.rb
    assert (a.status, b.status) == ("queued", "queued") and a.model_version != b.model_version
    assert (ra.status, rb.status) == ("succeeded", "succeeded"), (ra.reason, rb.reason)
    assert not trained.both_running
    assert (ra.step, ra.total_steps, rb.step) == (10, 10, 6) and ra.last_loss > 0
    assert len(trained.steps_seen) >= 2, trained.steps_seen  # progress visible while it trained
    assert client.wait_for_run(a.run_id, svc.stub, timeout=5).status == "succeeded"

    models = {m.model_version: m for m in client.list_models(svc.stub)}
    for r in (a, b):
        m = models[r.model_version]
        assert m.status in ("published", "promoted") and m.config_name == "compact"
        assert m.checkpoint_uri.startswith("file://")
        assert Path(m.checkpoint_uri.removeprefix("file://"), "params").is_dir()
        assert m.metrics["data/train_triples"] == 16 and m.metrics["data/heldout_triples"] == 8
        _recall_promises(m.metrics, queries=8)

    # The trained checkpoint loads with the trainer's own reader.

    params, meta = load_params(models[a.model_version].checkpoint_uri.removeprefix("file://"))
    assert meta["steps"] == 10 and "multimodal_encoder" in params
    # The published metrics are the checkpoint's own held-out evaluation, not made up or
    # lost between the trainer and Postgres.
    for key in ("magiclens/R@1", "image_only/R@1", "text_only/R@1", "image_text_sum/R@1"):
        assert models[a.model_version].metrics[key] == pytest.approx(meta["metrics"][key])

    published = {a.model_version, b.model_version}
    seen = svc.events.wait_for(lambda ev: {e.model_version for e in ev if not e.promoted}
                               >= published)
    for e in seen:
        assert (e.config_name, e.embed_dim) == ("compact", 64)
        assert e.checkpoint_uri == models[e.model_version].checkpoint_uri


def test_training_metrics_count_steps_loss_and_runs(svc, trained, metrics_port):
    assert (trained.ra.status, trained.rb.status) == ("succeeded", "succeeded")
    port, before = metrics_port
    after = _training_series(port)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    batch = resolve_config("compact", 10, "frozen").batch_size
    assert delta("magiclens_training_steps_total") == 10 + 6
    assert delta("magiclens_training_examples_total") == (10 + 6) * batch
    assert delta("magiclens_training_runs_total", outcome="published") == 2
    assert delta("magiclens_training_step_seconds_count") == 10 + 6 - 2  # between steps
    assert after[("magiclens_training_step", ())] == 6  # the last run's last step
    assert after[("magiclens_training_loss", ())] > 0


def _all_published(svc) -> list[events_pb2.ModelPublished]:
    """Every ModelPublished the service has enqueued, once the relay has published them all
    and the event reader has seen as many (the relay's published marker, then the count)."""
    def relayed() -> int | None:
        with db.connect(svc.url) as conn:
            row = conn.execute("SELECT count(*) AS n, count(published_at) AS done FROM outbox "
                               "WHERE topic = %s", (svc.settings.training_models_topic,)
                               ).fetchone()
        return row["n"] if row["n"] == row["done"] else None

    deadline = time.monotonic() + 60
    while (n := relayed()) is None:
        assert time.monotonic() < deadline, "the relay did not publish the outbox"
        time.sleep(0.1)
    return svc.events.wait_for(lambda ev: len(ev) >= n)


def test_promote_flips_the_promoted_version(svc, trained):
    assert (trained.ra.status, trained.rb.status) == ("succeeded", "succeeded")
    a, b = trained.a.model_version, trained.b.model_version
    promoted_before = sum(e.promoted for e in _all_published(svc))

    def statuses():
        return {m.model_version: m.status for m in client.list_models(svc.stub)}

    assert client.promote(a, svc.stub).status == "promoted"
    assert client.promote(b, svc.stub).status == "promoted"
    st = statuses()
    assert (st[a], st[b]) == ("published", "promoted")
    # Re-promoting repairs: the serving state is rewritten and the event sent again.
    with db.transaction(svc.url) as conn:
        conn.execute("UPDATE serving_models SET model_version = %s", (a,))
    assert client.promote(b, svc.stub).status == "promoted"
    with db.transaction(svc.url) as conn:
        assert serving_version(conn)[0] == b
    assert client.promote(a, svc.stub).status == "promoted"
    st = statuses()
    assert (st[a], st[b]) == ("promoted", "published")
    assert list(st.values()).count("promoted") == 1
    with db.transaction(svc.url) as conn:  # written with the promotion, not by a consumer
        assert serving_version(conn)[0] == a
    # Exactly one event per promotion, in order: every enqueued event published and read.
    seen = _all_published(svc)
    assert [e.model_version for e in seen if e.promoted][promoted_before:] == [a, b, b, a]

    with pytest.raises(grpc.RpcError) as err:
        client.promote("no-such-version", svc.stub)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with db.transaction(svc.url) as conn:
        conn.execute("INSERT INTO model_versions (model_version, config_name, status) "
                     "VALUES ('still-training', 'compact', 'training')")
    with pytest.raises(grpc.RpcError) as err:
        client.promote("still-training", svc.stub)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_entry_point_validates_requests(infra_servers, tmp_path):
    name = f"training_e_{uuid.uuid4().hex[:8]}"
    url = fresh_database(infra_servers.database_url, name)
    port = free_port()
    env = infra_servers.env(DATABASE_URL=url, MAGICLENS_GRPC_PORT=str(port),
                            MAGICLENS_METRICS_PORT="0", MAGICLENS_DATA_DIR=str(tmp_path),
                            MAGICLENS_TRAINING_JAX_CACHE="false")
    log = tmp_path / "training.log"
    proc = start("services.training", env=env, log=log)
    try:
        channel = wait_grpc(port, proc=proc, log=log)
        stub = client.stub(f"127.0.0.1:{port}")
        for kwargs, code in [
            (dict(config_name="no_such_config"), grpc.StatusCode.INVALID_ARGUMENT),
            (dict(config_name="../etc"), grpc.StatusCode.INVALID_ARGUMENT),
            (dict(config_name="compact", steps=-5), grpc.StatusCode.INVALID_ARGUMENT),
            (dict(config_name="compact", mode="half"), grpc.StatusCode.INVALID_ARGUMENT),
            (dict(config_name="base", steps=10), grpc.StatusCode.FAILED_PRECONDITION),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                client.start_training(target=stub, **kwargs)
            assert err.value.code() == code, (kwargs, err.value.details())
        with pytest.raises(grpc.RpcError) as err:
            client.get_run("run-does-not-exist", stub)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            client.get_run("", stub)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.list_models(stub) == []
        with db.connect(url) as conn:  # nothing was queued by the rejected requests
            assert conn.execute("SELECT count(*) AS n FROM training_runs").fetchone()["n"] == 0
        channel.close()
    finally:
        code = stop(proc, 60)
        drop_database(infra_servers.database_url, name)
    assert code == 0, log.read_text()[-2000:]
