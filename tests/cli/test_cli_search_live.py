"""`magiclens search --json` against the real search root (needs the running stack).

This depends on services.search (the search root and shards) and on an index to query: it
skips, saying which is missing, until both exist. Start the stack (e.g. `./taskw demo`) and
set MAGICLENS_TEST_SEARCH_ADDR (e.g. 127.0.0.1:50055) to run it.
"""

from __future__ import annotations

import json
import os

import pytest

from services.cli import backends
from services.cli.main import main
from services.runtime import db


def live_search(database_url: str) -> tuple[str, int]:
    """(search address, an indexed image id), or skip with the reason."""
    if not backends.is_built("search"):
        pytest.skip("depends on services.search (the search root), which is not built yet")
    addr = os.environ.get("MAGICLENS_TEST_SEARCH_ADDR")
    if not addr:
        pytest.skip("set MAGICLENS_TEST_SEARCH_ADDR to a running search root with an index")
    with db.connect(database_url) as conn:
        row = conn.execute("SELECT image_id FROM image_embeddings ORDER BY image_id "
                           "LIMIT 1").fetchone()
    if row is None:
        pytest.skip("no embedded images in the pool yet")
    return addr, row["image_id"]


def test_search_json_shape(infra_servers, monkeypatch, capsys):
    addr, image_id = live_search(infra_servers.database_url)
    monkeypatch.setenv("MAGICLENS_SEARCH_ADDR", addr)
    code = main(["search", "--image", str(image_id), "-q", "the same thing", "-k", "5",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"model_version", "partial", "missing_shards", "hits"}
    assert data["model_version"] and 1 <= len(data["hits"]) <= 5
    scores = [h["score"] for h in data["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert set(data["hits"][0]) == {"image_id", "image_url", "score", "page_url", "page_title",
                                    "alt_text", "caption"}


def test_search_unknown_image_is_one_line(infra_servers, monkeypatch, capsys):
    addr, _ = live_search(infra_servers.database_url)
    monkeypatch.setenv("MAGICLENS_SEARCH_ADDR", addr)
    assert main(["search", "--image", str(2**62), "-q", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("magiclens: search service: ")
