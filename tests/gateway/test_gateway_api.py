"""Gateway JSON API and image serving against the real PostgreSQL and blob store.

Search itself is pointed at a port nothing listens on: these tests cover validation and the
degraded mode (503); results against the real search root are in test_gateway_browser.py.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys

import httpx
import pytest

from tests.gateway.gwutil import build_pool, running_gateway
from tests.support.processes import ROOT, free_port, start, stop, wait_log

UPLOAD_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def gw(fresh_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("gw")
    ids = build_pool(fresh_db, root)
    examples = root / "examples.json"
    examples.write_text(json.dumps({"examples": [
        {"image_id": ids["chelsea"], "instruction": "the same cat as a drawing",
         "title": "cat → drawing"},
        {"image_id": ids["rocket"], "instruction": "other vehicles that fly"}]}))
    settings = {"database_url": fresh_db, "blob_uri": f"file://{root / 'blobs'}",
                "search_addr": f"127.0.0.1:{free_port()}", "gateway_examples_file": examples,
                "gateway_max_upload_bytes": UPLOAD_LIMIT, "gateway_status_timeout_s": 1.0}
    with running_gateway(**settings) as base, httpx.Client(base_url=base, timeout=20) as client:
        yield client, ids, root, examples


def test_pages_and_static(gw):
    client = gw[0]
    for path, ctype in (("/", "text/html"), ("/status", "text/html"),
                        ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]
    for bad in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/nope.js",
                "/static/app.py", "/etc/passwd"):
        assert client.get(bad).status_code == 404, bad


def test_images_by_id(gw):
    client, ids, root, _ = gw
    r = client.get(f"/images/{ids['coffee']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == (root / "photos" / "coffee.jpg").read_bytes()
    assert r.headers["x-content-type-options"] == "nosniff"
    for bad in ("abc", "0", "-3", "1.5", "99999999999999999999", "%00"):
        assert client.get(f"/images/{bad}").status_code == 400, bad
    r = client.get(f"/images/{max(ids.values()) + 1000}")
    assert r.status_code == 404 and "no image" in r.json()["error"]


def test_pool_sample(gw):
    client, ids, _, _ = gw
    images = client.get("/api/pool", params={"n": 50}).json()["images"]
    assert {im["image_id"] for im in images} == set(ids.values())
    coffee = next(im for im in images if im["image_id"] == ids["coffee"])
    assert coffee["caption"] == "a cup of coffee" and coffee["src"] == f"/images/{ids['coffee']}"
    assert coffee["page_url"].startswith("https://upload.magiclens.invalid/")
    assert len(client.get("/api/pool", params={"n": 2}).json()["images"]) == 2
    for n in ("0", "1000", "x"):
        assert client.get("/api/pool", params={"n": n}).status_code == 400


def test_examples(gw):
    client, ids, _, path = gw
    ex = client.get("/api/examples").json()["examples"]
    assert ex[0] == {"image_id": ids["chelsea"], "instruction": "the same cat as a drawing",
                     "title": "cat → drawing"}
    assert ex[1]["title"] == "other vehicles that fly"
    original = path.read_text()
    try:
        path.write_text('[{"image_id": "seven"}]')
        r = client.get("/api/examples")
        assert r.status_code == 500 and "positive integer image_id" in r.json()["error"]
        path.unlink()
        assert client.get("/api/examples").json() == {"examples": []}
    finally:
        path.write_text(original)


def test_search_validation(gw):
    client, ids, _, _ = gw
    big = b"\xff" * (UPLOAD_LIMIT + 1)
    r = client.post("/api/search", params={"q": "x"}, content=big,
                    headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    cases = [
        ("get", {"params": {"image_id": "abc"}}, 400),
        ("get", {"params": {"image_id": ids["coffee"], "k": "0"}}, 400),
        ("get", {"params": {"image_id": ids["coffee"], "k": "1000"}}, 400),
        ("get", {"params": {"image_id": ids["coffee"], "q": "x" * 1001}}, 400),
        ("get", {"params": {"q": "no image"}}, 400),
        ("post", {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
         400),
        ("post", {"json": {}}, 400),
        ("post", {"json": {"instruction": "  "}}, 400),
        ("post", {"json": {"image_url": "ftp://x/y.jpg", "instruction": "x"}}, 400),
        ("post", {"json": {"image_url": "file:///etc/passwd"}}, 400),
        # the client reads a plain string as a local path: a web request must never reach it
        ("post", {"json": {"image_url": "/etc/passwd", "instruction": "x"}}, 400),
        ("post", {"json": {"image_id": ids["coffee"], "k": "5"}}, 400),
        ("post", {"json": {"image_id": True}}, 400),
        ("get", {"params": {"image_id": ids["coffee"], "include_query_image": "maybe"}}, 400),
        ("post", {"json": {"image_id": ids["coffee"], "include_query_image": "yes"}}, 400),
        ("post", {"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415),
        ("post", {"content": b"", "headers": {"Content-Type": "image/png"}}, 400),
    ]
    for method, kwargs, status in cases:
        r = getattr(client, method)("/api/search", **kwargs)
        assert r.status_code == status, (kwargs, r.text)
        assert r.json()["error"]


def _raw_post(client: httpx.Client, headers: str) -> socket.socket:
    """A connection to the gateway with a POST /api/search head already sent."""
    s = socket.create_connection((client.base_url.host, client.base_url.port), timeout=30)
    s.sendall(f"POST /api/search HTTP/1.1\r\nHost: gw\r\n{headers}\r\n".encode())
    return s


def _response(s: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one answer on s (the gateway closes the connection)."""
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_upload_bodies_are_limited_as_they_stream(gw):
    client, _, root, _ = gw
    data = (root / "photos" / "coffee.jpg").read_bytes()[:UPLOAD_LIMIT]
    # Chunked (no Content-Length) and within the limit: read whole and sent on to search
    # (down here: 503 says it got that far).
    r = client.post("/api/search", content=iter([data[:1000], data[1000:]]),
                    headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 503 and r.json()["search_available"] is False, r.text
    # Neither a length nor chunked: 411, as before.
    with _raw_post(client, "Content-Type: image/jpeg\r\n") as s:
        status, body = _response(s)
    assert status == 411 and "Content-Length" in body["error"]
    # Chunked past the limit: refused as soon as the limit is passed, long before the client
    # would have finished (it stops sending once the answer is there).
    total = 0
    with _raw_post(client, "Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n") as s:
        piece = b"%x\r\n%s\r\n" % (8192, b"\xff" * 8192)
        with contextlib.suppress(OSError):  # the server may close while we still send
            while total < 200 * UPLOAD_LIMIT and not select.select([s], [], [], 0)[0]:
                s.sendall(piece)
                total += 8192
        status, body = _response(s)
    assert status == 413 and "limit" in body["error"]
    assert total < 200 * UPLOAD_LIMIT


def test_search_down_is_503_and_health_says_so(gw):
    client, ids, root, _ = gw
    r = client.get("/api/search", params={"image_id": ids["coffee"], "q": "a mug"})
    assert r.status_code == 503
    body = r.json()
    assert body["search_available"] is False and "127.0.0.1:" in body["error"]
    r = client.post("/api/search", params={"q": "a mug"},
                    content=(root / "photos" / "coffee.jpg").read_bytes()[:UPLOAD_LIMIT],
                    headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 503
    # An instruction without an image is not refused here: it goes to the search root (the
    # root decides whether text alone is a query), which is down in this test.
    r = client.post("/api/search", json={"instruction": "a red mug", "k": 3})
    assert r.status_code == 503 and r.json()["search_available"] is False, r.text
    health = client.get("/api/health").json()
    assert health["search"]["available"] is False


def test_status(gw):
    client, ids, _, _ = gw
    st = client.get("/api/status").json()
    assert st["database"] == {"available": True}
    assert st["counts"]["images"] == {"mined": len(ids)}
    assert st["counts"]["pages"] == {"mined": 1}
    assert st["models"] == [] and st["search"]["available"] is False


def test_status_with_database_down():
    with running_gateway(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x",
                         search_addr=f"127.0.0.1:{free_port()}",
                         gateway_status_timeout_s=1.0) as base:
        st = httpx.get(f"{base}/api/status", timeout=20).json()
        assert st["database"]["available"] is False and "unreachable" in st["database"]["error"]
        r = httpx.get(f"{base}/api/pool", timeout=20)
        assert r.status_code == 503
        assert httpx.get(f"{base}/images/5", timeout=20).status_code == 503


def test_entry_point_serves_and_stops_on_sigterm(infra_servers, tmp_path):
    port = free_port()
    env = infra_servers.env(MAGICLENS_GATEWAY_PORT=str(port),
                            MAGICLENS_SEARCH_ADDR=f"127.0.0.1:{free_port()}",
                            PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}")
    log = tmp_path / "gateway.log"
    proc = start("services.gateway", env=env, log=log)
    try:
        wait_log(log, "\n", 60, proc=proc)
        line = log.read_text().splitlines()[0]
        assert f"serving http://127.0.0.1:{port}/" in line, line
        assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=10).status_code == 200
    finally:
        code = stop(proc, 10)
    assert code == 0
    # An address this machine does not own (TEST-NET-3): one line, exit 1.
    bad = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=ROOT,
                         env={**env, "MAGICLENS_GATEWAY_HOST": "203.0.113.1"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("gateway: cannot listen on 203.0.113.1:")
    assert len(bad.stderr.strip().splitlines()) == 1
