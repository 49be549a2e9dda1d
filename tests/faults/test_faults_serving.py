"""SIGKILL of the serving processes under local supervision (tools/procs + tools/keeper, as
`./taskw up` runs them): the Triton server, the tritonserver binary under it, and one search
shard. Each comes back by itself, Triton cleans what the killed server left, and embedding
and search answer again with no manual step.

What the search root answers while a shard is down (services/search/root.py): the other
shards' hits with `partial: true` and `missing_shards` naming the dead one; UNAVAILABLE only
when no shard answers. Real Postgres, broker, Triton (the serving tests' checkpoint) and
ScaNN shards; a private database per module.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import grpc
import pytest
from magiclens.v1 import common_pb2, search_pb2, search_pb2_grpc

from runtime import auth, db, rpc
from runtime.blobstore import open_blobstore
from runtime.embedding_client import EmbeddingClient
from runtime.serving import set_serving_version, vector_bytes
from services.embedding.server import Workspace
from tests.serving.serving_support import PHOTOS, TRITON_PY, augmented_images, descendants
from tests.support.processes import ROOT, free_port, wait_for, wait_grpc
from tools import infra
from tools.procs import Supervisor

SHM = Path("/dev/shm")
PER_PHOTO = 3


class Stack:
    """The supervised serving processes of this module and how to reach them."""

    def __init__(self, sup: Supervisor, d: Path, triton_url: str, root_port: int) -> None:
        self.sup, self.dir, self.triton_url = sup, d, triton_url
        self.stub = search_pb2_grpc.SearchServiceStub(rpc.channel(
            f"127.0.0.1:{root_port}", role=auth.READ))
        self.workspace = d / "triton-ws"
        self.image_ids: list[int] = []
        self.images: list[bytes] = []

    def pid(self, name: str) -> int:
        return self.sup.details(name)["pid"]

    def log(self, name: str) -> str:
        return (self.sup.log_dir / f"{name}.log").read_text(errors="replace")

    def restarted(self, name: str, restarts: int, old_pid: int) -> dict | None:
        d = self.sup.details(name)
        ok = (d.get("restarts") == restarts and d.get("state") == "running"
              and d.get("pid") not in (None, old_pid))
        return d if ok else None

    def search(self, image_id: int, k: int = 10) -> search_pb2.SearchResponse:
        return self.stub.Search(search_pb2.SearchRequest(
            query=common_pb2.ImageInput(image_id=image_id), instruction="the same thing", k=k),
            timeout=30)

    def ready(self) -> bool:
        client = EmbeddingClient(self.triton_url)
        try:
            return client.ready()
        finally:
            client.close()

    def embeds(self) -> bool:
        """Triton embeds a pool image with the served version."""
        client = EmbeddingClient(self.triton_url)
        try:
            return client.embed_targets(self.images[:1]).model_version == "serving-a"
        except Exception:  # not back yet: unreachable, loading
            return False
        finally:
            client.close()


@pytest.fixture(scope="module")
def stack(fresh_db, infra_servers, checkpoints, tmp_path_factory):
    if not TRITON_PY.exists():
        pytest.skip(".venv-triton is missing (./taskw sets it up)")
    d = tmp_path_factory.mktemp("serving-faults")
    tag = os.urandom(4).hex()
    tg, th, tm = free_port(), free_port(), free_port()
    shard_ports, root_port = [free_port(), free_port()], free_port()
    py = Path(sys.executable)
    blob_uri = f"file://{d / 'blobs'}"
    procfile = d / "Procfile"
    procfile.write_text(
        f"triton: {TRITON_PY} -m services.embedding.server --current-file {d}/current.json "
        f"--checkpoint {checkpoints['serving-a']} --model-version serving-a --grpc-port {tg} "
        f"--http-port {th} --metrics-port {tm} --workspace {d}/triton-ws\n"
        + "".join(f"shard{i}: env MAGICLENS_GRPC_PORT={p} {py} -m services.search.shard "
                  f"--index {tag} --num-shards 2 --shard {i}\n"
                  for i, p in enumerate(shard_ports))
        + f"root: env MAGICLENS_GRPC_PORT={root_port} MAGICLENS_TRITON_URL=127.0.0.1:{tg} "
          f"MAGICLENS_SHARDS={','.join(f'127.0.0.1:{p}' for p in shard_ports)} "
          f"{py} -m services.search.root\n")
    env = infra_servers.env(DATABASE_URL=fresh_db, MAGICLENS_DATA_DIR=str(d),
                            MAGICLENS_BLOB_URI=blob_uri, MAGICLENS_METRICS_PORT="0",
                            MAGICLENS_SYNC_INTERVAL_S="2", MAGICLENS_LOG_LEVEL="INFO",
                            PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}")
    with mock.patch.dict(os.environ, {"MAGICLENS_DATA_DIR": str(d)}):
        sup = Supervisor(ROOT, procfile)  # its run and log folders under d
    s = Stack(sup, d, f"127.0.0.1:{tg}", root_port)
    try:
        sup.up(["triton"], env=env, backoff_s=0.5)
        wait_for(s.ready, 300, "the supervised Triton server to load its model", interval=0.5)
        s.images = augmented_images(PER_PHOTO)
        client = EmbeddingClient(s.triton_url)
        vecs = [v for i in range(0, len(s.images), 16)
                for v in client.embed_targets(s.images[i:i + 16]).vectors]
        client.close()
        blobs = open_blobstore(blob_uri)
        with db.transaction(fresh_db) as conn:
            conn.execute("INSERT INTO model_versions (model_version, config_name, "
                         "checkpoint_uri, status) VALUES ('serving-a', 'compact', %s, "
                         "'promoted')", (str(checkpoints["serving-a"]),))
            set_serving_version(conn, "serving-a", str(checkpoints["serving-a"]))
            page = conn.execute(
                "INSERT INTO pages (url, url_hash, domain, title, source, status, "
                "discovered_at) VALUES (%s, %s, 'faults.example', 'Photos', 'corpus:test', "
                "'mined', %s) RETURNING page_id",
                (f"https://faults.example/{tag}", tag, datetime.now(UTC) - timedelta(minutes=1))
            ).fetchone()["page_id"]
            for i, (img, v) in enumerate(zip(s.images, vecs, strict=True)):
                image_id = conn.execute(
                    "INSERT INTO images (content_hash, source_url, first_page_id, blob_uri, "
                    "mime_type) VALUES (%s, %s, %s, %s, 'image/png') RETURNING image_id",
                    (hashlib.sha256(img).hexdigest(), f"https://faults.example/{tag}/{i}", page,
                     blobs.put(img, ".png"))).fetchone()["image_id"]
                conn.execute("INSERT INTO image_embeddings (image_id, model_version, embedding)"
                             " VALUES (%s, 'serving-a', %s)", (image_id, vector_bytes(v)))
                s.image_ids.append(image_id)
        sup.up(["shard0", "shard1", "root"], env=env, backoff_s=0.5)
        for p in [*shard_ports, root_port]:
            wait_grpc(p, 120)
        wait_for(lambda: _full(s), 60, "a full answer from both shards")
        yield s
    finally:
        sup.down(grace=30)
    for name in ("shard0", "shard1", "root"):  # a dead shard is a warning, not a traceback
        assert "Traceback" not in s.log(name), s.log(name)[-3000:]


def _full(s: Stack, image_id: int | None = None) -> search_pb2.SearchResponse | None:
    try:
        r = s.search(s.image_ids[0] if image_id is None else image_id)
    except grpc.RpcError:
        return None
    return r if not r.partial else None


def test_a_killed_shard_answers_partial_then_restarts_and_serves_in_full(stack):
    qid = stack.image_ids[PER_PHOTO * PHOTOS.index("coffee")]
    # In random order a test that killed Triton may just have run: start from a served stack.
    wait_for(stack.embeds, 180, "embedding answering", interval=0.5)
    full = wait_for(lambda: _full(stack, qid), 60, "a full search answer", interval=0.5)
    assert not full.partial and len(full.hits) == 10
    assert {h.image_id % 2 for h in full.hits} == {0, 1}  # both shards contribute
    old = stack.pid("shard1")
    os.kill(old, signal.SIGKILL)
    during = stack.search(qid)  # at once: the shard is down (restarting takes seconds)
    # Either the whole answer (the shard already back) or shard 0's share, saying so.
    if during.partial:
        assert list(during.missing_shards) == [1]
        assert during.hits and all(h.image_id % 2 == 0 for h in during.hits)
        evens = [h.image_id for h in full.hits if h.image_id % 2 == 0]
        assert [h.image_id for h in during.hits][:len(evens)] == evens
    else:
        assert [h.image_id for h in during.hits] == [h.image_id for h in full.hits]
    wait_for(lambda: stack.restarted("shard1", 1, old), 60, "shard 1 restarted by its keeper")
    again = wait_for(lambda: (r := stack.search(qid)) and not r.partial and r, 60,
                     "a full answer again", interval=0.5)
    assert [h.image_id for h in again.hits] == [h.image_id for h in full.hits]
    assert "restored snapshot" in stack.log("shard1")
    assert stack.sup.details("shard0")["restarts"] == 0
    assert stack.sup.details("root")["restarts"] == 0


def _leftovers(stack: Stack, pid: int) -> tuple[list[Path], list[Path]]:
    """Triton's /tmp model copies of this workspace, and the server's shared memory."""
    record = json.loads((stack.workspace.parent / "triton-ws.json").read_text())
    assert record["pid"] == pid
    return Workspace(stack.workspace).triton_copies(), sorted(SHM.glob(f"pytrtion{pid}-*"))


def test_a_killed_triton_server_is_restarted_clean_and_serves(stack):
    wait_for(stack.ready, 180, "all of Triton's models loaded", interval=0.5)
    old = stack.pid("triton")
    restarts = stack.sup.details("triton")["restarts"]
    tmp_dirs, shm = _leftovers(stack, old)
    assert tmp_dirs and all(t.is_dir() for t in tmp_dirs)  # what a kill leaves behind
    assert shm and (stack.workspace / "model-store").is_dir()
    group = descendants(old)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: stack.restarted("triton", restarts + 1, old), 60,
             "Triton restarted by its keeper")
    wait_for(stack.embeds, 180, "embedding answering again", interval=0.5)
    assert not [p for p in group if infra.pid_alive(p)]  # the keeper ended the old group
    assert not [t for t in tmp_dirs if t.exists()]
    assert not [seg for seg in shm if seg.exists()]
    copies, shm = _leftovers(stack, stack.pid("triton"))
    assert copies and shm  # the new server's own
    assert "removed what a killed server left" in stack.log("triton")
    wait_for(lambda: _full(stack), 60, "a full search answer", interval=0.5)
    with pytest.raises(SystemExit, match="another server uses"):  # never a live one's
        Workspace(stack.workspace).claim()
    assert (stack.workspace / "model-store").is_dir()


def test_a_killed_tritonserver_makes_the_server_exit_and_be_restarted(stack):
    # After another test's restart the server may still be loading its last model.
    wait_for(stack.ready, 180, "all of Triton's models loaded", interval=0.5)
    server = stack.pid("triton")
    restarts = stack.sup.details("triton")["restarts"]
    binary = [p for p in descendants(server)
              if b"tritonserver/bin/tritonserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(binary) == 1
    copies = Workspace(stack.workspace).triton_copies()
    assert copies  # Triton cannot remove them when it is killed
    os.kill(binary[0], signal.SIGKILL)
    # PyTriton stops itself; the server process used to idle on with nothing serving.
    got = wait_for(lambda: stack.restarted("triton", restarts + 1, server), 60,
                   "the server to exit and be restarted")
    assert got["last_exit"] == 1
    assert "tritonserver is gone" in stack.log("triton")
    wait_for(stack.embeds, 180, "embedding answering again", interval=0.5)
    assert not [c for c in copies if c.exists()]
    wait_for(lambda: _full(stack), 60, "a full search answer", interval=0.5)


def _tritonserver_of(pid: int) -> int | None:
    found = [p for p in descendants(pid)
             if b"tritonserver/bin/tritonserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return found[0] if found else None


def test_a_tritonserver_killed_while_models_load_restarts_at_once(stack):
    """PyTriton's model loader waits 60 s on a dead server and then raises; the server's
    watchdog exits within a second instead, and the keeper's restart serves again."""
    wait_for(stack.ready, 180, "all of Triton's models loaded", interval=0.5)
    server = stack.pid("triton")
    restarts = stack.sup.details("triton")["restarts"]
    os.kill(server, signal.SIGKILL)  # the keeper restarts it; its models load for seconds
    fresh = wait_for(lambda: stack.restarted("triton", restarts + 1, server), 60,
                     "Triton restarted by its keeper")["pid"]
    binary = wait_for(lambda: _tritonserver_of(fresh), 60, "the new tritonserver", interval=0.05)
    assert not stack.ready()  # still loading: PyTriton loads its three models one by one
    os.kill(binary, signal.SIGKILL)
    got = wait_for(lambda: stack.restarted("triton", restarts + 2, fresh), 30,
                   "the loading server to exit and be restarted")
    assert got["last_exit"] == 1
    assert "tritonserver is gone while loading the models" in stack.log("triton")
    wait_for(stack.ready, 180, "all of Triton's models loaded again", interval=0.5)
    wait_for(lambda: _full(stack), 60, "a full search answer", interval=0.5)
