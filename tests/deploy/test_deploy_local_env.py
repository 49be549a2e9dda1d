"""The dev overlay's environment, resolved by deploy/local_env.py, runs the real entry points.

Every process gets exactly the variables and arguments its dev pod gets, changed only by
local_env's documented mapping (cluster addresses and ports to local ones, Secrets to the
local PostgreSQL, S3 to a file store, /data to a directory per pod). The end-to-end test
starts every dev workload that way against the real PostgreSQL, Tansu and Triton, ingests a
WARC, promotes a model through the training service and runs deploy/tool.py's smoke (health
of every workload, then one Search that must return hits).
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from magiclens.v1 import events_pb2

from deploy import catalog, local_env, policy, smoke, tool
from runtime import db, outbox
from runtime.grpc_server import GrpcServer
from runtime.topics import PAGES_DISCOVERED
from tests.serving import serving_support as serving
from tests.support.processes import ROOT, free_port, start_command, stop, wait_for
from tools.corpus.warc import write_warc


@pytest.fixture(scope="module")
def dev_text() -> str:
    try:
        tool.kubectl_path()
    except tool.ToolError as exc:
        pytest.skip(f"{exc} (needed to render the dev overlay)")
    return tool.render("dev")


class FreePorts:
    """The tests' port map: a free local port for each (pod, in-cluster port), so nothing
    collides with a running suite and no default port can answer for a misconfigured one."""

    def __init__(self) -> None:
        self.taken: dict[tuple[str, int], int] = {}

    def __call__(self, pod: local_env.Pod, port: int) -> int:
        key = (pod.name, port)
        if key not in self.taken:
            self.taken[key] = free_port()
        return self.taken[key]


def _procs(dev_text, infra=None, tmp_path=None, ports=local_env.runtime_ports):
    kw = {}
    if infra is not None:
        kw = {"database_url": infra.database_url, "kafka_bootstrap": infra.kafka_bootstrap}
    return {p.name: p for p in local_env.processes("dev", text=dev_text, data_dir=tmp_path,
                                                    ports=ports, **kw)}


def test_every_dev_workload_resolves_to_local_addresses(dev_text, tmp_path):
    procs = _procs(dev_text, tmp_path=tmp_path)
    want = {w.name if w.kind == "Deployment" else f"{w.name}-0" for w in catalog.WORKLOADS
            if w.sidecar is None}
    want |= {"embedding-server", "embedding-worker"}  # the two containers of the Triton pod
    assert set(procs) == want
    for name, p in procs.items():
        for key, value in p.env.items():
            assert "magiclens-kafka" not in value and ".search-shard" not in value, (name, key)
            assert not value.startswith(("s3://", "/data")) and value != "0.0.0.0", (name, key)
        assert not any(k.startswith("AWS_") for k in p.env), name
        assert p.env["MAGICLENS_DATA_DIR"] == str(tmp_path / "pods" / p.pod)
        if "MAGICLENS_BLOB_URI" in p.env:  # one store for all, like the bucket
            assert p.env["MAGICLENS_BLOB_URI"] == f"file://{tmp_path}/s3/magiclens-dev/pool"
    assert procs["mining"].env["MAGICLENS_GRPC_PORT"] == "50051"
    assert procs["mining"].env["DATABASE_URL"].startswith("postgresql://")
    assert procs["search-shard-0"].env["MAGICLENS_SHARD"] == "0"
    assert procs["search-root"].env["MAGICLENS_SHARDS"] == "127.0.0.1:50060"
    assert procs["search-root"].env["MAGICLENS_TRITON_URL"] == "127.0.0.1:8001"
    assert procs["gateway"].env["MAGICLENS_SEARCH_ADDR"] == "127.0.0.1:50055"
    assert procs["outbox-relay"].command[1:] == ["-m", "services.outbox_relay"]
    server = procs["embedding-server"]
    assert server.command[0].endswith(".venv-triton/bin/python")
    cur = server.command.index("--current-file") + 1
    assert server.command[cur] == str(tmp_path / "pods" / "embedding" / "embedding" /
                                      "current.json")
    assert "DATABASE_URL" not in server.env and "DATABASE_URL" in procs["embedding-worker"].env
    assert procs["gateway"].env["MAGICLENS_GATEWAY_HOST"] == "127.0.0.1"
    env = procs["mining"].popen_env()  # nothing of the caller's own configuration leaks in
    assert env["PYTHONPATH"] == f"{ROOT}:{ROOT / 'gen'}"
    assert not {k for k in env if k.startswith(("MAGICLENS_", "KAFKA_"))} - set(procs[
        "mining"].env)


def test_local_ports_move_listeners_and_callers_together(dev_text, tmp_path):
    """With free ports, a pod's listen port and every address naming it move as one."""
    ports = FreePorts()
    procs = _procs(dev_text, tmp_path=tmp_path, ports=ports)
    shard = ports.taken[("search-shard-0", 50060)]
    triton = ports.taken[("embedding", 8001)]
    assert procs["search-shard-0"].env["MAGICLENS_GRPC_PORT"] == str(shard)
    assert procs["search-root"].env["MAGICLENS_SHARDS"] == f"127.0.0.1:{shard}"
    assert procs["search-root"].env["MAGICLENS_TRITON_URL"] == f"127.0.0.1:{triton}"
    assert procs["embedding-worker"].env["MAGICLENS_TRITON_URL"] == f"127.0.0.1:{triton}"
    cmd = procs["embedding-server"].command
    assert cmd[cmd.index("--grpc-port") + 1] == str(triton)
    assert procs["gateway"].env["MAGICLENS_GATEWAY_PORT"] == str(ports.taken[("gateway", 8080)])


