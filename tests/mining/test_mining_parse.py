"""HTML edge cases: every way a page can name an image, broken markup, caps."""

from __future__ import annotations

import pytest

from services.mining.htmlparse import parse_page, parse_srcset

PAGE = """<!doctype html><html><head><title>Birds of the coast</title>
<base href="https://cdn.example.org/media/"></head><body>
<h1>Shore birds</h1>
<p>Gulls and terns nest on the cliffs.</p>
<figure><img src="gull-small.jpg" srcset="gull-480.jpg 480w, gull-1200.jpg 1200w, gull-800.jpg 800w"
  alt="A herring gull" title="Gull"><figcaption>A gull in flight</figcaption></figure>
<picture>
  <source type="image/avif" srcset="tern.avif 2000w">
  <source type="image/webp" srcset="tern-640.webp 640w, tern-1600.webp 1600w">
  <img src="tern.jpg" alt="Arctic tern">
</picture>
<h2>Waders</h2><p>Oystercatchers probe the sand.</p>
<img class="lazyload"
  src="data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="
  data-src="/abs/oystercatcher.png" alt="Oystercatcher">
<img data-srcset="curlew@1x.jpg 1x, curlew@2x.jpg 2x" alt="curlew">
<img src="javascript:alert(1)"><img src="ftp://files.example.org/a.png">
<img src="gull-small.jpg#again">
<img src="//other.example.net/x.jpg" width="300" height="200">
</body></html>"""


def test_every_image_form_resolves_to_the_largest_absolute_url():
    page = parse_page(PAGE, "https://www.example.org/birds/index.html", max_images=50)
    assert page.title == "Birds of the coast"
    urls = [c.url for c in page.candidates]
    assert urls == [
        "https://cdn.example.org/media/gull-1200.jpg",          # srcset: largest width
        "https://cdn.example.org/media/tern-1600.webp",         # picture: skip AVIF, largest
        "https://cdn.example.org/abs/oystercatcher.png",        # lazy data-src over placeholder
        "https://cdn.example.org/media/curlew@2x.jpg",          # data-srcset densities
        "https://cdn.example.org/media/gull-small.jpg",         # fragment dropped
        "https://other.example.net/x.jpg",                      # scheme-relative
    ]
    reasons = {r.url.split(":")[0]: r.reason for r in page.rejected}
    assert "scheme 'javascript'" in reasons["javascript"]
    assert "scheme 'ftp'" in reasons["ftp"]
    gull = page.candidates[0]
    assert (gull.alt, gull.title, gull.caption) == ("A herring gull", "Gull", "A gull in flight")
    assert gull.context == "Shore birds — Gulls and terns nest on the cliffs."
    assert page.candidates[2].context == "Waders — Oystercatchers probe the sand."
    assert [c.position for c in page.candidates] == list(range(6))
    assert (page.candidates[5].declared_w, page.candidates[5].declared_h) == (300, 200)


def test_srcset_parsing_handles_commas_in_urls_and_missing_descriptors():
    assert parse_srcset("a.jpg, b.jpg 2x") == [("a.jpg", 1e-3), ("b.jpg", 2e-3)]
    assert parse_srcset("img,v=1.jpg 100w, c.jpg 50w")[0] == ("img,v=1.jpg", 100.0)
    assert parse_srcset("") == []


def test_broken_markup_still_yields_images():
    html = ("<html><title>Broken</title><body><div><p>unclosed <b>bold <img src=a.png alt=one>"
            "<table><tr><td><img src='b.png' alt='two'></div></span></p><img src=c.png>")
    page = parse_page(html, "http://example.org/x/", max_images=10)
    assert [c.url for c in page.candidates] == [
        "http://example.org/x/a.png", "http://example.org/x/b.png", "http://example.org/x/c.png"]
    assert page.title.startswith("Broken")


def test_non_html_garbage_and_empty_documents_do_not_raise():
    assert parse_page(b"", "http://example.org/", 10).candidates == []
    assert parse_page(b"\x00\xff\xfe binary", "http://example.org/", 10).candidates == []


def test_charset_is_honoured_for_text_before_the_meta_tag():
    """A <title> before <meta charset> was decoded as Latin-1 ('Computer â\x80\x94 ...')."""
    late = ("<html><head><title>Computer — clip art gallery</title><meta charset='utf-8'>"
            "</head><body><figure><img src='a.png' alt='Café'><figcaption>naïve — art"
            "</figcaption></figure></body></html>").encode()
    page = parse_page(late, "http://example.org/", 5)
    assert page.title == "Computer — clip art gallery"
    assert (page.candidates[0].alt, page.candidates[0].caption) == ("Café", "naïve — art")
    legacy = "<title>Café</title><meta http-equiv='Content-Type' content='text/html; " \
        "charset=iso-8859-1'><img src='a.png' alt='Zürich'>"
    page = parse_page(legacy.encode("latin-1"), "http://example.org/", 5)
    assert (page.title, page.candidates[0].alt) == ("Café", "Zürich")
    undeclared = parse_page("<title>Crème brûlée</title>".encode(), "http://example.org/", 5)
    assert undeclared.title == "Crème brûlée"  # no charset named: UTF-8 when it decodes
    xml = parse_page(b"<?xml version='1.0' encoding='utf-8'?><html><title>X \xe2\x80\x94 Y"
                     b"</title></html>", "http://example.org/", 5)
    assert xml.title == "X — Y"


def test_image_cap_rejects_the_rest_with_a_reason():
    html = "".join(f"<img src='i{i}.png'>" for i in range(12))
    page = parse_page(html, "http://example.org/", max_images=5)
    assert len(page.candidates) == 5
    assert len(page.rejected) == 7
    assert all("per-page cap of 5" in r.reason for r in page.rejected)


# A generous liveness bound (a quadratic parser would blow it), not a speed claim
# (well under 1 s here).
@pytest.mark.timeout(120)
def test_huge_page_is_parsed_to_its_end():
    filler = "<p>" + "lorem ipsum " * 50 + "</p>"
    html = "<title>Huge</title>" + filler * 8000 + "<img src='end.png' alt='last'>"
    page = parse_page(html, "http://example.org/", max_images=5)
    assert [c.alt for c in page.candidates] == ["last"]
