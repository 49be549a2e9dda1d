"""The production handler against real Postgres and a local web server: rejections are
recorded with reasons and the rest of the page is still mined; dedupe; idempotence; WARC."""

from __future__ import annotations

import argparse
import base64
import io
import uuid

import psycopg
from magiclens.v1 import events_pb2
from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from runtime import db
from runtime.bus import Event
from tests.mining.mining_support import mine, noise_image, page_report
from tools.ingest.__main__ import collect


def _images_page(web, unique: str, name: str, imgs: list[str], title: str = "Gallery") -> str:
    body = "".join(imgs)
    return web.add(f"/{unique}/{name}.html",
                   f"<html><head><title>{title}</title></head><body><h1>{title}</h1>"
                   f"<p>Intro text.</p>{body}</body></html>")


def _outbox(url: str, topic: str, key_ids: list[int]) -> list[bytes]:
    with psycopg.connect(url) as conn:
        return [bytes(r[0]) for r in conn.execute(
            "SELECT payload FROM outbox WHERE topic = %s AND msg_key = ANY(%s)",
            (topic, [str(k) for k in key_ids]))]


def test_bad_candidates_are_rejected_with_reasons_and_the_rest_is_mined(make_miner, web,
                                                                        unique, infra_servers):
    good = [web.add(f"/{unique}/good{i}.{ext}", noise_image(f"{unique}{i}", 200, 160, fmt),
                    ctype=ctype)
            for i, (ext, fmt, ctype) in enumerate([("png", "PNG", "image/png"),
                                                   ("jpg", "JPEG", "image/jpeg"),
                                                   ("webp", "WEBP", "image/webp")])]
    inline = "data:image/png;base64," + base64.b64encode(
        noise_image(unique + "inline", 120, 120)).decode()
    bomb = Image.new("1", (9000, 9000))
    buf = io.BytesIO()
    bomb.save(buf, "PNG")
    bad = {
        "corrupt": web.add(f"/{unique}/corrupt.jpg", noise_image(unique, 300, 300, "JPEG")[:900],
                           ctype="image/jpeg"),
        "html": web.add(f"/{unique}/not-image.png", "<html>oops</html>", ctype="text/html"),
        "sniffed": web.add(f"/{unique}/lies.png", "<html>lies</html>", ctype="image/png"),
        "bomb": web.add(f"/{unique}/bomb.png", buf.getvalue(), ctype="image/png"),
        "big": web.add(f"/{unique}/huge.png", b"\x89PNG" + b"0" * 3_000_000, ctype="image/png"),
        "tiny": web.add(f"/{unique}/t.gif", _encoded(Image.new("RGB", (1, 1)), "GIF"),
                        ctype="image/gif"),
        "loop": web.add(f"/{unique}/loop.png", status=302, location=f"/{unique}/loop.png"),
        "missing": f"{web.base}/{unique}/missing.png",
        "private": "http://10.0.0.5/secret.png",
        "loopback": f"http://127.0.0.1:{web.port + 1 if web.port < 65535 else 1}/x.png",
        "ipv6": "http://[::1]/x.png",
        "logo": web.add(f"/{unique}/site-logo.png", noise_image(unique + "logo", 200, 200),
                        ctype="image/png"),
    }
    imgs = [f"<figure><img src='{u}' alt='good {i}'><figcaption>cap {i}</figcaption></figure>"
            for i, u in enumerate(good)]
    imgs += [f"<img src='{u}'>" for u in bad.values()]
    imgs += [f"<img src='{inline}' alt='inline'>", "<img src='javascript:alert(1)'>",
             f"<img src='{good[0]}' alt='again'>",
             f"<img src='{web.base}/{unique}/s.gif' width='1' height='1'>"]
    url = _images_page(web, unique, "mixed", imgs, title="Mixed bag")
    miner = make_miner(web, mining_max_image_bytes=2_000_000, mining_max_image_pixels=20_000_000)
    mine(miner, url)
    rep = page_report(infra_servers.database_url, url)
    assert rep["status"] == "mined" and rep["title"] == "Mixed bag"
    assert [(i[3], i[7], i[8]) for i in rep["images"]] == [
        ("good 0", 200, 160), ("good 1", 200, 160), ("good 2", 200, 160), ("inline", 120, 120)]
    assert rep["images"][0][4] == "cap 0" and rep["images"][0][5] == "Mixed bag — Intro text."
    r = rep["rejections"]
    expect = {"corrupt": "corrupt or truncated", "html": "not an image (content-type 'text/html')",
              "sniffed": "not an image (HTML document)", "bomb": "decompression bomb",
              "big": "too large", "tiny": "spacer/tracking pixel", "loop": "redirect loop",
              "missing": "HTTP 404", "private": "blocked private address 10.0.0.5",
              "loopback": "blocked loopback", "ipv6": "blocked loopback address ::1",
              "logo": "looks like an icon/logo/ad ('logo' in URL)"}
    for key, reason in expect.items():
        assert reason in r[bad[key]], (key, r[bad[key]])
    assert "scheme 'javascript'" in r["javascript:alert(1)"]
    assert "spacer/tracking pixel" in r[f"{web.base}/{unique}/s.gif"]
    # 4 images -> 12 ordered pairs, all distinct; each new image announced once, pairs once.
    assert len(rep["pairs"]) == 12 and len(set(rep["pairs"])) == 12
    ids = [i[0] for i in rep["images"]]
    assert len(_outbox(infra_servers.database_url, "magiclens.images.mined.v1", ids)) == 4
    mined = _outbox(infra_servers.database_url, "magiclens.pairs.mined.v1", [rep["page_id"]])
    assert len(mined) == 1
    assert len(events_pb2.PairsMined.FromString(mined[0]).pair_ids) == 12

    # Re-ingesting the page (a new event id) adds nothing.
    mine(miner, url)
    again = page_report(infra_servers.database_url, url)
    assert again == rep
    assert len(_outbox(infra_servers.database_url, "magiclens.images.mined.v1", ids)) == 4


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_duplicates_across_pages_link_the_existing_image(make_miner, web, unique,
                                                         infra_servers):
    a = noise_image(unique + "a", 256, 256)
    b = noise_image(unique + "b", 256, 256)
    c = noise_image(unique + "c", 256, 256)
    a_jpeg = noise_image(unique + "a", 256, 256, "JPEG", quality=75)  # near-duplicate of a
    ua = web.add(f"/{unique}/a.png", a, ctype="image/png")
    ub = web.add(f"/{unique}/b.png", b, ctype="image/png")
    uc = web.add(f"/{unique}/c.png", c, ctype="image/png")
    ua2 = web.add(f"/{unique}/copy-of-a.png", a, ctype="image/png")      # exact duplicate
    uaj = web.add(f"/{unique}/a.jpg", a_jpeg, ctype="image/jpeg")
    p1 = _images_page(web, unique, "p1", [f"<img src='{ua}'>", f"<img src='{ub}'>"])
    p2 = _images_page(web, unique, "p2", [f"<img src='{ua2}'>", f"<img src='{uaj}'>",
                                          f"<img src='{uc}'>"])
    miner = make_miner(web)
    mine(miner, p1)
    mine(miner, p2)
    r1 = page_report(infra_servers.database_url, p1)
    r2 = page_report(infra_servers.database_url, p2)
    a_id = r1["images"][0][0]
    assert r2["images"][0][0] == a_id  # exact duplicate: same image row
    assert r2["images"][0][6] == r1["page_id"]       # first seen on page 1
    assert len(r2["images"]) == 2                    # near-duplicate collapsed into a
    assert "near-duplicate of image" in r2["rejections"][uaj]  # a (via its copy) came first
    # Pairs on p2: a <-> c both ways, the near-duplicate excluded.
    assert sorted(r2["pairs"]) == sorted([(a_id, r2["images"][1][0]), (r2["images"][1][0], a_id)])
    with psycopg.connect(infra_servers.database_url) as conn:
        n = conn.execute("SELECT count(*) FROM outbox WHERE topic = 'magiclens.images.mined.v1' "
                         "AND msg_key = %s", (str(a_id),)).fetchone()[0]
    assert n == 1  # the reused image is not announced again