def test_a_name_that_is_not_ours_is_left_as_the_manifest_says(dev_text, tmp_path):
    broken = dev_text.replace("MAGICLENS_TRITON_URL: embedding:8001",
                              "MAGICLENS_TRITON_URL: embeding:8001")
    assert broken != dev_text
    procs = _procs(broken, tmp_path=tmp_path)
    assert procs["search-root"].env["MAGICLENS_TRITON_URL"] == "embeding:8001"


def _start(proc: local_env.LocalProcess, log: Path) -> subprocess.Popen:
    """Start it with exactly its mapped environment (local_env.LocalProcess.popen_env)."""
    return start_command(proc.command, env=proc.popen_env(), log=log)


def _stop(p: subprocess.Popen, log: Path) -> tuple[int, str]:
    """Stop it gracefully; (exit code, its output)."""
    return stop(p, 20), log.read_text(errors="replace")


def test_outbox_relay_publishes_with_the_dev_environment(dev_text, infra_servers, tmp_path):

    relay = _procs(dev_text, infra_servers, tmp_path)["outbox-relay"]
    assert relay.env["DATABASE_URL"] == infra_servers.database_url
    url = f"https://example.invalid/{uuid.uuid4().hex}"
    with db.transaction(infra_servers.database_url) as conn:
        eid = outbox.enqueue(conn, PAGES_DISCOVERED, url, events_pb2.PageDiscovered(url=url))
    log = tmp_path / "relay.log"
    p = _start(relay, log)

    def published_at():
        with db.connect(infra_servers.database_url) as conn:
            return conn.execute("SELECT published_at FROM outbox WHERE event_id = %s",
                                (eid,)).fetchone()["published_at"]

    published = None
    try:
        with contextlib.suppress(AssertionError):  # asserted below, with the relay's output
            published = wait_for(published_at, 60, "the event to be published", interval=0.3,
                                 proc=p)
    finally:
        code, err = _stop(p, log)
    assert published is not None, f"relay did not publish (exit {code}): {err[-2000:]}"
    assert code == 0, err[-2000:]
    assert "outbox relay started" in err


def test_mining_serves_with_the_dev_environment(dev_text, infra_servers, tmp_path):
    if not (ROOT / "services" / "mining" / "__main__.py").is_file():
        pytest.skip("services/mining/__main__.py does not exist yet")
    ports = FreePorts()  # so a running local suite is not hit
    mining = _procs(dev_text, infra_servers, tmp_path, ports)["mining"]
    port = ports.taken[("mining", 50051)]
    log = tmp_path / "mining.log"
    p = _start(mining, log)
    problem = "not started"

    def serving() -> bool:
        nonlocal problem
        problem = smoke.grpc_health(f"127.0.0.1:{port}", timeout=2)
        return problem is None

    try:
        with contextlib.suppress(AssertionError):  # asserted below, with mining's output
            wait_for(serving, 90, "mining to serve", interval=0.5, proc=p)
    finally:
        code, err = _stop(p, log)
    assert problem is None, f"mining not SERVING ({problem}; exit {code}): {err[-2000:]}"


