"""A consumer-group rebalance mid-stream against the real mining service: a second miner
joins while pages flow and is then SIGKILLed; the first takes its partitions back, every
page is mined exactly once, nothing is dead-lettered and the first miner keeps running."""

from __future__ import annotations

import time

from magiclens.v1 import events_pb2

from runtime.bus import ensure_topics, make_producer, publish
from services.mining.config import MiningSettings
from services.mining.handlers import pages_topic
from tests.faults.fault_support import dead_letters
from tests.mining.mining_support import WebServer
from tests.mining.test_mining_service import _all_mined, _integrity, _pages, _site, _worker
from tests.support.processes import kill, stop, wait_for


class _Infra:
    """The session's servers with a private database; Kafka, not the reconciler, delivers
    the pages here (the reconciler waits 20 s before it re-derives a pending page)."""

    def __init__(self, base) -> None:
        self.base, self.kafka_bootstrap = base, base.kafka_bootstrap

    def env(self, **extra: str) -> dict[str, str]:
        return self.base.env(**{**extra, "MAGICLENS_MINING_RECONCILE_MIN_AGE_S": "20"})


def test_a_miner_joining_and_dying_mid_stream_loses_and_duplicates_nothing(
        infra_servers, fresh_db, unique, tmp_path):
    infra = _Infra(type(infra_servers)(fresh_db, infra_servers.kafka_bootstrap))
    bootstrap = infra.kafka_bootstrap
    web = WebServer()
    topic = f"test.faults.rebalance.{unique}"
    tp = pages_topic(MiningSettings(mining_pages_topic=topic))
    ensure_topics(bootstrap, [tp])
    urls = _site(web, unique, pages=16, per_page=2, delay_s=0.2)
    group = f"g-{unique}"
    slow = {"MAGICLENS_MINING_FETCH_THREADS": "1"}
    first = _worker(infra, web, topic, group, tmp_path, "w0", **slow)
    second = None
    producer = make_producer(bootstrap)
    try:
        for u in urls[:8]:
            publish(producer, tp, u, events_pb2.PageDiscovered(url=u))
        wait_for(lambda: any(p[0] == "mined" for p in _pages(fresh_db, urls).values()), 60,
                 "the first miner to start", proc=first, log=tmp_path / "w0.log")
        second = _worker(infra, web, topic, group, tmp_path, "w1", **slow)
        time.sleep(8)  # it joins: the group rebalances while the first miner is busy
        for u in urls[8:]:
            publish(producer, tp, u, events_pb2.PageDiscovered(url=u))
        wait_for(lambda: any(p[2] == "w1" for p in _pages(fresh_db, urls).values()), 60,
                 "the second miner to take partitions", proc=second, log=tmp_path / "w1.log")
        kill(second)  # leaves without a goodbye: its partitions come back after the session
        wait_for(lambda: _all_mined(fresh_db, urls), 120, "every page to be mined",
                 proc=first, log=tmp_path / "w0.log")
        assert first.poll() is None, "the first miner stopped"
    finally:
        producer.close()
        if second is not None:
            stop(second)
        code = stop(first)
        web.close()
    pages = _pages(fresh_db, urls)
    assert {p[1] for p in pages.values()} == {1}  # mined once each
    assert _integrity(fresh_db, urls, 2) == {"images": 32, "links": 32, "pairs": 32,
                                             "image_events": 32, "pair_events": 16}
    assert dead_letters(fresh_db, "mining") == []
    assert code == 0
