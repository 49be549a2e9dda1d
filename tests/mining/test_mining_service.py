"""The mining service as processes: Kafka page event -> pairs in Postgres -> outbox events on
Kafka; a worker SIGKILLed mid-page; two workers in one consumer group splitting the work."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer
from magiclens.v1 import events_pb2, mining_pb2, mining_pb2_grpc

from runtime import rpc
from runtime.bus import ensure_topics, make_producer, publish
from services.mining.config import MiningSettings
from services.mining.handlers import pages_topic
from tests.mining.mining_support import noise_image
from tests.support.processes import free_port, kill, start, stop, wait_for, wait_log


def _worker(infra, web, topic: str, group: str, tmp: Path, name: str, grpc_port: int = 0,
            **env) -> subprocess.Popen:
    return start(
        "services.mining", log=tmp / f"{name}.log",
        env=infra.env(MAGICLENS_MINING_PAGES_TOPIC=topic, MAGICLENS_MINING_GROUP=group,
                      MAGICLENS_MINING_ALLOW_HOSTS=f"127.0.0.1:{web.port}",
                      MAGICLENS_MINING_WORKER_ID=name, MAGICLENS_BLOB_URI=f"file://{tmp}/blobs",
                      MAGICLENS_GRPC_PORT=str(grpc_port), MAGICLENS_METRICS_PORT="0",
                      MAGICLENS_RECONCILE_INTERVAL_S="2", MAGICLENS_MINING_RECONCILE_MIN_AGE_S="1",
                      MAGICLENS_MINING_PER_HOST_DELAY_S="0",
                      MAGICLENS_MINING_PER_HOST_CONCURRENCY="4",
                      **env))


def _site(web, unique: str, pages: int, per_page: int, delay_s: float = 0.0) -> list[str]:
    urls = []
    for p in range(pages):
        imgs = "".join(
            f"<figure><img src='/{unique}/p{p}/i{i}.png' alt='img {p}.{i}'>"
            f"<figcaption>caption {i}</figcaption></figure>" for i in range(per_page))
        for i in range(per_page):
            web.add(f"/{unique}/p{p}/i{i}.png", noise_image(f"{unique}-{p}-{i}", 96, 96),
                    ctype="image/png", delay_s=delay_s)
        urls.append(web.add(f"/{unique}/p{p}.html",
                            f"<title>Page {p}</title><h1>Page {p}</h1><p>Text.</p>{imgs}"))
    return urls


def _pages(db_url: str, urls: list[str]) -> dict[str, tuple]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT url, status, attempts, mined_by, page_id FROM pages "
                            "WHERE url = ANY(%s)", (urls,)).fetchall()
    return {r[0]: r[1:] for r in rows}


def _all_mined(db_url: str, urls: list[str]) -> bool:
    pages = _pages(db_url, urls)
    return len(pages) == len(urls) and all(p[0] == "mined" for p in pages.values())


def _integrity(db_url: str, urls: list[str], per_page: int) -> dict[str, int]:
    """Exactly-once facts for a set of pages: links, images, pairs and their events."""
    with psycopg.connect(db_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT page_id FROM pages WHERE url = ANY(%s)",
                                          (urls,))]
        links = conn.execute("SELECT page_id, count(*) FROM page_images WHERE page_id = ANY(%s) "
                             "GROUP BY page_id", (ids,)).fetchall()
        image_ids = [r[0] for r in conn.execute(
            "SELECT image_id FROM page_images WHERE page_id = ANY(%s)", (ids,))]
        images = conn.execute("SELECT count(*) FROM images WHERE first_page_id = ANY(%s)",
                              (ids,)).fetchone()[0]
        pairs = conn.execute("SELECT count(*) FROM pairs WHERE page_id = ANY(%s)",
                             (ids,)).fetchone()[0]
        img_events = conn.execute(
            "SELECT count(*) FROM outbox WHERE topic = 'magiclens.images.mined.v1' "
            "AND msg_key = ANY(%s)", ([str(i) for i in image_ids],)).fetchone()[0]
        pair_events = conn.execute(
            "SELECT count(*) FROM outbox WHERE topic = 'magiclens.pairs.mined.v1' "
            "AND msg_key = ANY(%s)", ([str(i) for i in ids],)).fetchone()[0]
    assert sorted(n for _, n in links) == [per_page] * len(urls)
    return {"images": images, "links": len(image_ids), "pairs": pairs,
            "image_events": img_events, "pair_events": pair_events}


def test_page_event_on_kafka_becomes_pairs_in_postgres_and_events_on_kafka(
        infra_servers, web, unique, tmp_path):
    db_url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic = f"test.mining.pages.{unique}"
    urls = _site(web, unique, pages=2, per_page=3)
    port = free_port()
    proc = _worker(infra_servers, web, topic, f"g-{unique}", tmp_path, "e2e", grpc_port=port)
    try:
        ensure_topics(bootstrap, [pages_topic(MiningSettings(mining_pages_topic=topic))])
        raw = KafkaProducer(bootstrap_servers=bootstrap)  # an external producer sending JSON
        raw.send(topic, key=urls[0].encode(), value=json.dumps({"url": urls[0]}).encode()).get(10)
        raw.close()
        wait_for(lambda: _all_mined(db_url, urls[:1]), 60, "the JSON page event to be mined")
        # gRPC: submit the second page (through the outbox), then ask for status.
        with rpc.channel(f"127.0.0.1:{port}") as ch:
            stub = mining_pb2_grpc.MiningServiceStub(ch)
            resp = stub.SubmitPages(mining_pb2.SubmitPagesRequest(
                urls=[urls[1], urls[0], "ftp://nope/"], source="corpus:t",
                heldout_urls=[urls[1]]), timeout=10)
            assert resp.accepted == 1
            assert any("already mined" in r for r in resp.rejected)
            assert any("scheme 'ftp'" in r for r in resp.rejected)
            wait_for(lambda: _all_mined(db_url, urls), 60, "the submitted page to be mined")
            st = stub.GetPageStatus(mining_pb2.GetPageStatusRequest(url=urls[1]), timeout=10)
            assert (st.status, st.images, st.pairs, st.rejected_images) == ("mined", 3, 6, 0)
            overall = stub.GetMiningStatus(mining_pb2.GetMiningStatusRequest(), timeout=10)
            assert overall.pages_by_status["mined"] >= 2 and overall.pairs >= 12
        with psycopg.connect(db_url) as conn:  # source and split: from the gRPC call only
            filed = dict(conn.execute("SELECT url, (source, split) FROM pages "
                                      "WHERE url = ANY(%s)", (urls,)).fetchall())
        assert filed == {urls[0]: ("web", "train"), urls[1]: ("corpus:t", "heldout")}
        facts = _integrity(db_url, urls, 3)
        assert facts == {"images": 6, "links": 6, "pairs": 12, "image_events": 6,
                         "pair_events": 2}
        with psycopg.connect(db_url) as conn:
            wait_for(lambda: conn.execute(
                "SELECT count(*) FROM outbox o JOIN pages p ON o.msg_key = p.page_id::text "
                "WHERE p.url = ANY(%s) AND o.topic = 'magiclens.pairs.mined.v1' "
                "AND o.published_at IS NOT NULL", (urls,)).fetchone()[0] == 2, 30,
                "the relay to publish")
            page_ids = {r[0] for r in conn.execute("SELECT page_id FROM pages WHERE url = ANY(%s)",
                                                   (urls,))}
            page_pairs = {pid: {r[0] for r in conn.execute(
                "SELECT pair_id FROM pairs WHERE page_id = %s", (pid,))} for pid in page_ids}
    finally:
        stop(proc)
    # The PairsMined events really are on Kafka.
    consumer = KafkaConsumer("magiclens.pairs.mined.v1", bootstrap_servers=bootstrap,
                             group_id=f"check-{unique}", auto_offset_reset="earliest",
                             session_timeout_ms=6000, heartbeat_interval_ms=2000,
                             consumer_timeout_ms=8000)
    seen = {}
    for rec in consumer:
        msg = events_pb2.PairsMined.FromString(rec.value)
        # Other tests' databases reuse page and pair ids on the shared topic (a subset of ours
        # can come from one of them): only the exact pair set of our page is ours.
        if msg.page_id in page_ids and set(msg.pair_ids) == page_pairs[msg.page_id]:
            seen[msg.page_id] = len(msg.pair_ids)
        if len(seen) == 2:
            break
    consumer.close()
    assert seen == dict.fromkeys(page_ids, 6)


def test_worker_sigkilled_mid_page_loses_and_duplicates_nothing(infra_servers, web, unique,
                                                                 tmp_path):
    db_url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic = f"test.mining.kill.{unique}"
    urls = _site(web, unique, pages=6, per_page=4, delay_s=0.25)
    tp = pages_topic(MiningSettings(mining_pages_topic=topic))
    ensure_topics(bootstrap, [tp])
    producer = make_producer(bootstrap)
    for u in urls:
        publish(producer, tp, u, events_pb2.PageDiscovered(url=u))
    producer.close()
    proc = _worker(infra_servers, web, topic, f"g-{unique}", tmp_path, "victim",
                   MAGICLENS_MINING_FETCH_THREADS="1")
    try:
        wait_for(lambda: sum(p[0] == "mined" for p in _pages(db_url, urls).values()) >= 1, 90,
                 "a first page mined")
        # Each page takes ~1 s of image fetches: kill inside the next one.
        wait_for(lambda: web.requests and web.requests[-1][0].endswith(".png"), 10, "mid-page")
    finally:
        kill(proc)
    before = _pages(db_url, urls)
    assert sum(p[0] == "mined" for p in before.values()) < len(urls)
    proc = _worker(infra_servers, web, topic, f"g-{unique}", tmp_path, "restarted")
    try:
        wait_for(lambda: _all_mined(db_url, urls), 120, "the restarted worker to finish")
    finally:
        stop(proc)
    facts = _integrity(db_url, urls, 4)
    assert facts == {"images": 24, "links": 24, "pairs": 72, "image_events": 24,
                     "pair_events": 6}
    assert {p[1] for p in _pages(db_url, urls).values()} == {1}  # each page mined once


def test_two_workers_in_one_group_split_the_work(infra_servers, web, unique, tmp_path):
    db_url, bootstrap = infra_servers.database_url, infra_servers.kafka_bootstrap
    topic = f"test.mining.split.{unique}"
    urls = _site(web, unique, pages=12, per_page=2, delay_s=0.2)
    tp = pages_topic(MiningSettings(mining_pages_topic=topic))
    ensure_topics(bootstrap, [tp])
    group = f"g-{unique}"
    workers = [_worker(infra_servers, web, topic, group, tmp_path, f"w{i}",
                       MAGICLENS_MINING_FETCH_THREADS="1") for i in range(2)]
    try:
        # both have joined the group: each was given partitions (the later join rebalances
        # the earlier member, so the second assignment logged is the shared one)
        for i, w in enumerate(workers):
            wait_log(tmp_path / f"w{i}.log", "partitions assigned", 60, proc=w)
        producer = make_producer(bootstrap)
        for u in urls:
            publish(producer, tp, u, events_pb2.PageDiscovered(url=u))
        producer.close()
        wait_for(lambda: _all_mined(db_url, urls), 120, "both workers to mine every page")
    finally:
        for w in workers:
            stop(w)
    pages = _pages(db_url, urls)
    by_worker = {p[2] for p in pages.values()}
    assert by_worker == {"w0", "w1"}, by_worker
    assert {p[1] for p in pages.values()} == {1}  # nobody mined a page twice
    assert _integrity(db_url, urls, 2) == {"images": 24, "links": 24, "pairs": 24,
                                           "image_events": 24, "pair_events": 12}


def test_page_submission_is_rate_limited_per_caller(infra_servers, web, unique, tmp_path):
    """Two admin tokens, a bucket of 5 URLs each: the first caller's second request is
    refused with RESOURCE_EXHAUSTED and a retry-after, the second caller is unaffected, and
    refused URLs are not filed."""
    tokens = [f"{who}-admin-token-{unique}" for who in ("alice", "bob")]
    urls = [f"http://127.0.0.1:{web.port}/{unique}/r{i}.html" for i in range(9)]
    port = free_port()
    proc = _worker(infra_servers, web, f"test.mining.pages.{unique}", f"g-{unique}", tmp_path,
                   "limits", grpc_port=port, MAGICLENS_ADMIN_TOKENS=",".join(tokens),
                   MAGICLENS_MINING_SUBMIT_BURST_URLS="5",
                   MAGICLENS_MINING_SUBMIT_URLS_PER_MINUTE="1")
    try:
        wait_for(lambda: _reachable(port, tokens[0]), 60, "the mining gRPC server")
        with rpc.channel(f"127.0.0.1:{port}", token=tokens[0]) as ch:
            alice = mining_pb2_grpc.MiningServiceStub(ch)
            assert alice.SubmitPages(mining_pb2.SubmitPagesRequest(urls=urls[:4]),
                                     timeout=10).accepted == 4
            with pytest.raises(grpc.RpcError) as refused:
                alice.SubmitPages(mining_pb2.SubmitPagesRequest(urls=urls[4:6]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert dict(refused.value.trailing_metadata())["retry-after"] == "60"
        with rpc.channel(f"127.0.0.1:{port}", token=tokens[1]) as ch:
            bob = mining_pb2_grpc.MiningServiceStub(ch)
            assert bob.SubmitPages(mining_pb2.SubmitPagesRequest(urls=urls[6:9]),
                                   timeout=10).accepted == 3
    finally:
        stop(proc)
    assert set(_pages(infra_servers.database_url, urls)) == set(urls[:4] + urls[6:9])


def _reachable(port: int, token: str) -> bool:
    with rpc.channel(f"127.0.0.1:{port}", token=token) as ch:
        try:
            mining_pb2_grpc.MiningServiceStub(ch).GetMiningStatus(
                mining_pb2.GetMiningStatusRequest(), timeout=2)
            return True
        except grpc.RpcError:
            return False
