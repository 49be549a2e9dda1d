"""A bounded chaos run: ingestion while miners, the broker and Postgres are killed and
restarted at random; prints what went in and out, what was lost or duplicated, and how long
the pipeline took to converge once the chaos stopped.

    python bench/chaos.py [--minutes 10] [--seed 14] [--pages-per-s 1]

Everything is private to the run: a PostgreSQL cluster and a Tansu broker on free ports
(tools/infra), a local site of synthetic pages (2 images each), two real mining services
under keepers (tools/keeper: restarted with back-off when killed), and a downstream consumer
of ImageMined (runtime.bus, with a reconciler, as every real consumer has) that counts each
image. Pages go in through the miners' SubmitPages RPC (Postgres + outbox, durable), retried
on another miner while one is down. Faults, one every `--every` seconds: SIGKILL a miner,
restart the broker (memory storage: every message is lost), stop Postgres for 5-20 s.
Search is not exercised here (it needs a trained model); its outage behaviour is covered by
tests/faults/test_faults_search.py.
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

import grpc
import psycopg
from magiclens.v1 import events_pb2, mining_pb2, mining_pb2_grpc
from PIL import Image

from runtime import db, rpc
from runtime.bus import Consumer, Event, ensure_topics
from runtime.topics import IMAGES_MINED
from tools import infra

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            rng = random.Random(n * 2 + i)
            img = Image.new("RGB", (96, 96))
            img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256))
                         for _ in range(96 * 96)])
            buf = io.BytesIO()
            img.save(buf, "PNG")
            self.pages[f"/p{n}/i{i}.png"] = buf.getvalue()
            imgs.append(f"<img src='/p{n}/i{i}.png' alt='page {n} image {i}'>")
        self.pages[f"/p{n}.html"] = f"<title>Page {n}</title>{''.join(imgs)}".encode()
        return f"http://127.0.0.1:{self.port}/p{n}.html"


class Miner:
    def __init__(self, name: str, env: dict[str, str], run_dir: Path) -> None:
        self.name, self.port = name, _free_port()
        self.state = run_dir / f"{name}.state.json"
        env = dict(env, MAGICLENS_GRPC_PORT=str(self.port), MAGICLENS_METRICS_PORT="0",
                   MAGICLENS_MINING_WORKER_ID=name)
        self.keeper = subprocess.Popen(
            [sys.executable, "-m", "tools.keeper", "--name", name, "--log",
             str(run_dir / f"{name}.log"), "--state", str(self.state), "--backoff", "1",
             "--", sys.executable, "-m", "services.mining"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self.stub = mining_pb2_grpc.MiningServiceStub(rpc.channel(f"127.0.0.1:{self.port}"))

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--pages-per-s", type=float, default=1.0)
    ap.add_argument("--every", type=float, default=20.0, help="seconds between faults")
    ap.add_argument("--converge-timeout", type=float, default=600.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # connection errors are the point
    logging.getLogger("runtime").setLevel(logging.ERROR)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="magiclens-chaos-"))
    pg = infra.InfraPaths(tmp / "pg")
    broker = infra.InfraPaths(tmp / "tansu")
    pg_port, kafka_port = _free_port(), _free_port()
    infra.pg_up(pg, pg_port)
    infra.tansu_up(broker, kafka_port)
    url = f"postgresql://postgres@127.0.0.1:{pg_port}/magiclens"
    bootstrap = f"127.0.0.1:{kafka_port}"
    db.migrate(url)
    ensure_topics(bootstrap)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE chaos_seen (image_id BIGINT PRIMARY KEY, n INT NOT NULL)")
    site = Site()
    env = dict(os.environ, DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS=bootstrap,
               MAGICLENS_DATA_DIR=str(tmp / "data"), MAGICLENS_BLOB_URI=f"file://{tmp}/blobs",
               MAGICLENS_MINING_ALLOW_HOSTS=f"127.0.0.1:{site.port}",
               MAGICLENS_MINING_PER_HOST_DELAY_S="0", MAGICLENS_RECONCILE_INTERVAL_S="5",
               MAGICLENS_MINING_RECONCILE_MIN_AGE_S="5", MAGICLENS_MINING_RETRY_BACKOFF_S="5")
    miners = [Miner(f"miner-{i}", env, tmp) for i in range(2)]

    def count(conn, event: Event) -> None:
        conn.execute("INSERT INTO chaos_seen (image_id, n) VALUES (%s, 1) ON CONFLICT "
                     "(image_id) DO UPDATE SET n = chaos_seen.n + 1",
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
    print(f"chaos: {args.minutes:g} min, a fault every {args.every:g} s, "
          f"{args.pages_per_s:g} pages/s, seed {args.seed}", flush=True)
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
            fault = rng.choice(["kill-miner", "restart-broker", "stop-postgres"])
            faults[fault] += 1
            if fault == "kill-miner":
                rng.choice(miners).kill()
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
    print(f"chaos over; converging ({len(submitted)} pages submitted)", flush=True)

    def facts() -> dict:
        with psycopg.connect(url) as conn:
            one = lambda sql, *a: conn.execute(sql, a).fetchone()[0]  # noqa: E731
            return {
                "pages": one("SELECT count(*) FROM pages WHERE url = ANY(%s)", submitted),
                "mined": one("SELECT count(*) FROM pages WHERE status = 'mined' "
                             "AND url = ANY(%s)", submitted),
                "not_mined": one("SELECT count(*) FROM pages WHERE status <> 'mined'"),
                "images": one("SELECT count(*) FROM images"),
                "links": one("SELECT count(*) FROM page_images"),
                "image_events": one("SELECT count(*) FROM outbox "
                                    "WHERE topic = 'magiclens.images.mined.v1'"),
                "distinct_image_events": one("SELECT count(DISTINCT msg_key) FROM outbox "
                                             "WHERE topic = 'magiclens.images.mined.v1'"),
                "seen": one("SELECT count(*) FROM chaos_seen"),
                "seen_twice": one("SELECT count(*) FROM chaos_seen WHERE n > 1"),
                "dead_letters": one("SELECT count(*) FROM dead_letters"),
            }

    f = facts()
    expected_images = 2 * len(submitted)
    while time.monotonic() - t0 < args.converge_timeout:
        f = facts()
        if f["mined"] == len(submitted) and f["seen"] == expected_images:
            break
        time.sleep(2)
    converge_s = time.monotonic() - t0
    restarts = {m.name: m.details().get("restarts", 0) for m in miners}
    alive = {m.name: m.details().get("state") for m in miners}
    downstream.stop()
    for m in miners:
        m.stop()
    infra.tansu_down(broker)
    infra.pg_down(pg)
    site.server.shutdown()

    lost_pages = len(submitted) - f["mined"]
    lost_images = expected_images - f["seen"]
    dup = (f["links"] - expected_images) + (f["image_events"] - f["distinct_image_events"]) \
        + f["seen_twice"]
    print(f"faults:           {dict(faults)}")
    print(f"miner restarts:   {restarts} (state at the end: {alive})")
    print(f"submit errors:    {dict(submit_errors) or 'none'} (retried on the other miner)")
    print(f"pages in/out:     {len(submitted)} submitted, {f['mined']} mined")
    print(f"images in/out:    {expected_images} expected, {f['images']} stored, "
          f"{f['seen']} seen downstream")
    print(f"lost:             {lost_pages} pages, {lost_images} images downstream")
    print(f"duplicated:       {dup} (links, image events, downstream applications)")
    print(f"dead letters:     {f['dead_letters']}")
    print(f"time to converge: {converge_s:.1f} s after the last fault"
          + ("" if lost_pages == 0 and lost_images == 0 else " (timed out)"))
    return 0 if lost_pages == 0 and lost_images == 0 and dup == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
