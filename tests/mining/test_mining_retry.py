"""A page whose host does not resolve (real resolver, RFC 6761 `.invalid`) is failed, not
skipped for good: the reconciler tries it again once its back-off has passed, up to the
attempt limit."""

from __future__ import annotations

from runtime.bus import Consumer
from services.mining.config import MiningSettings
from services.mining.handlers import pages_topic
from services.mining.miner import Miner
from tests.mining.mining_support import mine, page_report


def test_a_dns_failure_is_retried_with_backoff_not_skipped(infra_servers, fresh_db, unique,
                                                           tmp_path):
    settings = MiningSettings(DATABASE_URL=fresh_db,
                              KAFKA_BOOTSTRAP_SERVERS=infra_servers.kafka_bootstrap,
                              blob_uri=f"file://{tmp_path / 'blobs'}",
                              mining_retry_backoff_s=0, mining_reconcile_min_age_s=0,
                              mining_max_attempts=3)
    miner = Miner(settings, worker_id="test")
    consumer = Consumer("mining", settings.kafka_bootstrap_servers, fresh_db,
                        [pages_topic(settings)], miner.handle, reconciler=miner.reconcile)
    url = f"http://pages-{unique}.invalid/page.html"
    try:
        mine(miner, url)
        first = page_report(fresh_db, url)
        assert (first["status"], first["attempts"]) == ("failed", 1)
        assert "cannot resolve" in first["reason"]
        assert consumer.reconcile() == 1  # back-off over: tried again
        assert consumer.reconcile() == 1
        assert consumer.reconcile() == 0  # the attempts are spent
    finally:
        miner.close()
    last = page_report(fresh_db, url)
    assert (last["status"], last["attempts"]) == ("failed", 3)
