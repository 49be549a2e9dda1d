"""A bounded chaos run: ingestion and search load while miners, the search processes, the
broker and Postgres are killed and restarted at random; prints what went in and out, what was
lost or duplicated, search calls by status code, and how long the pipeline took to converge
once the chaos stopped.

    python bench/chaos.py [--minutes 10] [--seed 14] [--pages-per-s 1] [--searches-per-s 1]

Everything is private to the run: a PostgreSQL cluster and a Tansu broker on free ports
(tools/infra), a local site of synthetic pages (2 images each), two real mining services
under keepers (tools/keeper: restarted with back-off when killed), and a downstream consumer
of ImageMined (runtime.bus, with a reconciler, as every real consumer has) that counts each
image. Pages go in through the miners' SubmitPages RPC (Postgres + outbox, durable), retried
on another miner while one is down.

Search: the Triton embedding server (`--checkpoint`, by default the serving tests' model:
pretrained towers and a seeded head, cached under data/cache/serving-test; pass a trained
model's directory to use that), two search shards and the search root, each under a keeper,
over a pool of `--pool` images embedded by that Triton at start; a client calls
SearchService.Search at `--searches-per-s` (a pool image + an instruction) and counts every
answer: OK, OK but partial (a shard missing), or the error's status code. `--no-search`
leaves it out.

Faults, one every `--every` seconds: SIGKILL a miner, restart the broker (memory storage:
every message is lost), stop Postgres for 5-20 s, and with search: SIGKILL a search shard or
the Triton server process.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import grpc
import psycopg
from magiclens.v1 import (
    common_pb2,
    events_pb2,
    mining_pb2,
    mining_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from PIL import Image

from runtime import auth, db, rpc
from runtime.blobstore import open_blobstore
from runtime.bus import Consumer, Event, ensure_topics
from runtime.embedding_client import EmbeddingClient
from runtime.serving import set_serving_version, vector_bytes
from runtime.topics import IMAGES_MINED
from tools import infra

ROOT = Path(__file__).resolve().parents[1]
TRITON_PY = ROOT / ".venv-triton" / "bin" / "python"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def noise_png(seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (96, 96))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256))
                 for _ in range(96 * 96)])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def wait_until(what: str, timeout: float, check) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"chaos: timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.5)


class Site:
    """Synthetic pages, two distinct images each, served on 127.0.0.1."""

    def __init__(self) -> None:
        pages: dict[str, bytes] = {}
        self.pages = pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png" if self.path.endswith(".png")
                                 else "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_page(self, n: int) -> str:
        imgs = []
        for i in range(2):
            self.pages[f"/p{n}/i{i}.png"] = noise_png(n * 2 + i)
            imgs.append(f"<img src='/p{n}/i{i}.png' alt='page {n} image {i}'>")
        self.pages[f"/p{n}.html"] = f"<title>Page {n}</title>{''.join(imgs)}".encode()
        return f"http://127.0.0.1:{self.port}/p{n}.html"


class Kept:
    """A service under tools.keeper: restarted with back-off when it dies, as `./taskw up`
    runs it."""

    started: ClassVar[list[Kept]] = []  # every one, stopped by main() however the run ends

    def __init__(self, name: str, command: list[str], env: dict[str, str],
                 run_dir: Path) -> None:
        Kept.started.append(self)
        self.name = name
        self.state = run_dir / f"{name}.state.json"
        self.keeper = subprocess.Popen(
            [sys.executable, "-m", "tools.keeper", "--name", name, "--log",
             str(run_dir / f"{name}.log"), "--state", str(self.state), "--backoff", "1",
             "--", *command],
            cwd=ROOT, env=dict(env, MAGICLENS_METRICS_PORT="0"), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def details(self) -> dict:
        try:
            return json.loads(self.state.read_text())
        except (OSError, ValueError):
            return {}

    def kill(self) -> None:
        pid = self.details().get("pid")
        if isinstance(pid, int):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    def stop(self) -> None:
        self.keeper.terminate()
        try:
            self.keeper.wait(40)
        except subprocess.TimeoutExpired:
            self.kill()
            self.keeper.kill()


class Miner(Kept):
    def __init__(self, name: str, env: dict[str, str], run_dir: Path) -> None:
        self.port = _free_port()
        super().__init__(name, [sys.executable, "-m", "services.mining"],
                         dict(env, MAGICLENS_GRPC_PORT=str(self.port),
                              MAGICLENS_MINING_WORKER_ID=name), run_dir)
        self.stub = mining_pb2_grpc.MiningServiceStub(rpc.channel(f"127.0.0.1:{self.port}"))


class Search:
    """Triton, two shards and the root under keepers, over a pool embedded at start, and a
    client that searches at a steady rate and counts the answers by status code."""

    INSTRUCTIONS = ("the same thing", "another one like this", "a brighter version")

    def __init__(self, url: str, env: dict[str, str], run_dir: Path, checkpoint: Path,
                 pool: int) -> None:
        tg, th, tm = _free_port(), _free_port(), _free_port()
        self.triton_url = f"127.0.0.1:{tg}"
        env = dict(env, PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}", MAGICLENS_SYNC_INTERVAL_S="5")
        self.triton = Kept("triton", [
            str(TRITON_PY), "-m", "services.embedding.server", "--current-file",
            str(run_dir / "serving" / "current.json"), "--checkpoint", str(checkpoint),
            "--model-version", "chaos-model", "--grpc-port", str(tg), "--http-port", str(th),
            "--metrics-port", str(tm), "--workspace", str(run_dir / "triton-ws")], env, run_dir)
        wait_until("the Triton server", 900, self._triton_ready)
        images = [noise_png(10**6 + i) for i in range(pool)]
        client = EmbeddingClient(self.triton_url)
        vectors = [v for i in range(0, pool, 16)
                   for v in client.embed_targets(images[i:i + 16]).vectors]
        client.close()
        blobs = open_blobstore(env["MAGICLENS_BLOB_URI"])
        with db.transaction(url) as conn:
            conn.execute("INSERT INTO model_versions (model_version, config_name, "
                         "checkpoint_uri, status) VALUES ('chaos-model', 'compact', %s, "
                         "'promoted')", (str(checkpoint),))
            set_serving_version(conn, "chaos-model", str(checkpoint))
            self.pool_ids = []
            for i, (img, v) in enumerate(zip(images, vectors, strict=True)):
                image_id = conn.execute(
                    "INSERT INTO images (content_hash, source_url, blob_uri, mime_type) "
                    "VALUES (%s, %s, %s, 'image/png') RETURNING image_id",
                    (f"pool-{i}", f"https://pool.example/{i}.png",
                     blobs.put(img, ".png"))).fetchone()["image_id"]
                conn.execute("INSERT INTO image_embeddings (image_id, model_version, "
                             "embedding) VALUES (%s, 'chaos-model', %s)",
                             (image_id, vector_bytes(v)))
                self.pool_ids.append(image_id)
        shard_ports, root_port = [_free_port(), _free_port()], _free_port()
        self.shards = [Kept(f"shard-{i}", [
            sys.executable, "-m", "services.search.shard", "--index", "chaos", "--num-shards",
            "2", "--shard", str(i)], dict(env, MAGICLENS_GRPC_PORT=str(p)), run_dir)
            for i, p in enumerate(shard_ports)]
        self.root = Kept("search-root", [sys.executable, "-m", "services.search.root"], dict(
            env, MAGICLENS_GRPC_PORT=str(root_port), MAGICLENS_TRITON_URL=self.triton_url,
            MAGICLENS_SHARDS=",".join(f"127.0.0.1:{p}" for p in shard_ports)), run_dir)
        self.stub = search_pb2_grpc.SearchServiceStub(
            rpc.channel(f"127.0.0.1:{root_port}", role=auth.READ))
        self.codes: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.rng = random.Random(7)
        wait_until("a full search answer", 300, lambda: self.search() == "OK")

    @property
    def kept(self) -> list[Kept]:
        return [self.triton, *self.shards, self.root]

    def _triton_ready(self) -> bool:
        client = EmbeddingClient(self.triton_url)
        try:
            return client.ready()
        except Exception:
            return False
        finally:
            client.close()

    def search(self) -> str:
        """One call: 'OK', 'OK partial' or the error's status code name."""
        req = search_pb2.SearchRequest(
            query=common_pb2.ImageInput(image_id=self.rng.choice(self.pool_ids)),
            instruction=self.rng.choice(self.INSTRUCTIONS), k=10)
        try:
            resp = self.stub.Search(req, timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK partial" if resp.partial else "OK"

    def load(self, per_s: float) -> None:
        while not self.stopping.is_set():
            t = time.monotonic()
            self.codes[self.search()] += 1
            self.stopping.wait(max(0.0, 1.0 / per_s - (time.monotonic() - t)))



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--pages-per-s", type=float, default=1.0)
    ap.add_argument("--every", type=float, default=20.0, help="seconds between faults")
    ap.add_argument("--converge-timeout", type=float, default=600.0)
    ap.add_argument("--searches-per-s", type=float, default=1.0)
    ap.add_argument("--pool", type=int, default=48, help="images the search stack indexes")
    ap.add_argument("--checkpoint", type=Path,
                    help="model to serve (default: the serving tests' model)")
    ap.add_argument("--no-search", action="store_true", help="ingestion only")
    args = ap.parse_args()
    search_on = not args.no_search
    if search_on and not TRITON_PY.exists():
        ap.error(".venv-triton is missing (./taskw sets it up); or pass --no-search")
    if search_on and args.checkpoint is None:
        # the serving tests' model (pretrained towers + seeded head), built once and cached
        from tests.serving.serving_support import serving_checkpoints
        args.checkpoint = serving_checkpoints()["serving-a"]
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # connection errors are the point
    logging.getLogger("runtime").setLevel(logging.ERROR)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="magiclens-chaos-"))
    pg = infra.InfraPaths(tmp / "pg")
    broker = infra.InfraPaths(tmp / "tansu")
    try:
        return run(args, rng, tmp, pg, broker, search_on)
    finally:  # also when a start fails or the run is interrupted: leave nothing running
        for k in Kept.started:
            k.keeper.terminate()
        for k in Kept.started:
            k.stop()
        infra.tansu_down(broker)
        infra.pg_down(pg)


