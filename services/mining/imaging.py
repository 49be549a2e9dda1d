"""Decide whether downloaded bytes are a usable photo-like image, and hash them.

Rules (each rejection names the rule):
- format allow-list by magic bytes: JPEG, PNG, WebP, GIF (first frame), BMP; SVG is
  rasterised with resvg (size-capped, no DOCTYPE/entities, no external references), and
  only after its canvas is read from the root element: an aspect ratio beyond max_aspect or
  a render beyond max_svg_render_pixels is refused before any pixel is allocated (a 1×1000
  viewBox rendered 512 px wide is 512×512,000 pixels: 2.2 GB of RSS in one image); the
  render itself runs in a child process under a memory cap and a time limit (svgrender);
- decompression bombs: the pixel count from the header is checked against a limit *before*
  decoding, and Pillow's own bomb warning/error is turned into a rejection;
- `verify()` then a fresh open + `load()` catches truncated and corrupt files;
- too small (short side < min_side; 1×1–16×16 are called tracking/spacer pixels) and extreme
  aspect ratios (banners, dividers) are rejected;
- URL path / class / id / alt tokens such as logo, icon, sprite, ads, banner, pixel,
  tracking mark icons, logos and ads (checked before downloading).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import time
import warnings
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from lxml import etree
from PIL import Image, ImageFile, UnidentifiedImageError

from runtime.limits import MAX_IMAGE_PIXELS
from runtime.near_duplicates import colour_signature, flatten, phash
from services.mining import svgrender

ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                   "GIF": "image/gif", "BMP": "image/bmp"}
JUNK_TOKENS = {"logo", "logos", "icon", "icons", "favicon", "sprite", "sprites", "ad", "ads",
               "advert", "adverts", "advertisement", "banner", "banners", "pixel", "tracking",
               "tracker", "spacer", "beacon", "badge", "badges", "emoticon"}
_TOKEN = re.compile(r"[a-z0-9]+")
ImageFile.LOAD_TRUNCATED_IMAGES = False


class Rejection(ValueError):
    """The image is not used; the message is the recorded reason."""


@dataclass
class Policy:
    max_pixels: int = MAX_IMAGE_PIXELS
    min_side: int = 64
    max_aspect: float = 4.0
    max_svg_bytes: int = 1024 * 1024
    svg_render_px: int = 512
    max_svg_render_pixels: int = 4 * 1024 * 1024
    svg_memory_cap_bytes: int = svgrender.DEFAULT_MEMORY_CAP_BYTES  # the render child's
    svg_render_timeout_s: float = svgrender.DEFAULT_TIMEOUT_S
    max_data_uri_bytes: int = 256 * 1024


@dataclass
class Decoded:
    data: bytes            # bytes to store (original, or PNG for rasterised SVG)
    mime: str
    width: int
    height: int
    content_hash: str      # sha256 of the bytes as downloaded
    phash: int             # signed 64-bit, as Postgres BIGINT stores it
    colour_sig: bytes = b""  # 8x8 RGB cell means (192 bytes), see colour_distance


def junk_reason(url: str, classes: str, alt: str) -> str | None:
    """Keyword rule for icons/logos/ads; tokens, so 'uploads' does not match 'ads'."""
    path = ""
    if not url.startswith("data:"):
        parts = urlsplit(url)
        path = f"{parts.hostname or ''} {unquote(parts.path)}".lower()
    for where, text in (("URL", path), ("class/id", classes.lower()), ("alt", alt.lower())):
        hit = JUNK_TOKENS.intersection(_TOKEN.findall(text))
        if hit:
            return f"looks like an icon/logo/ad ('{sorted(hit)[0]}' in {where})"
    return None


def declared_size_reason(w: int | None, h: int | None, min_side: int) -> str | None:
    """Width/height attributes of 1–16 px mark spacers and tracking pixels: skip the download."""
    if w is not None and h is not None and 0 < min(w, h) <= 16:
        return f"declared {w}x{h}: spacer/tracking pixel"
    return None


def decode_data_uri(uri: str, max_bytes: int) -> tuple[bytes, str]:
    head, sep, payload = uri.partition(",")
    if not sep:
        raise Rejection("malformed data: URI")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise Rejection(f"data: URI larger than {max_bytes} bytes")
    mime = head[5:].split(";")[0].lower()
    try:
        data = base64.b64decode(payload, validate=False) if ";base64" in head \
            else unquote(payload).encode()
    except (binascii.Error, ValueError):
        raise Rejection("undecodable data: URI") from None
    return data, mime


def sniff(data: bytes) -> str:
    head = data[:512].lstrip()
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM":
        return "BMP"
    low = head.lower()
    if low.startswith(b"<svg") or (low.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG"
    if low.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    return "unknown"


# CSS absolute units in px (usvg's table); em/ex at the default 16 px font.
_UNITS = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54,
          "in": 96.0, "em": 16.0, "ex": 8.0}
_LENGTH = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-z%]*)\s*$")
SVG_DEFAULT_SIZE = 100.0  # what usvg takes for a missing or relative width/height


def _length(value: str | None) -> float | None:
    """An absolute length in px; None when missing or relative (percent)."""
    if value is None:
        return None
    m = _LENGTH.match(value)
    if m is None:
        raise Rejection("SVG with an unreadable width/height")
    number, unit = float(m.group(1)), m.group(2).lower()
    if unit == "%":
        return None
    if unit not in _UNITS:
        raise Rejection("SVG with an unreadable width/height")
    return number * _UNITS[unit]


def _root_element(text: str):
    """The document's root element, parsed by a real XML parser (a commented-out decoy
    `<svg>` before the real one is skipped), without entities, DTDs or the network."""
    parser = etree.XMLPullParser(events=("start",), resolve_entities=False, no_network=True,
                                 load_dtd=False, huge_tree=False)
    try:
        for i in range(0, len(text), 8192):
            parser.feed(text[i:i + 8192])
            for _, element in parser.read_events():
                if element.tag.rsplit("}", 1)[-1] != "svg":
                    raise Rejection("SVG whose root element is not <svg>")
                return element
    except etree.XMLSyntaxError:
        raise Rejection("SVG that is not well-formed XML") from None
    raise Rejection("SVG without a root element")


def svg_canvas(text: str) -> tuple[float, float]:
    """The root element's size in px as resvg sizes its canvas: width/height when absolute,
    else the viewBox's (a missing side follows the viewBox's aspect), else 100."""
    root = _root_element(text)
    attrs = {str(k).rsplit("}", 1)[-1].lower(): v for k, v in root.attrib.items()}
    w, h = _length(attrs.get("width")), _length(attrs.get("height"))
    box = None
    if "viewbox" in attrs:
        parts = re.split(r"[\s,]+", attrs["viewbox"].strip())
        try:
            vb = [float(p) for p in parts]
        except ValueError:
            vb = []
        if len(vb) == 4 and vb[2] > 0 and vb[3] > 0:
            box = (vb[2], vb[3])
    if w is None and h is None:
        return box or (SVG_DEFAULT_SIZE, SVG_DEFAULT_SIZE)
    if w is None:
        w = h * box[0] / box[1] if box else SVG_DEFAULT_SIZE
    if h is None:
        h = w * box[1] / box[0] if box else SVG_DEFAULT_SIZE
    if w <= 0 or h <= 0:
        raise Rejection("SVG with a non-positive width/height")
    return w, h


def _check_svg_canvas(text: str, policy: Policy) -> None:
    """Refuse, before rendering, a canvas whose render would be extreme or too large."""
    w, h = svg_canvas(text)
    aspect = max(w, h) / min(w, h)
    if aspect > policy.max_aspect:
        raise Rejection(f"SVG aspect ratio {aspect:.1f} > {policy.max_aspect} (not rendered)")
    pixels = policy.svg_render_px * policy.svg_render_px * h / w
    if pixels > policy.max_svg_render_pixels:
        raise Rejection(f"SVG render of {pixels:,.0f} px exceeds "
                        f"{policy.max_svg_render_pixels:,} (not rendered)")


def _rasterise_svg(data: bytes, policy: Policy) -> bytes:
    if len(data) > policy.max_svg_bytes:
        raise Rejection(f"SVG larger than {policy.max_svg_bytes} bytes")
    text = data.decode("utf-8", errors="replace")
    low = text.lower()
    if "<!doctype" in low or "<!entity" in low:
        raise Rejection("SVG with DOCTYPE/entities refused")
    for m in re.finditer(r"href\s*=\s*[\"']\s*([^\"'\s]*)", text, flags=re.I):
        if not m.group(1).startswith(("#", "data:")):
            raise Rejection("SVG with external reference refused")
    if re.search(r"url\(\s*['\"]?(?!#)", text, flags=re.I) or "@import" in low:
        raise Rejection("SVG with external reference refused")
    _check_svg_canvas(text, policy)
    renderer = svgrender.renderer_for(policy.svg_memory_cap_bytes, policy.svg_render_timeout_s)
    try:
        return renderer.render(text, policy.svg_render_px)
    except svgrender.RenderRefused as exc:
        raise Rejection(str(exc)) from None


def decode_image(data: bytes, policy: Policy, timings: dict[str, float] | None = None
                 ) -> Decoded:
    """Validate and hash; raises Rejection with the rule that failed."""
    t0 = time.perf_counter()
    content_hash = hashlib.sha256(data).hexdigest()
    kind = sniff(data)
    store, mime = data, ""
    if kind == "SVG":
        store, mime = _rasterise_svg(data, policy), "image/png"
        kind = "PNG"
    elif kind == "HTML":
        raise Rejection("not an image (HTML document)")
    elif kind not in ALLOWED_FORMATS:
        raise Rejection("not an image of an allowed format (JPEG/PNG/WebP/GIF/BMP/SVG)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(store), formats=[kind]) as probe:
                w, h = probe.size
                if w * h > policy.max_pixels:
                    raise Rejection(f"decompression bomb: {w}x{h} exceeds {policy.max_pixels} px")
                probe.verify()
            img = Image.open(io.BytesIO(store), formats=[kind])
            img.seek(0)  # GIF/WebP animations: the first frame only
            img.load()
    except Rejection:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejection(f"decompression bomb ({exc})"[:200]) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Rejection(f"corrupt or truncated image ({type(exc).__name__})") from None
    mime = mime or ALLOWED_FORMATS[kind]
    if min(w, h) <= 16:
        raise Rejection(f"{w}x{h}: spacer/tracking pixel")
    if min(w, h) < policy.min_side:
        raise Rejection(f"too small: {w}x{h} (short side < {policy.min_side})")
    if max(w, h) / min(w, h) > policy.max_aspect:
        raise Rejection(f"aspect ratio {max(w, h) / min(w, h):.1f} > {policy.max_aspect} "
                        "(banner/divider)")
    t1 = time.perf_counter()
    flat = flatten(img)  # the duplicate rules are the runtime's: the search root uses them too
    ph, sig = phash(flat), colour_signature(flat)
    img.close()
    if timings is not None:
        timings["decode"] = timings.get("decode", 0.0) + (t1 - t0)
        timings["hash"] = timings.get("hash", 0.0) + (time.perf_counter() - t1)
    return Decoded(store, mime, w, h, content_hash, ph, sig)
