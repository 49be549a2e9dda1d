"""The operator metrics of a small real pipeline, scraped from every process's /metrics.

Mining, triplegen (LLM writer, against an OpenAI-compatible stand-in for the LLM API), the
embedding worker (the real Triton server), a search shard and the outbox relay run as
processes against a private database; two pages of real photos go through them, then each
/metrics is read with prometheus_client's text parser: the pipeline counters moved, the
consumer lag and backlog gauges are set, a poison record shows up as a dead letter with
its reason, the LLM calls, latency and cache lookups are counted, the shard reports its
size and freshness.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from runtime import db
from runtime.bus import ensure_topics
from runtime.serving import set_serving_version
from runtime.topics import PAGES_DISCOVERED, renamed
from tests.mining.mining_support import WebServer
from tests.serving import serving_support as serving
from tests.support.processes import free_port, start, stop, wait_for, wait_log

PAGES, PER_PAGE = 2, 3
Samples = dict[tuple[str, frozenset], float]


def scrape(port: int) -> Samples:
    """Every sample of 127.0.0.1:port/metrics, by (name, labels)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over samples whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def present(samples: Samples, name: str, **labels: str) -> bool:
    want = set(labels.items())
    return any(n == name and want <= ls for (n, ls) in samples)


@pytest.fixture
def llm_api() -> Iterator[tuple[str, list[int]]]:
    """An OpenAI-compatible chat endpoint (the LLM is outside the suite): the first request
    gets a 503, every other one a valid instruction. Yields (base URL, request log)."""
    calls: list[int] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                calls.append(1)
                first = len(calls) == 1
            if first:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = json.dumps({"choices": [{"message": {
                "role": "assistant",
                "content": "So the instruction can be: find another photo from this page"}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", calls
    server.shutdown()
    server.server_close()


def _site(web: WebServer, unique: str) -> list[str]:
    urls = []
    for p in range(PAGES):
        figures = []
        for i in range(PER_PAGE):
            n = p * PER_PAGE + i
            img = serving.photo(serving.PHOTOS[n]).convert("RGB").resize((160, 160))
            web.add(f"/{unique}/p{p}/photo-{i}.png", serving.png(img), ctype="image/png")
            figures.append(f"<figure><img src='/{unique}/p{p}/photo-{i}.png' "
                           f"alt='{serving.PHOTOS[n]} photo'><figcaption>A photo of "
                           f"{serving.PHOTOS[n]}</figcaption></figure>")
        urls.append(web.add(f"/{unique}/p{p}.html",
                            f"<html><head><title>Gallery {p}</title></head><body>"
                            f"<h1>Gallery {p}</h1>{''.join(figures)}</body></html>"))
    return urls


@pytest.mark.slow
@pytest.mark.triton
def test_a_pipeline_run_moves_every_operator_metric(infra_servers, fresh_db, triton,
                                                    checkpoints, llm_api, tmp_path, unique):
    bootstrap = infra_servers.kafka_bootstrap
    pages_topic = renamed(PAGES_DISCOVERED, f"test.metrics.pages.{unique}")
    ensure_topics(bootstrap, [pages_topic])
    uri = f"file://{checkpoints['serving-a']}"
    with db.transaction(fresh_db) as conn:  # serving-a promoted, as training leaves it
        conn.execute("INSERT INTO model_versions (model_version, config_name, checkpoint_uri, "
                     "status) VALUES ('serving-a', 'compact', %s, 'promoted')", (uri,))
        set_serving_version(conn, "serving-a", uri)
    web = WebServer()
    urls = _site(web, unique)
    llm_url, llm_calls = llm_api
    ports = {name: free_port() for name in
             ("mining", "triplegen", "embedding-worker", "search-shard", "outbox-relay")}
    base = infra_servers.env(
        DATABASE_URL=fresh_db, MAGICLENS_DATA_DIR=str(tmp_path / "data"),
        MAGICLENS_BLOB_URI=f"file://{tmp_path / 'blobs'}", MAGICLENS_GRPC_PORT="0",
        MAGICLENS_LOG_LEVEL="INFO")
    env = {
        "mining": dict(base, MAGICLENS_MINING_PAGES_TOPIC=pages_topic.name,
                       MAGICLENS_MINING_GROUP=f"test-metrics-mining-{unique}",
                       MAGICLENS_MINING_ALLOW_HOSTS=f"127.0.0.1:{web.port}",
                       MAGICLENS_MINING_PER_HOST_DELAY_S="0"),
        "triplegen": dict(base, MAGICLENS_TRIPLEGEN_CONSUMER_GROUP=f"test-metrics-tg-{unique}",
                          MAGICLENS_TRIPLEGEN_WRITER="llm", MAGICLENS_LLM_BASE_URL=llm_url,
                          MAGICLENS_LLM_MODEL="stand-in", MAGICLENS_LLM_BACKOFF_S="0"),
        "embedding-worker": dict(base, MAGICLENS_TRITON_URL=triton.url,
                                 MAGICLENS_CURRENT_MODEL_FILE=str(triton.current),
                                 MAGICLENS_EMBEDDING_GROUP=f"test-metrics-emb-{unique}"),
        "search-shard": dict(base, MAGICLENS_INDEX=f"metrics{unique}", MAGICLENS_NUM_SHARDS="1",
                             MAGICLENS_SHARD="0", MAGICLENS_SYNC_INTERVAL_S="2"),
        "outbox-relay": dict(base),
    }
    modules = {"mining": ["services.mining"], "triplegen": ["services.triplegen", "serve"],
               "embedding-worker": ["services.embedding.worker"],
               "search-shard": ["services.search.shard"],
               "outbox-relay": ["services.outbox_relay"]}
    logs = {name: tmp_path / f"{name}.log" for name in modules}
    procs = {}
    try:
        for name, (module, *args) in modules.items():
            procs[name] = start(module, *args, log=logs[name], env=dict(
                env[name], MAGICLENS_METRICS_PORT=str(ports[name])))
        for name in procs:
            wait_for(lambda n=name: _answers(ports[n]), 120, f"{name}'s /metrics",
                     proc=procs[name], log=logs[name])
        wait_log(logs["search-shard"], '"shard ready"', 120, proc=procs["search-shard"])
        raw = KafkaProducer(bootstrap_servers=bootstrap)
        raw.send(pages_topic.name, key=b"poison", value=b"\xff\xfe not an event",
                 headers=[("content-type", b"application/x-protobuf")]).get(10)
        for url in urls:
            raw.send(pages_topic.name, key=url.encode(), value=json.dumps({"url": url}).encode(),
                     headers=[("content-type", b"application/json")]).get(10)
        raw.close()

        images = PAGES * PER_PAGE
        wait_for(lambda: value(scrape(ports["search-shard"]), "magiclens_index_vectors",
                               shard="0") >= images, 240,
                 "every image in the shard's index", proc=procs["search-shard"],
                 log=logs["search-shard"])
        wait_for(lambda: value(scrape(ports["triplegen"]), "magiclens_pipeline_items_total",
                               stage="triples_written") > 0, 120, "triples written",
                 proc=procs["triplegen"], log=logs["triplegen"])
        wait_for(lambda: _settled(fresh_db), 120, "every pair decided and every outbox row "
                 "published", proc=procs["triplegen"], log=logs["triplegen"])
        # Lag and backlog gauges are sampled every 15 s: wait for samples after the work.
        # Mining's lag: sampled once it was assigned its partitions (the records were still
        # ahead of it then), and every 15 s: until a sample says all are read.
        wait_for(lambda: _lag(scrape(ports["mining"]), f"test-metrics-mining-{unique}") == {
            str(p): 0.0 for p in range(pages_topic.partitions)}, 60,
            "mining's lag sample to reach 0", proc=procs["mining"], log=logs["mining"])
        for name, group in (("triplegen", "tg"), ("embedding-worker", "emb")):
            wait_for(lambda n=name, g=group: present(
                scrape(ports[n]), "magiclens_kafka_consumer_lag_records",
                group=f"test-metrics-{g}-{unique}"), 60, f"{name}'s lag sample",
                proc=procs[name], log=logs[name])
        wait_for(lambda: value(scrape(ports["embedding-worker"]),
                               "magiclens_embedding_backlog_images") == 0
                 and present(scrape(ports["embedding-worker"]),
                             "magiclens_embedding_backlog_images"), 60,
                 "the worker's backlog sample to reach 0", proc=procs["embedding-worker"],
                 log=logs["embedding-worker"])
        got = {name: scrape(port) for name, port in ports.items()}
    finally:
        codes = {name: stop(p) for name, p in procs.items()}
        web.close()
    assert all(code == 0 for code in codes.values()), (codes, _tails(logs))

    mining, tg, worker = got["mining"], got["triplegen"], got["embedding-worker"]
    shard = got["search-shard"]
    items = "magiclens_pipeline_items_total"
    assert value(mining, items, stage="pages_mined") == PAGES
    assert value(mining, items, stage="images_stored") == images
    assert value(mining, items, stage="pairs_mined") > 0
    assert value(tg, items, stage="triples_written") > 0
    assert value(worker, items, stage="embeddings_written") == images

    # Lag: a series per partition of the consumed topic, all read up to the end.
    lag = _lag(mining, f"test-metrics-mining-{unique}")
    assert set(lag) == {str(p) for p in range(pages_topic.partitions)}, lag
    assert sum(lag.values()) == 0, lag
    assert present(tg, "magiclens_kafka_consumer_lag_records",
                   group=f"test-metrics-tg-{unique}")
    assert present(worker, "magiclens_kafka_consumer_lag_records",
                   group=f"test-metrics-emb-{unique}")
    # The poison record: one dead letter, by consumer and reason; the pages were applied.
    assert value(mining, "magiclens_dead_letters_total", consumer="mining",
                 reason="undecodable") == 1
    assert value(mining, "magiclens_consumer_events_total", consumer="mining",
                 outcome="applied") >= PAGES

    # Outbox: every relay samples its backlog; all published by the end of the run.
    for name, samples in got.items():
        if name == "search-shard":
            continue  # writes nothing to the outbox and runs no relay
        assert present(samples, "magiclens_outbox_backlog_rows"), name
        assert present(samples, "magiclens_outbox_oldest_age_seconds"), name
    published = sum(value(s, "magiclens_outbox_published_total") for s in got.values())
    with db.connect(fresh_db) as conn:
        rows = conn.execute("SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL"
                            ).fetchone()["n"]
    assert published == rows > 0

    # LLM: the 503 and the successes counted, with latency; a rerun would hit the cache.
    assert value(tg, "magiclens_llm_requests_total", model="stand-in",
                 outcome="server_error") == 1
    assert value(tg, "magiclens_llm_requests_total", outcome="ok") == len(llm_calls) - 1 > 0
    assert value(tg, "magiclens_llm_request_seconds_count") == len(llm_calls)
    assert value(tg, "magiclens_llm_cache_lookups_total", result="miss") > 0

    # Embedding worker: requests timed, nothing left to embed.
    assert value(worker, "magiclens_embedding_request_seconds_count") >= 1
    assert value(worker, "magiclens_embedding_backlog_images") == 0

    # Shard: size and freshness of the index that serves.
    assert value(shard, "magiclens_index_vectors", shard="0") == images
    assert value(shard, "magiclens_index_vector_bytes", shard="0") > 0
    assert 0 <= value(shard, "magiclens_index_update_age_seconds", shard="0") < 240
    assert value(shard, "magiclens_index_last_update_timestamp_seconds", shard="0") > 0
    assert value(shard, "magiclens_index_freshness_seconds_count") >= images


def _lag(samples: Samples, group: str) -> dict[str, float]:
    """{partition: lag} of one consumer group."""
    return {dict(ls)["partition"]: v for (n, ls), v in samples.items()
            if n == "magiclens_kafka_consumer_lag_records" and dict(ls)["group"] == group}


def _settled(url: str) -> bool:
    with db.connect(url) as conn:
        return conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM pairs WHERE status IN ('mined', 'kept')) "
            "AND NOT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL) AS done"
        ).fetchone()["done"]


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _tails(logs: dict[str, Path]) -> str:
    return "\n".join(f"--- {name}\n{p.read_text(errors='replace')[-1500:]}"
                     for name, p in logs.items() if p.exists())
