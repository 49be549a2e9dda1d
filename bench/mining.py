"""Mining throughput through the real pipeline on the demo corpus (1 and 2 workers).

Each run gets a fresh database (on the same PostgreSQL server), a private page topic and
consumer group, and its own blob directory; the workers are real `python -m services.mining`
processes fetching from the corpus site on 127.0.0.1:8765. Prints pages/s, images/s and the
time each stage took (summed over the workers' fetch threads, so stages can exceed wall time).

    python bench/mining.py [--workers 1 2] [--size small]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
from magiclens.v1 import events_pb2

from runtime import db
from runtime.bus import encode, ensure_topics, make_producer
from runtime.config import BaseServiceSettings, load_settings
from services.mining import sitemap
from services.mining.config import MiningSettings
from services.mining.handlers import pages_topic
from tools.ingest.demo import SITE, ensure_corpus

ROOT = Path(__file__).resolve().parents[1]


def fresh_database(base_url: str, name: str) -> str:
    admin = base_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base_url.rsplit("/", 1)[0] + "/" + name
    db.migrate(url)
    return url


def drop_database(base_url: str, name: str) -> None:
    admin = base_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(n_workers: int, base: BaseServiceSettings, urls: list[str]) -> dict:
    token = uuid.uuid4().hex[:8]
    dbname = f"magiclens_bench_{token}"
    db_url = fresh_database(base.database_url, dbname)
    topic = f"bench.mining.pages.{token}"
    settings = MiningSettings(mining_pages_topic=topic)
    ensure_topics(base.kafka_bootstrap_servers, [pages_topic(settings)])
    tmp = Path(tempfile.mkdtemp(prefix="bench-mining-"))
    env = dict(os.environ, DATABASE_URL=db_url,
               KAFKA_BOOTSTRAP_SERVERS=base.kafka_bootstrap_servers,
               MAGICLENS_MINING_PAGES_TOPIC=topic, MAGICLENS_MINING_GROUP=f"bench-{token}",
               MAGICLENS_MINING_ALLOW_HOSTS="127.0.0.1:8765", MAGICLENS_BLOB_URI=f"file://{tmp}",
               MAGICLENS_GRPC_PORT="0", MAGICLENS_METRICS_PORT="0", MAGICLENS_LOG_LEVEL="INFO")
    logs = [tmp / f"w{i}.log" for i in range(n_workers)]
    procs = [subprocess.Popen([sys.executable, "-m", "services.mining"], cwd=ROOT,
                              env=dict(env, MAGICLENS_MINING_WORKER_ID=f"w{i}"),
                              stdout=subprocess.DEVNULL, stderr=logs[i].open("wb"))
             for i in range(n_workers)]
    try:
        time.sleep(7)  # start + consumer-group join (Tansu: ~3 s per join)
        producer = make_producer(base.kafka_bootstrap_servers)
        start = time.perf_counter()
        for u in urls:
            value, headers = encode(events_pb2.PageDiscovered(url=u, source="corpus:bench"))
            producer.send(topic, key=u.encode(), value=value, headers=headers)
        producer.flush(30)
        producer.close()
        with psycopg.connect(db_url) as conn:
            while True:
                done = conn.execute("SELECT count(*) FROM pages WHERE status IN "
                                    "('mined', 'failed', 'skipped')").fetchone()[0]
                if done >= len(urls):
                    break
                if time.perf_counter() - start > 900:
                    raise SystemExit("bench: timed out")
                time.sleep(0.05)
            wall = time.perf_counter() - start
            stats = conn.execute(
                "SELECT (SELECT count(*) FROM pages WHERE status = 'mined') AS mined, "
                "(SELECT count(*) FROM page_images) AS links, "
                "(SELECT count(*) FROM images) AS images, "
                "(SELECT count(*) FROM image_rejections) AS rejected, "
                "(SELECT count(*) FROM pairs) AS pairs").fetchone()
            reasons = conn.execute(
                "SELECT split_part(split_part(reason, '(', 1), ':', 1) AS why, count(*) "
                "FROM image_rejections GROUP BY 1 ORDER BY 2 DESC LIMIT 5").fetchall()
            per_worker = dict(conn.execute("SELECT mined_by, count(*) FROM pages GROUP BY 1"
                                           ).fetchall())
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        drop_database(base.database_url, dbname)
    stages: dict[str, float] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            if '"mining stats"' in line:
                for k, v in json.loads(json.loads(line)["stats"])["seconds"].items():
                    stages[k] = stages.get(k, 0.0) + v
    return {"workers": n_workers, "wall_s": wall, "pages": len(urls), "mined": stats[0],
            "image_links": stats[1], "images": stats[2], "rejected": stats[3], "pairs": stats[4],
            "pages_per_worker": per_worker, "stage_s": stages, "reasons": reasons}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", default="small")
    args = ap.parse_args()
    base = load_settings(BaseServiceSettings)
    server = ensure_corpus(args.size, detach=False)
    try:
        with urllib.request.urlopen(SITE + "sitemap.xml", timeout=5) as r:
            body = r.read()
        urls, _ = sitemap.expand(SITE + "sitemap.xml", lambda u: body)
        print(f"bench: {len(urls)} corpus pages from {SITE}sitemap.xml")
        for n in args.workers:
            r = run(n, base, urls)
            w = r["wall_s"]
            print(f"\n== {n} worker(s): {r['mined']}/{r['pages']} pages mined in {w:.2f} s")
            print(f"   {r['pages'] / w:.1f} pages/s, {r['image_links'] / w:.1f} images/s "
                  f"({r['image_links']} page images, {r['images']} unique, "
                  f"{r['rejected']} rejected, {r['pairs']} pairs)")
            print(f"   pages per worker: {r['pages_per_worker']}")
            print("   top rejection reasons: "
                  + "; ".join(f"{why.strip()} x{n}" for why, n in r["reasons"]))
            total = sum(r["stage_s"].values()) or 1.0
            split = ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)"
                              for k, v in r["stage_s"].items())
            print(f"   stage time (summed over threads/workers): {split}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
