"""The dev overlay's environment, resolved by deploy/local_env.py, runs the real entry points.

The outbox relay is started with exactly the variables its dev pod gets (cluster addresses
mapped to the local PostgreSQL/Tansu) and must publish a row; mining likewise must come up
SERVING on its gRPC health service once services/mining exists. deploy/smoke.py is checked
against a real runtime gRPC server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy import catalog, local_env, smoke, tool  # noqa: E402


@pytest.fixture(scope="module")
def dev_text() -> str:
    try:
        tool.kubectl_path()
    except tool.ToolError as exc:
        pytest.skip(f"{exc} (needed to render the dev overlay)")
    return tool.render("dev")


def _procs(dev_text, infra=None, tmp_path=None):
    kw = {}
    if infra is not None:
        kw = {"database_url": infra.database_url, "kafka_bootstrap": infra.kafka_bootstrap}
    return {p.name: p for p in local_env.processes("dev", text=dev_text, data_dir=tmp_path,
                                                    **kw)}


def test_every_dev_workload_resolves_to_local_addresses(dev_text, tmp_path):
    procs = _procs(dev_text, tmp_path=tmp_path)
    want = {w.name if w.kind == "Deployment" else f"{w.name}-0" for w in catalog.WORKLOADS
            if w.sidecar is None}
    want |= {"embedding-server", "embedding-worker"}  # the two containers of the Triton pod
    assert set(procs) == want
    for name, p in procs.items():
        for key, value in p.env.items():
            assert "magiclens-kafka" not in value and ".search-shard" not in value, (name, key)
            assert not value.startswith("s3://"), (name, key)
        assert not any(k.startswith("AWS_") for k in p.env), name
        assert p.env["MAGICLENS_DATA_DIR"] == str(tmp_path)
    assert procs["mining"].env["MAGICLENS_GRPC_PORT"] == "50051"
    assert procs["mining"].env["DATABASE_URL"].startswith("postgresql://")
    assert procs["search-shard-0"].env["MAGICLENS_SHARD"] == "0"
    assert procs["search-root"].env["MAGICLENS_SHARDS"] == "127.0.0.1:50060"
    assert procs["search-root"].env["MAGICLENS_TRITON_URL"] == "127.0.0.1:8001"
    assert procs["outbox-relay"].command[1:] == ["-m", "services.runtime.outbox"]
    server = procs["embedding-server"]
    assert server.command[0].endswith(".venv-triton/bin/python")
    assert server.command[-1] == str(tmp_path / "embedding" / "current.json")
    assert "DATABASE_URL" not in server.env and "DATABASE_URL" in procs["embedding-worker"].env
    assert procs["gateway"].env["MAGICLENS_GATEWAY_HOST"] == "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(proc: local_env.LocalProcess, **override: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MAGICLENS_") and k not in ("DATABASE_URL",
                                                         "KAFKA_BOOTSTRAP_SERVERS")}
    env.update(proc.env)
    env.update(override)
    return subprocess.Popen(proc.command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stop(p: subprocess.Popen[str]) -> tuple[int, str]:
    p.terminate()
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return p.returncode, err


def test_outbox_relay_publishes_with_the_dev_environment(dev_text, infra_servers, tmp_path):
    from magiclens.v1 import events_pb2

    from services.runtime import db, outbox
    from services.runtime.topics import PAGES_DISCOVERED

    relay = _procs(dev_text, infra_servers, tmp_path)["outbox-relay"]
    assert relay.env["DATABASE_URL"] == infra_servers.database_url
    url = f"https://example.invalid/{uuid.uuid4().hex}"
    with db.transaction(infra_servers.database_url) as conn:
        eid = outbox.enqueue(conn, PAGES_DISCOVERED, url, events_pb2.PageDiscovered(url=url))
    p = _start(relay)
    published = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            with db.connect(infra_servers.database_url) as conn:
                published = conn.execute("SELECT published_at FROM outbox WHERE event_id = %s",
                                         (eid,)).fetchone()["published_at"]
            if published is not None:
                break
            time.sleep(0.3)
    finally:
        code, err = _stop(p)
    assert published is not None, f"relay did not publish (exit {code}): {err[-2000:]}"
    assert code == 0, err[-2000:]
    assert "outbox relay started" in err


def test_mining_serves_with_the_dev_environment(dev_text, infra_servers, tmp_path):
    if not (ROOT / "services" / "mining" / "__main__.py").is_file():
        pytest.skip("services/mining/__main__.py does not exist yet")
    mining = _procs(dev_text, infra_servers, tmp_path)["mining"]
    port = _free_port()  # the dev env's port, moved only so a running local suite is not hit
    p = _start(mining, MAGICLENS_GRPC_PORT=str(port), MAGICLENS_METRICS_PORT=str(_free_port()))
    problem = "not started"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and p.poll() is None:
            problem = smoke.grpc_health(f"127.0.0.1:{port}", timeout=2)
            if problem is None:
                break
            time.sleep(0.5)
    finally:
        code, err = _stop(p)
    assert problem is None, f"mining not SERVING ({problem}; exit {code}): {err[-2000:]}"


def test_search_shard_and_root_serve_with_the_dev_environment(dev_text, infra_servers,
                                                              tmp_path, unique):
    """Root and shard 0 with the dev pods' env (ports moved to free ones, the root pointed at
    that shard). Only health: a Search needs a promoted model and Triton."""
    for mod in ("root", "shard"):
        if not (ROOT / "services" / "search" / f"{mod}.py").is_file():
            pytest.skip(f"services/search/{mod}.py does not exist yet")
    procs = _procs(dev_text, infra_servers, tmp_path)
    shard_port, root_port = _free_port(), _free_port()
    running = {
        "search-shard-0": _start(procs["search-shard-0"], MAGICLENS_GRPC_PORT=str(shard_port),
                                 MAGICLENS_METRICS_PORT=str(_free_port()),
                                 MAGICLENS_INDEX=f"deploy{unique}"),
        "search-root": _start(procs["search-root"], MAGICLENS_GRPC_PORT=str(root_port),
                              MAGICLENS_METRICS_PORT=str(_free_port()),
                              MAGICLENS_SHARDS=f"127.0.0.1:{shard_port}"),
    }
    ports = {"search-shard-0": shard_port, "search-root": root_port}
    problems = dict.fromkeys(running, "not started")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(problems.values()):
            for name, port in ports.items():
                if problems[name] and running[name].poll() is None:
                    problems[name] = smoke.grpc_health(f"127.0.0.1:{port}", timeout=2)
            if all(p.poll() is not None for p in running.values()):
                break
            time.sleep(0.5)
    finally:
        logs = {name: _stop(p)[1][-1500:] for name, p in running.items()}
    assert not any(problems.values()), f"{problems}: {logs}"


def test_smoke_reports_serving_and_unreachable_targets(capsys):
    from services.runtime.grpc_server import GrpcServer

    server = GrpcServer([], port=0)
    port = server.start()
    dead = _free_port()
    try:
        ok = smoke.main(["--target", f"mining=127.0.0.1:{port}", "--timeout", "5"])
        bad = smoke.main(["--target", f"mining=127.0.0.1:{port}",
                          "--target", f"search-root=127.0.0.1:{dead}", "--timeout", "2"])
        server.set_serving(False)
        not_serving = smoke.main(["--target", f"triplegen=127.0.0.1:{port}", "--timeout", "5"])
    finally:
        server.stop(0)
    out = capsys.readouterr().out
    assert (ok, bad, not_serving) == (0, 1, 1), out
    assert "search-root" in out and "UNAVAILABLE" in out and "NOT_SERVING" in out