def test_search_shard_and_root_serve_with_the_dev_environment(dev_text, infra_servers,
                                                              tmp_path):
    """Root and shard 0 with the dev pods' env. Only health: the Search with hits is the
    end-to-end test below."""
    for mod in ("root", "shard"):
        if not (ROOT / "services" / "search" / f"{mod}.py").is_file():
            pytest.skip(f"services/search/{mod}.py does not exist yet")
    ports = FreePorts()
    procs = _procs(dev_text, infra_servers, tmp_path, ports)
    names = ("search-shard-0", "search-root")
    logs = {name: tmp_path / f"{name}.log" for name in names}
    running = {name: _start(procs[name], logs[name]) for name in names}
    addr = {name: f"127.0.0.1:{ports.taken[(name, 50060 if 'shard' in name else 50055)]}"
            for name in names}
    problems = dict.fromkeys(running, "not started")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(problems.values()):
            for name in names:
                if problems[name] and running[name].poll() is None:
                    problems[name] = smoke.grpc_health(addr[name], timeout=2)
            if all(p.poll() is not None for p in running.values()):
                break
            time.sleep(0.5)
    finally:
        tails = {name: _stop(p, logs[name])[1][-1500:] for name, p in running.items()}
    assert not any(problems.values()), f"{problems}: {tails}"


def test_smoke_reports_serving_and_unreachable_targets(capsys):
    server = GrpcServer([], port=0)
    port = server.start()
    dead = free_port()
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


# ------------------------------------------------------------------ end to end
SITE = "https://e2e.magiclens.test/"
PAGES, PER_PAGE = 2, 4  # 8 distinct real photos: every one must come back in the smoke's k=10


def _write_site(site: Path) -> int:
    """A tiny static site: PAGES pages of PER_PAGE real photos each; returns the image count."""
    names = serving.PHOTOS[:PAGES * PER_PAGE]
    (site / "img").mkdir(parents=True)
    for i, name in enumerate(names):
        (site / "img" / f"photo-{i}.png").write_bytes(
            serving.png(serving.photo(name).convert("RGB").resize((224, 224))))
    for pg in range(PAGES):
        imgs = "".join(f'<figure><img src="img/photo-{i}.png" alt="photo {i}">'
                       f"<figcaption>Photo {i}</figcaption></figure>"
                       for i in range(pg * PER_PAGE, (pg + 1) * PER_PAGE))
        (site / f"page-{pg}.html").write_text(
            f"<html><head><title>Gallery {pg}</title></head><body><h1>Gallery {pg}</h1>"
            f"<p>Photos of things.</p>{imgs}</body></html>")
    return len(names)


def _tails(logs: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-1500:]}"
                     for f in sorted(logs.glob("*.log")))


def _run_in_pod(proc: local_env.LocalProcess, args: list[str], log: Path) -> None:
    """`kubectl exec <pod> -- python ...`, locally: a one-off command with the pod's env."""
    res = subprocess.run([proc.command[0], *args], cwd=ROOT, env=proc.popen_env(),
                         capture_output=True, text=True, timeout=120)
    log.write_text(res.stdout + res.stderr)
    assert res.returncode == 0, f"{' '.join(args)} failed:\n{res.stdout}{res.stderr}"


