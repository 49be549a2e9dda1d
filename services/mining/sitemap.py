"""Expand a sitemap (or a nested sitemap index) into page URLs, with hard limits.

XML from the web is parsed without DTDs, entities or network access; gzip sitemaps are
decompressed with a cap (a 50 MB sitemap is the protocol's own maximum).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from urllib.parse import urljoin

from lxml import etree

MAX_SITEMAP_BYTES = 50 * 1024 * 1024


class SitemapError(ValueError):
    pass


def _xml(body: bytes, max_bytes: int) -> etree._Element:
    if body[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=io.BytesIO(body)) as gz:
            try:
                body = gz.read(max_bytes + 1)
            except (OSError, EOFError) as exc:
                raise SitemapError(f"bad gzip sitemap ({exc})") from None
        if len(body) > max_bytes:
            raise SitemapError(f"sitemap larger than {max_bytes} bytes once decompressed")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False, remove_comments=True)
    try:
        return etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise SitemapError(f"invalid sitemap XML ({exc})") from None


def _locs(root: etree._Element, kind: str) -> list[str]:
    out = []
    for el in root.iter():
        if isinstance(el.tag, str) and etree.QName(el).localname == kind:
            for child in el:
                if isinstance(child.tag, str) and etree.QName(child).localname == "loc" \
                        and child.text:
                    out.append(child.text.strip())
    return out


def expand(url: str, get: Callable[[str], bytes], *, max_urls: int = 50_000,
           max_sitemaps: int = 100, max_depth: int = 3,
           max_bytes: int = MAX_SITEMAP_BYTES) -> tuple[list[str], list[str]]:
    """(page URLs in order, problems). `get(url)` fetches one sitemap's bytes."""
    pages: list[str] = []
    problems: list[str] = []
    seen_maps: set[str] = set()
    seen_pages: set[str] = set()
    queue = [(url, 0)]
    while queue and len(pages) < max_urls:
        current, depth = queue.pop(0)
        if current in seen_maps:
            continue
        if len(seen_maps) >= max_sitemaps:
            problems.append(f"{current}: over the limit of {max_sitemaps} sitemaps")
            continue
        seen_maps.add(current)
        try:
            root = _xml(get(current), max_bytes)
        except Exception as exc:  # one bad child sitemap must not lose the others
            problems.append(f"{current}: {exc}")
            continue
        if etree.QName(root).localname == "sitemapindex":
            if depth >= max_depth:
                problems.append(f"{current}: sitemap index nested deeper than {max_depth}")
                continue
            queue += [(urljoin(current, loc), depth + 1) for loc in _locs(root, "sitemap")]
            continue
        for loc in _locs(root, "url"):
            page = urljoin(current, loc)
            if page not in seen_pages:
                seen_pages.add(page)
                pages.append(page)
                if len(pages) >= max_urls:
                    problems.append(f"stopped at the limit of {max_urls} URLs")
                    break
    return pages, problems