def run(args: argparse.Namespace, rng: random.Random, tmp: Path, pg: infra.InfraPaths,
        broker: infra.InfraPaths, search_on: bool) -> int:
    pg_port, kafka_port = _free_port(), _free_port()
    infra.pg_up(pg, pg_port)
    infra.tansu_up(broker, kafka_port)
    url = f"postgresql://postgres@127.0.0.1:{pg_port}/magiclens"
    bootstrap = f"127.0.0.1:{kafka_port}"
    db.migrate(url)
    ensure_topics(bootstrap)
    with psycopg.connect(url, autocommit=True) as conn:
        # n: applications of the image's ImageMined event (more than 1 breaks exactly-once);
        # reconciled: applications by the reconciler, which finds images it has not seen when
        # their event is late (a miner killed before its relay published it). A real
        # consumer's handler is idempotent by state, so the event after that changes nothing.
        conn.execute("CREATE TABLE chaos_seen (image_id BIGINT PRIMARY KEY, "
                     "n INT NOT NULL DEFAULT 0, reconciled INT NOT NULL DEFAULT 0)")
    site = Site()
    env = dict(os.environ, DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS=bootstrap,
               MAGICLENS_DATA_DIR=str(tmp / "data"), MAGICLENS_BLOB_URI=f"file://{tmp}/blobs",
               MAGICLENS_MINING_ALLOW_HOSTS=f"127.0.0.1:{site.port}",
               MAGICLENS_MINING_PER_HOST_DELAY_S="0", MAGICLENS_RECONCILE_INTERVAL_S="5",
               MAGICLENS_MINING_RECONCILE_MIN_AGE_S="5", MAGICLENS_MINING_RETRY_BACKOFF_S="5")
    miners = [Miner(f"miner-{i}", env, tmp) for i in range(2)]
    search = Search(url, env, tmp, args.checkpoint, args.pool) if search_on else None
    pool = search.pool_ids if search else []  # not mined: left out of the counts below

    def count(conn, event: Event) -> None:
        col = "reconciled" if event.synthetic else "n"
        conn.execute(f"INSERT INTO chaos_seen (image_id, {col}) VALUES (%s, 1) ON CONFLICT "
                     f"(image_id) DO UPDATE SET {col} = chaos_seen.{col} + 1",
                     (event.message.image_id,))

    def unseen():
        with db.connect(url) as conn:
            rows = conn.execute("SELECT image_id FROM images WHERE image_id NOT IN "
                                "(SELECT image_id FROM chaos_seen) LIMIT 500").fetchall()
        for r in rows:
            yield Event(IMAGES_MINED.name, str(r["image_id"]), "",
                        events_pb2.ImageMined(image_id=r["image_id"]))

    downstream = Consumer("chaos-downstream", bootstrap, url, [IMAGES_MINED], count,
                          reconciler=unseen, reconcile_interval_s=5.0)
    threading.Thread(target=downstream.run, daemon=True).start()

    submitted: list[str] = []
    faults: Counter[str] = Counter()
    submit_errors: Counter[str] = Counter()
    end = time.monotonic() + args.minutes * 60
    next_fault = time.monotonic() + args.every
    n = 0
    kinds = ["kill-miner", "restart-broker", "stop-postgres"]
    if search:
        kinds += ["kill-shard", "kill-triton"]
        threading.Thread(target=search.load, args=(args.searches_per_s,), daemon=True).start()
    print(f"chaos: {args.minutes:g} min, a fault every {args.every:g} s, "
          f"{args.pages_per_s:g} pages/s, "
          + (f"{args.searches_per_s:g} searches/s over {len(pool)} images, " if search else "")
          + f"seed {args.seed}", flush=True)
    while time.monotonic() < end:
        page = site.add_page(n)
        for m in rng.sample(miners, len(miners)):
            try:
                m.stub.SubmitPages(mining_pb2.SubmitPagesRequest(urls=[page]), timeout=5)
                submitted.append(page)
                n += 1
                break
            except grpc.RpcError as exc:
                submit_errors[exc.code().name] += 1
        if time.monotonic() >= next_fault:
            fault = rng.choice(kinds)
            faults[fault] += 1
            if fault == "kill-miner":
                rng.choice(miners).kill()
            elif fault == "kill-shard":
                rng.choice(search.shards).kill()
            elif fault == "kill-triton":
                search.triton.kill()
            elif fault == "restart-broker":
                infra.tansu_down(broker)
                infra.tansu_up(broker, kafka_port)
            else:
                infra.pg_down(pg)
                time.sleep(rng.uniform(5, 20))
                infra.pg_up(pg, pg_port)
            print(f"  t={args.minutes * 60 - (end - time.monotonic()):6.0f}s {fault}", flush=True)
            next_fault = time.monotonic() + args.every
        time.sleep(1.0 / args.pages_per_s)

    t0 = time.monotonic()
    if search:
        search.stopping.set()
    print(f"chaos over; converging ({len(submitted)} pages submitted)", flush=True)

    def facts() -> dict:
        with psycopg.connect(url) as conn:
            one = lambda sql, *a: conn.execute(sql, a).fetchone()[0]  # noqa: E731
            return {
                "pages": one("SELECT count(*) FROM pages WHERE url = ANY(%s)", submitted),
                "mined": one("SELECT count(*) FROM pages WHERE status = 'mined' "
                             "AND url = ANY(%s)", submitted),
                "not_mined": one("SELECT count(*) FROM pages WHERE status <> 'mined'"),
                "images": one("SELECT count(*) FROM images "
                              "WHERE image_id <> ALL(%s::bigint[])", pool),
                "links": one("SELECT count(*) FROM page_images"),
                "image_events": one("SELECT count(*) FROM outbox "
                                    "WHERE topic = 'magiclens.images.mined.v1'"),
                "distinct_image_events": one("SELECT count(DISTINCT msg_key) FROM outbox "
                                             "WHERE topic = 'magiclens.images.mined.v1'"),
                "seen": one("SELECT count(*) FROM chaos_seen "
                            "WHERE image_id <> ALL(%s::bigint[])", pool),
                "seen_twice": one("SELECT count(*) FROM chaos_seen WHERE n > 1 "
                                  "AND image_id <> ALL(%s::bigint[])", pool),
                "reconciled_first": one("SELECT count(*) FROM chaos_seen WHERE n > 0 "
                                        "AND reconciled > 0 AND image_id <> ALL(%s::bigint[])",
                                        pool),
                "reconciled_only": one("SELECT count(*) FROM chaos_seen WHERE n = 0 "
                                       "AND image_id <> ALL(%s::bigint[])", pool),
                "dead_letters": one("SELECT count(*) FROM dead_letters"),
            }

    f = facts()
    expected_images = 2 * len(submitted)
    search_back_s = None  # first full answer after the chaos
    while time.monotonic() - t0 < args.converge_timeout:
        f = facts()
        if search and search_back_s is None and search.search() == "OK":
            search_back_s = time.monotonic() - t0
        if (f["mined"] == len(submitted) and f["seen"] == expected_images
                and (not search or search_back_s is not None)):
            break
        time.sleep(2)
    converge_s = time.monotonic() - t0
    kept = miners + (search.kept if search else [])
    restarts = {k.name: k.details().get("restarts", 0) for k in kept}
    alive = {k.name: k.details().get("state") for k in kept}
    downstream.stop()
    site.server.shutdown()

    lost_pages = len(submitted) - f["mined"]
    lost_images = expected_images - f["seen"]
    dup = (f["links"] - expected_images) + (f["image_events"] - f["distinct_image_events"]) \
        + f["seen_twice"]
    print(f"faults:           {dict(faults)}")
    print(f"restarts:         {restarts}")
    print(f"state at the end: {alive}")
    print(f"submit errors:    {dict(submit_errors) or 'none'} (retried on the other miner)")
    print(f"pages in/out:     {len(submitted)} submitted, {f['mined']} mined")
    print(f"images in/out:    {expected_images} expected, {f['images']} stored, "
          f"{f['seen']} seen downstream")
    print(f"lost:             {lost_pages} pages, {lost_images} images downstream")
    print(f"duplicated:       {dup} (links, image events, an event applied twice downstream)")
    print(f"reconciled:       {f['reconciled_first'] + f['reconciled_only']} images applied "
          f"downstream by the reconciler before their event came ({f['reconciled_first']} "
          f"events came later and were applied too, {f['reconciled_only']} never came)")
    print(f"dead letters:     {f['dead_letters']}")
    if search:
        print(f"search calls:     {sum(search.codes.values())}, by code: "
              f"{dict(search.codes.most_common())}")
        print("search after:     " + (f"a full answer {search_back_s:.1f} s after the chaos"
                                      if search_back_s is not None else "no full answer"))
    search_ok = not search or search_back_s is not None
    print(f"time to converge: {converge_s:.1f} s after the last fault"
          + ("" if lost_pages == 0 and lost_images == 0 and search_ok else " (timed out)"))
    return 0 if lost_pages == 0 and lost_images == 0 and dup == 0 and search_ok else 1


if __name__ == "__main__":
    sys.exit(main())