@pytest.mark.slow
@pytest.mark.triton
def test_dev_workloads_as_local_processes_pass_the_smoke_with_search_hits(
        dev_text, infra_servers, fresh_db, checkpoints, tmp_path, unique):
    """Every dev workload runs as a process with its pod's environment (local_env's mapping,
    free ports, a private database); a WARC goes through ingest -> mining -> embedding
    worker -> Triton -> shard; a model is promoted through the training service (training
    itself replaced by registering the serving tests' cached checkpoint); then deploy/tool.py's
    smoke (every health endpoint + the Search) must pass with every ingested image a hit."""

    if not serving.TRITON_PY.exists():
        pytest.skip(".venv-triton is missing (./taskw sets it up)")
    ports = FreePorts()
    data = tmp_path / "data"
    loc, plist = local_env.localized("dev", text=dev_text, data_dir=data, ports=ports,
                                     database_url=fresh_db,
                                     kafka_bootstrap=infra_servers.kafka_bootstrap)
    procs = {p.name: p for p in plist}
    logs = tmp_path / "logs"
    logs.mkdir()
    running = {name: _start(p, logs / f"{name}.log") for name, p in procs.items()}
    docs = policy.load_docs(dev_text)
    targets = [f"{label}=127.0.0.1:{loc.port(label, port)}"
               for label, _, port in tool.smoke_targets(docs)]
    triton_http = f"127.0.0.1:{loc.port('embedding', 8000)}"

    def wait(what: str, check, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        problem = check()
        while problem is not None:
            dead = {n: p.returncode for n, p in running.items() if p.poll() is not None}
            if dead or time.monotonic() > deadline:
                pytest.fail(f"{what}: {problem}; exited: {dead}\n{_tails(logs)}")
            time.sleep(1)
            problem = check()

    try:
        # 1. A model, as training would leave it (published), promoted through the training
        #    service with the CLI an operator runs in a pod (MAGICLENS_TRAINING_ADDR).
        version = f"e2e-{unique}"
        with db.transaction(fresh_db) as conn:
            conn.execute("INSERT INTO model_versions (model_version, config_name, "
                         "checkpoint_uri, status) VALUES (%s, 'compact', %s, 'published')",
                         (version, checkpoints["serving-a"].absolute().as_uri()))
        training = f"127.0.0.1:{loc.port('training', 50053)}"
        wait("training SERVING", lambda: smoke.grpc_health(training, 2), 120)
        _run_in_pod(procs["training"], ["-m", "tools.cli.main", "promote", version],
                    logs / "cli-promote.out")
        # 2. The worker points its Triton at the promoted version (pod-local current file).
        wait("Triton ready with the promoted model",
             lambda: smoke.http_health(triton_http, "/v2/health/ready", 2), 180)
        # 3. Pages through the real ingestion path: a WARC, announced on Kafka, mined from
        #    the archive (no network), images embedded by the worker, indexed by the shard.
        site = tmp_path / "site"
        n_images = _write_site(site)

        write_warc(site, tmp_path / "e2e.warc.gz", SITE)
        _run_in_pod(procs["mining"], ["-m", "tools.ingest", "--warc",
                                      str(tmp_path / "e2e.warc.gz")], logs / "cli-ingest.out")
        # 4. deploy/tool.py's smoke, pointed at the local processes, until it passes.
        argv = [*tool.smoke_argv(targets), "--min-hits", str(n_images), "--timeout", "5"]
        out = io.StringIO()

        def smoke_passes() -> str | None:
            out.seek(0)
            out.truncate()
            with contextlib.redirect_stdout(out):
                rc = smoke.main(argv)
            return None if rc == 0 else out.getvalue().strip()

        wait("smoke", smoke_passes, 120)
        print(out.getvalue())
        health = httpx.get(f"http://127.0.0.1:{loc.port('gateway', 8080)}/api/health",
                           timeout=10).json()["search"]  # the gateway reaches the root
        assert health["available"] and health["num_vectors"] >= n_images, health
        with db.connect(fresh_db) as conn:
            blobs = [r["blob_uri"] for r in conn.execute(
                "SELECT blob_uri FROM images WHERE source_url LIKE %s", (f"{SITE}%",))]
        assert len(blobs) == n_images
        # MAGICLENS_BLOB_URI reached the writers: the bucket, not a pod's default directory
        assert all(b.startswith(f"file://{data / 's3'}/") for b in blobs), blobs
    finally:
        triton = running.pop("embedding-server")
        for p in running.values():
            p.send_signal(signal.SIGTERM)  # all at once: they stop in parallel
        left = serving.stop_triton(serving.TritonProc(triton, "", Path(), Path()))
        for p in running.values():
            stop(p)
    assert not left, f"Triton left processes behind: {left}"
