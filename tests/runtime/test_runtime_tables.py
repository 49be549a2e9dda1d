"""The port and limit tables are the ones every reader sees: docs, the web UI, the trainer."""

from __future__ import annotations

import re
from pathlib import Path

from runtime import limits, ports
from services.search.config import RootSettings
from trainer.data import triples as trainer_triples

ROOT = Path(__file__).resolve().parents[2]


def test_docs_show_the_current_port_and_limit_tables():
    doc = (ROOT / "docs" / "runtime.md").read_text()
    assert ports.markdown_table() in doc, "docs/runtime.md is stale: run `task docs:tables`"
    assert limits.markdown_table() in doc, "docs/runtime.md is stale: run `task docs:tables`"


def test_the_web_ui_checks_the_query_image_limit():
    js = (ROOT / "services" / "gateway" / "static" / "app.js").read_text()
    m = re.search(r"const MAX_UPLOAD = (\d+) \* 1024 \* 1024;", js)
    assert m and int(m.group(1)) * 1024 * 1024 == limits.MAX_QUERY_IMAGE_BYTES


def test_the_trainer_reads_everything_the_suite_writes():
    """Its JSONL reader has its own (looser) guards; the suite's limits stay within them."""
    assert limits.MAX_INSTRUCTION_CHARS <= trainer_triples.MAX_INSTRUCTION_CHARS
    assert limits.MAX_IMAGE_PIXELS <= trainer_triples.MAX_IMAGE_PIXELS


def test_the_procfile_serves_the_corpus_where_the_table_says():
    procfile = (ROOT / "Procfile").read_text()
    site = ports.local(ports.CORPUS_SITE.http)
    assert f"--port {ports.CORPUS_SITE.http} " in procfile
    assert f"MAGICLENS_MINING_ALLOW_HOSTS={site} " in procfile
    shards = re.findall(r"^search-shard-\d+: .*--num-shards (\d+)", procfile, re.MULTILINE)
    assert shards and {int(n) for n in shards} == {len(shards)}
    # the search root's default shard list is exactly the shards the Procfile starts
    assert RootSettings.model_fields["shards"].default == ports.shard_addrs(len(shards))