def test_page_level_failures_are_recorded(make_miner, web, unique, infra_servers):
    loop = web.add(f"/{unique}/loop.html", status=302, location=f"/{unique}/loop.html")
    pdf = web.add(f"/{unique}/doc.pdf", b"%PDF-1.4", ctype="application/pdf")
    gone = f"{web.base}/{unique}/gone.html"
    internal = "http://192.168.1.1/router.html"
    miner = make_miner(web)
    for u in (loop, pdf, gone, internal):
        mine(miner, u)
    status = {u: page_report(infra_servers.database_url, u) for u in (loop, pdf, gone, internal)}
    assert (status[loop]["status"], status[loop]["reason"]) == (
        "failed", f"redirect loop at {loop}")
    assert status[pdf]["status"] == "skipped" and "application/pdf" in status[pdf]["reason"]
    assert (status[gone]["status"], status[gone]["reason"]) == ("failed", "HTTP 404")
    assert status[internal]["status"] == "skipped" and "private" in status[internal]["reason"]


def test_huge_page_is_truncated_and_still_mined(make_miner, web, unique, infra_servers):
    img = web.add(f"/{unique}/early.png", noise_image(unique, 128, 128), ctype="image/png")
    late = web.add(f"/{unique}/late.png", noise_image(unique + "late", 128, 128),
                   ctype="image/png")
    url = web.add(f"/{unique}/huge.html", f"<title>Huge</title><img src='{img}'>"
                  + "<p>filler</p>" * 20000 + f"<img src='{late}'>")
    mine(make_miner(web, mining_max_html_bytes=100_000), url)
    rep = page_report(infra_servers.database_url, url)
    assert rep["status"] == "mined" and "truncated at 100000 bytes" in rep["reason"]
    assert [i[2] for i in rep["images"]] == [img]


