"""Find a page's images and the text around them, with lxml (tolerant of broken markup).

Each candidate carries what later stages need: the absolute URL (srcset/picture: the
largest rendition; lazy-loading attributes preferred over placeholders), alt/title,
figcaption, the nearest preceding heading and paragraph, the page title and its position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import lxml.html
from lxml import etree

TEXT_CAP = 600
PRESCAN_BYTES = 4096  # where a <meta charset> is looked for (HTML's own prescan: 1024)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]{1,40})""", re.I)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")
_WS = re.compile(r"\s+")
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


@dataclass
class Candidate:
    url: str                     # absolute http(s) URL, or a data: URI
    position: int
    alt: str = ""
    title: str = ""
    caption: str = ""
    context: str = ""
    classes: str = ""            # class/id tokens, for the ad/logo rules
    declared_w: int | None = None
    declared_h: int | None = None


@dataclass
class Rejected:
    url: str
    reason: str


@dataclass
class ParsedPage:
    title: str
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _text(el: etree._Element | None) -> str:
    if el is None:
        return ""
    return _WS.sub(" ", el.text_content()).strip()[:TEXT_CAP]


def _int_attr(el: etree._Element, name: str) -> int | None:
    v = (el.get(name) or "").strip().removesuffix("px")
    return int(v) if v.isdigit() and len(v) < 7 else None


def parse_srcset(value: str) -> list[tuple[str, float]]:
    """`url 640w, url2 2x` → [(url, weight)]; widths beat densities (w in px, x × 1e-3)."""
    out = []
    for part in re.split(r",\s+(?=\S)", value.strip()) if value else []:
        bits = part.strip().split()
        if not bits:
            continue
        url, weight = bits[0].rstrip(","), 1e-3
        if len(bits) > 1:
            d = bits[1].lower()
            try:
                weight = float(d[:-1]) if d.endswith("w") else float(d[:-1]) * 1e-3
            except ValueError:
                weight = 1e-3
        out.append((url, weight))
    return out


def _largest(srcset: str) -> str:
    options = parse_srcset(srcset)
    return max(options, key=lambda o: o[1])[0] if options else ""


def _pick_src(img: etree._Element) -> str:
    """The URL a browser would end up showing at its largest, lazy attributes first."""
    options: list[tuple[str, float]] = []
    # libxml2's HTML parser does not know <source> is void and may nest the <img> in it.
    picture = next(img.iterancestors("picture"), None)
    if picture is not None:
        for source in picture.iter("source"):
            kind = (source.get("type") or "").lower()
            if kind and kind not in ("image/jpeg", "image/png", "image/webp", "image/gif",
                                     "image/bmp", "image/svg+xml"):
                continue  # e.g. AVIF/JXL: formats we do not decode
            options += parse_srcset(source.get("data-srcset") or source.get("srcset") or "")
    options += parse_srcset(img.get("data-srcset") or img.get("srcset") or "")
    if options:
        return max(options, key=lambda o: o[1])[0]
    for attr in ("data-src", "data-lazy-src", "data-original", "src"):
        v = (img.get(attr) or "").strip()
        if v and not (attr == "src" and v.startswith("data:") and img.get("data-src")):
            return v
    return ""


def _context(img: etree._Element) -> tuple[str, str]:
    """(figcaption, nearest preceding heading + paragraph)."""
    caption = ""
    for anc in img.iterancestors():
        if anc.tag == "figure":
            caption = _text(anc.find(".//figcaption"))
            break
    heading = img.xpath("preceding::*[self::h1 or self::h2 or self::h3 or self::h4 "
                        "or self::h5 or self::h6][1]")
    para = img.xpath("preceding::p[1]")
    if not para:
        para = img.xpath("following::p[1]")
    bits = [_text(heading[0]) if heading else "", _text(para[0]) if para else ""]
    return caption, " — ".join(b for b in bits if b)[:TEXT_CAP]


def decode_html(data: bytes) -> str:
    """Bytes -> text before parsing: a BOM, else a <meta charset> anywhere in the first
    PRESCAN_BYTES, else UTF-8 if it decodes, else Windows-1252. libxml2 alone decodes what
    precedes a late <meta charset> (e.g. a <title> before it) as Latin-1: mojibake titles."""
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"),
                       (b"\xfe\xff", "utf-16-be")):
        if data.startswith(bom):
            return data[len(bom):].decode(codec, errors="replace")
    m = _META_CHARSET.search(data[:PRESCAN_BYTES])
    if m:
        name = m.group(1).decode("ascii", "replace").lower()
        codec = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
                 "us-ascii": "cp1252", "ascii": "cp1252"}.get(name, name)  # as browsers do
        try:
            return data.decode(codec, errors="replace")
        except LookupError:
            pass  # an unknown charset name: guess below
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def parse_page(html: bytes | str, page_url: str, max_images: int) -> ParsedPage:
    """Parse (possibly broken) HTML; never raises for bad markup, only for empty documents."""
    text = decode_html(html) if isinstance(html, bytes) else html
    text = _XML_DECL.sub("", text, count=1)  # lxml refuses text with an encoding declaration
    try:
        doc = lxml.html.document_fromstring(text)
    except (etree.ParserError, ValueError):
        return ParsedPage(title="")
    title = _text(doc.find(".//title")) or next(
        (m.get("content", "") for m in doc.iter("meta") if m.get("property") == "og:title"), "")
    base = page_url
    base_el = doc.find(".//base[@href]")
    if base_el is not None:
        base = urljoin(page_url, base_el.get("href", "").strip())
    page = ParsedPage(title=title[:TEXT_CAP])
    seen: set[str] = set()
    for img in doc.iter("img"):
        raw = _pick_src(img)
        if not raw:
            continue
        if raw.startswith("data:"):
            url = raw
        else:
            url = urljoin(base, raw)
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                page.rejected.append(Rejected(url[:500], f"scheme '{scheme}' not allowed"))
                continue
            url = url.split("#")[0]
        if url in seen:
            continue
        seen.add(url)
        if len(page.candidates) >= max_images:
            page.rejected.append(Rejected(url[:500], f"over the per-page cap of {max_images}"))
            continue
        caption, context = _context(img)
        classes = " ".join(filter(None, (img.get("class"), img.get("id"))))
        page.candidates.append(Candidate(
            url=url, position=len(page.candidates), alt=(img.get("alt") or "").strip()[:TEXT_CAP],
            title=(img.get("title") or "").strip()[:TEXT_CAP], caption=caption, context=context,
            classes=classes, declared_w=_int_attr(img, "width"),
            declared_h=_int_attr(img, "height")))
    return page
