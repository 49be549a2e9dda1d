"""The web UI in headless Chromium: a query given by URL parameters renders in the page.

- degraded: search is down → the banner says so, the pool grid still renders real images;
- live: against the real search root (services.search) with an index → result cards render.
  Skips, naming what is missing, until the search root runs (MAGICLENS_TEST_SEARCH_ADDR).
Screenshots go to data/screenshots/ (ui-down.png, ui.png).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from gwutil import build_pool, free_port, running_gateway

from services.cli import backends
from services.runtime import db

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "data" / "screenshots"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium (apt-get install -y chromium)")


def chromium(url: str, *, screenshot: Path | None = None, budget_ms: int = 8000) -> str:
    """Load url headless; return the DOM after scripts ran (and optionally screenshot it)."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--window-size=1280,900",
               f"--virtual-time-budget={budget_ms}"]
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            cmd.append(f"--screenshot={screenshot}")
        else:
            cmd.append("--dump-dom")
        proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_ui_degraded_when_search_is_down(fresh_db, tmp_path):
    ids = build_pool(fresh_db, tmp_path)
    with running_gateway(database_url=fresh_db, blob_uri=f"file://{tmp_path / 'blobs'}",
                         search_addr=f"127.0.0.1:{free_port()}",
                         gateway_status_timeout_s=1.0) as base:
        url = f"{base}/?" + urlencode({"image_id": ids["chelsea"], "q": "as a drawing"})
        dom = chromium(url)
        shot = SHOTS / "ui-down.png"
        chromium(url, screenshot=shot)
        status_dom = chromium(f"{base}/status")
    banner = re.search(r'<div id="banner" class="banner">([^<]*)</div>', dom)
    assert banner and banner.group(1).startswith("Search is unavailable:"), dom[:3000]
    picks = set(map(int, re.findall(r'class="card pick" data-image-id="(\d+)"', dom)))
    assert picks == set(ids.values())
    assert f'src="/images/{ids["chelsea"]}"' in dom  # the chosen query image is shown
    assert 'class="card result"' not in dom
    assert shot.stat().st_size > 10_000
    assert re.search(r"<td>images</td><td>6</td><td>mined 6</td>", status_dom), status_dom[:3000]
    assert "Search is unavailable" in status_dom


def test_ui_renders_results_from_the_real_search_root(infra_servers):
    if not backends.is_built("search"):
        pytest.skip("depends on services.search (the search root), which is not built yet")
    addr = os.environ.get("MAGICLENS_TEST_SEARCH_ADDR")
    if not addr:
        pytest.skip("set MAGICLENS_TEST_SEARCH_ADDR to a running search root with an index")
    with db.connect(infra_servers.database_url) as conn:
        row = conn.execute("SELECT image_id FROM image_embeddings ORDER BY image_id "
                           "LIMIT 1").fetchone()
    if row is None:
        pytest.skip("no embedded images in the pool yet")
    with running_gateway(database_url=infra_servers.database_url, search_addr=addr) as base:
        url = f"{base}/?" + urlencode({"image_id": row["image_id"], "q": "the same thing",
                                       "k": 12})
        dom = chromium(url, budget_ms=20000)
        chromium(url, screenshot=SHOTS / "ui.png", budget_ms=20000)
        image = httpx.get(f"{base}/images/{row['image_id']}", timeout=30)
        assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
        up = httpx.post(f"{base}/api/search", params={"q": "", "k": 3}, content=image.content,
                        headers={"Content-Type": image.headers["content-type"]}, timeout=60)
        assert up.status_code == 200 and 1 <= len(up.json()["hits"]) <= 3, up.text
        assert row["image_id"] not in [h["image_id"] for h in up.json()["hits"]]  # itself
        gone = httpx.get(f"{base}/api/search", params={"image_id": 2**62}, timeout=30)
        assert gone.status_code == 404, gone.text
    results = re.findall(r'class="card result" data-image-id="(\d+)"', dom)
    assert 1 <= len(results) <= 12, dom[:3000]
    scores = [float(s) for s in re.findall(r'<span class="score">([-\d.]+)</span>', dom)]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(results)
    assert 'id="banner" class="banner" hidden' in dom
