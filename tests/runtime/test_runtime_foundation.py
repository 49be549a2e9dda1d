"""Migrations, configuration errors, blob store, gRPC bootstrap and generated code."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from magiclens.v1 import events_pb2

from runtime import auth, db, rpc
from runtime.blobstore import FileBlobStore, open_blobstore
from runtime.bus import BadEvent, decode
from runtime.config import BaseServiceSettings, load_settings
from runtime.errors import ConfigError, UnavailableError
from runtime.grpc_server import GrpcServer
from runtime.service import Service
from runtime.topics import ALL_TOPICS, PAGES_DISCOVERED, markdown_table, renamed

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_TABLES = {"pages", "images", "page_images", "image_rejections", "image_annotations",
                   "pairs", "triples", "model_versions", "training_runs", "image_embeddings",
                   "index_snapshots", "outbox", "processed_events", "dead_letters",
                   "schema_migrations"}


@pytest.fixture
def fresh_database(infra_servers, unique):
    name = f"mig_{unique}"
    admin = infra_servers.database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield infra_servers.database_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_migrations_apply_from_empty_and_rerun_idempotently(fresh_database, tmp_path):
    applied = db.migrate(fresh_database)
    assert applied and applied[0] == "0001_initial"
    with psycopg.connect(fresh_database) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables >= EXPECTED_TABLES
    assert db.migrate(fresh_database) == []  # second run: nothing to do

    # An applied migration that was edited afterwards is refused, not silently skipped.
    edited = tmp_path / "migs"
    edited.mkdir()
    for mig in db.load_migrations():
        (edited / f"{mig.name}.sql").write_text(mig.sql)
    first = sorted(edited.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(RuntimeError, match="edited after being applied"):
        db.migrate(fresh_database, edited)


def test_pipeline_state_is_in_postgres(fresh_database):
    """Rows carry their state, and the schema refuses states that do not exist."""
    db.migrate(fresh_database)
    with psycopg.connect(fresh_database) as conn:
        conn.execute("INSERT INTO pages (url, url_hash, domain) VALUES ('http://a/', 'h', 'a')")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE pages SET status = 'halfway'")


def test_live_images_are_in_the_pool_and_have_bytes(fresh_database):
    """One rule, in the schema: not rejected, not deleted, and with a blob."""
    db.migrate(fresh_database)
    with psycopg.connect(fresh_database) as conn:
        for i, (status, blob) in enumerate([("mined", "file:///a"), ("annotated", "file:///b"),
                                            ("rejected", "file:///c"), ("deleted", "file:///d"),
                                            ("mined", None)]):
            conn.execute("INSERT INTO images (content_hash, source_url, status, blob_uri) "
                         "VALUES (%s, 'http://a/x.png', %s, %s)", (f"h{i}", status, blob))
        live = {r[0] for r in conn.execute("SELECT content_hash FROM live_images")}
    assert live == {"h0", "h1"}


def test_bad_configuration_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://nope")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "no-port-here")
    with pytest.raises(ConfigError) as err:
        load_settings(BaseServiceSettings)
    msg = str(err.value)
    assert "\n" not in msg and "DATABASE_URL" in msg and "KAFKA_BOOTSTRAP_SERVERS" in msg


def _run_relay(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.outbox_relay"], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("override, code, needle", [
    ({"DATABASE_URL": "mysql://x"}, 2, "DATABASE_URL"),
    ({"MAGICLENS_OUTBOX_BATCH": "-5"}, 2, "MAGICLENS_OUTBOX_BATCH"),
    ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}, 1, "PostgreSQL"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, 1, "Kafka"),
])
def test_entry_point_errors_are_one_line_not_a_traceback(infra_servers, override, code, needle):
    res = _run_relay(infra_servers.env(**override))
    assert res.returncode == code, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr


def test_unreachable_database_raises_unavailable():
    with pytest.raises(UnavailableError, match="unreachable"):
        db.connect("postgresql://postgres:secret@127.0.0.1:1/x", timeout=2)


def test_blobstore_is_content_addressed_and_confined(tmp_path):
    store = open_blobstore(f"file://{tmp_path}")
    uri = store.put(b"hello", ".png")
    assert store.put(b"hello", ".png") == uri and store.get(uri) == b"hello"
    assert isinstance(store, FileBlobStore)
    with pytest.raises(ValueError):
        store.get(f"file://{tmp_path}/../etc/passwd")
    with pytest.raises(ValueError):
        store.put(b"x", "/../evil")


def test_events_decode_protobuf_and_json_and_reject_garbage():
    msg = events_pb2.PageDiscovered(url="http://x/", source="web")
    assert decode(PAGES_DISCOVERED, msg.SerializeToString(), {}) == msg
    # JSON (what external producers send): the URL only; unknown keys are ignored, the
    # message's other fields are refused (they come through SubmitPages, an admin call).
    assert decode(PAGES_DISCOVERED, b'{"url": "http://x/", "priority": 1}',
                  {}) == events_pb2.PageDiscovered(url="http://x/")
    for field in ('"source": "web"', '"html": "<p>"', '"split": "heldout"',
                  '"discoveredAt": "2024-01-01T00:00:00Z"'):
        with pytest.raises(BadEvent, match="only through an authenticated gRPC call"):
            decode(PAGES_DISCOVERED, b'{"url": "http://x/", ' + field.encode() + b"}", {})
    with pytest.raises(BadEvent):
        decode(PAGES_DISCOVERED, b"[1, 2]", {"content-type": "application/json"})
    with pytest.raises(BadEvent):
        decode(ALL_TOPICS[1], b'{"image_id": 1}', {})  # JSON only on the ingestion topic


def test_grpc_bootstrap_serves_health_and_reflection_and_stops_gracefully():
    server = GrpcServer([], port=0)
    port = server.start()
    with rpc.channel(f"127.0.0.1:{port}", role=auth.READ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        names = {s.name for r in refl.ServerReflectionInfo(iter([req]), timeout=5)
                 for s in r.list_services_response.service}
        assert "grpc.health.v1.Health" in names
    server.stop(grace=1)


class _Loop:
    """A worker loop; `stuck` ones ignore stop() (a computation that cannot be interrupted)."""

    def __init__(self, stuck: bool = False) -> None:
        self.stuck, self.started, self.stopping = stuck, threading.Event(), threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        self.started.set()
        (self.release if self.stuck else self.stopping).wait(30)

    def stop(self) -> None:
        self.stopping.set()


def test_service_runs_its_own_loops_and_says_which_it_had_to_abandon():
    settings = load_settings(BaseServiceSettings, shutdown_grace_s=0.2)
    service = Service("loops", settings)
    polite, stuck = _Loop(), _Loop(stuck=True)
    service.add_worker("polite", polite)
    service.add_worker("stuck", stuck)
    service.start()
    assert polite.started.wait(5) and stuck.started.wait(5)
    service.stop()
    assert polite.stopping.is_set() and stuck.stopping.is_set()
    assert service.abandoned == ["stuck"]
    stuck.release.set()


def test_generated_code_is_current(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts/gen_protos.sh"), str(tmp_path)], cwd=ROOT,
                   check=True, capture_output=True, env={**os.environ, "PYTHON": sys.executable})
    cmp = filecmp.dircmp(tmp_path / "magiclens/v1", ROOT / "gen/magiclens/v1",
                         ignore=["__pycache__"])
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only, \
        "gen/ is stale: run `task gen`"


def test_topic_table_doc_is_current():
    doc = (ROOT / "docs/topics.md").read_text()
    assert markdown_table() in doc, "docs/topics.md is stale: run `task docs:topics`"
    assert len({t.name for t in ALL_TOPICS}) == len(ALL_TOPICS)


def test_a_renamed_topic_keeps_everything_but_its_name():
    assert renamed(PAGES_DISCOVERED, PAGES_DISCOVERED.name) is PAGES_DISCOVERED
    private = renamed(PAGES_DISCOVERED, "test.pages")
    assert private.name == "test.pages"
    assert (private.key, private.message, private.partitions, private.accepts_json) == (
        PAGES_DISCOVERED.key, PAGES_DISCOVERED.message, PAGES_DISCOVERED.partitions, True)


def test_protos_pass_buf_lint():
    res = subprocess.run(["bash", str(ROOT / "scripts/buf.sh"), "lint"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode != 3, (  # scripts/buf.sh: npm missing, so buf cannot be installed
        f"{res.stderr.strip()}; ./taskw installs npm (env/apt.txt) when run as root")
    assert res.returncode == 0, res.stdout + res.stderr