def test_warc_is_mined_without_network(make_miner, settings_for, unique, infra_servers,
                                       tmp_path):
    """Ingest a WARC (HTML + images), then mine with no server running at all."""

    base = f"http://warc-{unique}.example.org/"
    records = {"page.html": ("text/html", (
        b"<title>Archived</title><p>From the archive.</p>"
        b"<img src='img/one.png' alt='one'><img src='img/two.jpg' alt='two'>"
        b"<img src='img/absent.png' alt='not archived'>")),
        "img/one.png": ("image/png", noise_image(unique + "w1", 150, 150)),
        "img/two.jpg": ("image/jpeg", noise_image(unique + "w2", 150, 150, "JPEG"))}
    warc = tmp_path / "t.warc.gz"
    with warc.open("wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for path, (ctype, body) in records.items():
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)],
                                       protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(base + path, "response",
                                                payload=io.BytesIO(body), http_headers=headers))
    settings = settings_for(None)
    args = argparse.Namespace(url=None, sitemap=None, warc=warc, allow_private=False, source="",
                              heldout_file=None, max_pages=100)
    events, problems = collect(args, settings)
    assert [e.url for e in events] == [base + "page.html"] and not problems
    assert "Archived" in events[0].html
    miner = make_miner(None)
    mine(miner, events[0].url, html="")  # even without inline HTML: the archive has it
    rep = page_report(infra_servers.database_url, base + "page.html")
    assert rep["status"] == "mined" and [i[3] for i in rep["images"]] == ["one", "two"]
    assert "cannot resolve" in rep["rejections"][base + "img/absent.png"]


def test_a_page_event_is_trusted_for_its_url_only(make_miner, web, unique, infra_servers):
    """Anyone who can write the page topic could forge HTML, a source and the held-out
    split; the miner takes the URL, fetches the page itself and files it as web/train."""
    imgs = [web.add(f"/{unique}/real{i}.png", noise_image(f"{unique}real{i}", 200, 160),
                    ctype="image/png") for i in range(2)]
    url = _images_page(web, unique, "trust", [f'<img src="{u}" alt="real {i}">'
                                             for i, u in enumerate(imgs)])
    fake = web.add(f"/{unique}/fake.png", noise_image(f"{unique}fake", 200, 160),
                   ctype="image/png")
    miner = make_miner(web)
    forged = events_pb2.PageDiscovered(url=url, html=f'<img src="{fake}" alt="forged">',
                                       source="corpus:demo", split="heldout")
    with db.connect(miner.settings.database_url) as conn, conn.transaction():
        miner.handle(conn, Event("test", url, str(uuid.uuid4()), forged))
    rep = page_report(infra_servers.database_url, url)
    assert rep["status"] == "mined", rep
    assert sorted(i[3] for i in rep["images"]) == ["real 0", "real 1"]
    with psycopg.connect(infra_servers.database_url) as conn:
        assert conn.execute("SELECT source, split FROM pages WHERE url = %s",
                            (url,)).fetchone() == ("web", "train")
