"""The web UI in headless Chromium: a query given by URL parameters renders in the page.

- degraded: search is down → the banner says so, the pool grid still renders real images;
- live: tests/serving/test_serving_search.py::test_web_ui_renders_a_real_result_grid runs the
  same page against the real search root, shards and Triton of the serving test cluster.
Screenshots go to data/screenshots/ (ui-down.png, ui.png).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.gateway.gwutil import CHROMIUM, build_pool, chromium, running_gateway
from tests.support.processes import free_port

SHOTS = Path(__file__).resolve().parents[2] / "data" / "screenshots"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium (apt-get install -y chromium)")


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
