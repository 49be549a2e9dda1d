"""Poison records against the real mining service: a JSON record nested 200k deep (it once
crash-looped the consumer with RecursionError), a URL of 1,020 characters but 3,020 bytes
(one of 6 KB once wedged mining on a btree index) and undecodable protobuf are dead-lettered
with their reason; the pages around them are mined exactly once; the service keeps running."""

from __future__ import annotations

import json

import psycopg
from kafka import KafkaProducer

from runtime.bus import ensure_topics
from tests.faults.fault_support import dead_letters, page_topic
from tests.mining.mining_support import WebServer, noise_image
from tests.support.processes import start, stop, wait_for

PER_PAGE = 2


def _site(web: WebServer, unique: str, pages: int) -> list[str]:
    urls = []
    for p in range(pages):
        imgs = "".join(f"<img src='/{unique}/p{p}/i{i}.png' alt='img {p}.{i}'>"
                       for i in range(PER_PAGE))
        for i in range(PER_PAGE):
            web.add(f"/{unique}/p{p}/i{i}.png", noise_image(f"{unique}-{p}-{i}", 96, 96),
                    ctype="image/png")
        urls.append(web.add(f"/{unique}/p{p}.html", f"<title>Page {p}</title>{imgs}"))
    return urls


def _facts(url: str, urls: list[str]) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        one = lambda sql, *a: conn.execute(sql, a).fetchone()[0]  # noqa: E731
        return {
            "pages": one("SELECT count(*) FROM pages"),
            "mined": one("SELECT count(*) FROM pages WHERE status = 'mined' AND url = ANY(%s)",
                         urls),
            "links": one("SELECT count(*) FROM page_images"),
            "images": one("SELECT count(*) FROM images"),
            "image_events": one("SELECT count(*) FROM outbox "
                                "WHERE topic = 'magiclens.images.mined.v1'"),
            "processed": one("SELECT count(*) FROM processed_events WHERE consumer = 'mining'"),
        }


def test_poison_records_are_dead_lettered_and_mining_goes_on(infra_servers, fresh_db, unique,
                                                              tmp_path):
    web = WebServer()
    bootstrap = infra_servers.kafka_bootstrap
    topic = f"test.faults.pages.{unique}"
    ensure_topics(bootstrap, [page_topic(topic)])
    urls = _site(web, unique, pages=3)
    log = tmp_path / "mining.log"
    proc = start("services.mining", log=log, env=infra_servers.env(
        DATABASE_URL=fresh_db, MAGICLENS_MINING_PAGES_TOPIC=topic,
        MAGICLENS_MINING_GROUP=f"g-{unique}", MAGICLENS_MINING_ALLOW_HOSTS=f"127.0.0.1:{web.port}",
        MAGICLENS_BLOB_URI=f"file://{tmp_path}/blobs", MAGICLENS_GRPC_PORT="0",
        MAGICLENS_METRICS_PORT="0", MAGICLENS_MINING_PER_HOST_DELAY_S="0"))
    deep = b'{"url": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    wide_url = f"http://127.0.0.1:{web.port}/{unique}/" + "\u20ac" * 1000
    records = [
        (urls[0], json.dumps({"url": urls[0]}).encode(), "application/json"),
        ("deep", deep, "application/json"),
        ("wide", json.dumps({"url": wide_url}).encode(), "application/json"),
        ("garbage", b"\xff\xff\xff\xff", "application/x-protobuf"),
        (urls[1], json.dumps({"url": urls[1]}).encode(), "application/json"),
        (urls[2], json.dumps({"url": urls[2]}).encode(), "application/json"),
    ]
    try:
        raw = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=2_000_000)
        for key, value, ctype in records:
            # one partition: the good pages after the poison must get past it
            raw.send(topic, key=key.encode(), value=value, partition=0,
                     headers=[("content-type", ctype.encode())]).get(10)
        raw.close()
        wait_for(lambda: _facts(fresh_db, urls)["mined"] == 3, 90,
                 "the pages after the poison records to be mined", proc=proc, log=log)
        wait_for(lambda: _facts(fresh_db, urls)["processed"] == len(records), 30,
                 "every record to be recorded once", proc=proc, log=log)
        letters = dead_letters(fresh_db, "mining")
        assert proc.poll() is None, "the mining service stopped"
    finally:
        code = stop(proc)
        web.close()
    reasons = sorted(d["error"] for d in letters)
    assert len(letters) == 3, reasons
    assert any("nested deeper than" in r for r in reasons), reasons
    assert any("bytes in UTF-8" in r for r in reasons), reasons
    assert any("invalid protobuf" in r for r in reasons), reasons
    assert {d["topic"] for d in letters} == {topic}
    # 0 lost, 0 duplicated: exactly the good pages, each image and its event once.
    assert _facts(fresh_db, urls) == {"pages": 3, "mined": 3, "links": 3 * PER_PAGE,
                                      "images": 3 * PER_PAGE, "image_events": 3 * PER_PAGE,
                                      "processed": len(records)}
    assert code == 0
