"""Image validation: formats, corrupt/truncated files, decompression bombs, SVG, junk rules."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from runtime.near_duplicates import hamming
from services.mining import svgrender
from services.mining.imaging import (
    Policy,
    Rejection,
    decode_data_uri,
    decode_image,
    junk_reason,
)
from tests.mining.mining_support import noise_image

POLICY = Policy(max_pixels=4_000_000)
ROOT = Path(__file__).resolve().parents[2]


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                      ("WEBP", "image/webp"), ("BMP", "image/bmp"),
                                      ("GIF", "image/gif")])
def test_allowed_formats_decode_and_hash(fmt, mime):
    data = noise_image("fmt", 200, 150, fmt)
    d = decode_image(data, POLICY)
    assert (d.mime, d.width, d.height) == (mime, 200, 150)
    assert len(d.content_hash) == 64 and -(1 << 63) <= d.phash < (1 << 63)
    assert d.data == data  # originals are stored as downloaded


def test_animated_gif_uses_the_first_frame():
    frames = [Image.open(io.BytesIO(noise_image(f"g{i}", 100, 100))).convert("P")
              for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    first = decode_image(buf.getvalue(), POLICY)
    alone = decode_image(_encoded(frames[0], "GIF"), POLICY)
    assert hamming(first.phash, alone.phash) <= 2


def test_reencoded_copy_is_a_near_duplicate_and_other_images_are_not():
    a = decode_image(noise_image("same", 256, 256), POLICY)
    b = decode_image(noise_image("same", 256, 256, "JPEG", quality=70), POLICY)
    c = decode_image(noise_image("other", 256, 256), POLICY)
    assert a.content_hash != b.content_hash
    assert hamming(a.phash, b.phash) <= 4 < hamming(a.phash, c.phash)


def _png_with_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def test_decompression_bomb_is_rejected_from_the_header():
    with pytest.raises(Rejection, match="decompression bomb"):
        decode_image(_png_with_header(60000, 60000), POLICY)


def test_pillow_bomb_warning_is_turned_into_a_rejection(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(Rejection, match="decompression bomb"):
        decode_image(noise_image("bomb", 150, 100), Policy(max_pixels=10**9))


@pytest.mark.parametrize("name,data,why", [
    ("truncated jpeg", noise_image("t", 300, 300, "JPEG")[:2000], "corrupt or truncated"),
    ("truncated png", noise_image("t", 300, 300)[:3000], "corrupt or truncated"),
    ("garbage after magic", b"\x89PNG\r\n\x1a\n" + b"\x13" * 500, "corrupt or truncated"),
    ("png header lies", _png_with_header(500, 500), "corrupt or truncated"),
    ("html", b"<!DOCTYPE html><html><body>404</body></html>", "not an image"),
    ("text", b"just some text", "not an image of an allowed format"),
    ("empty", b"", "not an image of an allowed format"),
    ("tiff", _encoded(Image.new("RGB", (100, 100)), "TIFF"), "not an image of an allowed"),
])
def test_broken_and_non_images_are_rejected(name, data, why):
    with pytest.raises(Rejection, match=why):
        decode_image(data, POLICY)


@pytest.mark.parametrize("w,h,why", [(1, 1, "tracking pixel"), (40, 40, "too small"),
                                     (900, 100, "aspect ratio 9.0"),
                                     (64, 400, "aspect ratio 6.2")])
def test_size_and_aspect_rules(w, h, why):
    with pytest.raises(Rejection, match=why):
        decode_image(_encoded(Image.new("RGB", (w, h), (10, 200, 30)), "PNG"), POLICY)


SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="100" height="80" viewBox="0 0 100 80">'
       '<rect width="100" height="80" fill="#3a6"/><circle cx="50" cy="40" r="30" fill="#fc0"/>'
       '</svg>')


def test_svg_is_rasterised_to_png():
    d = decode_image(SVG.encode(), POLICY)
    assert d.mime == "image/png" and (d.width, d.height) == (512, 410)
    assert Image.open(io.BytesIO(d.data)).format == "PNG"


@pytest.mark.parametrize("svg,why", [
    (SVG.replace("<circle", '<image href="http://169.254.169.254/x.png" width="9" height="9"/>'
                 '<circle'), "external reference"),
    (SVG.replace("<circle", '<image xlink:href="file:///etc/passwd"/><circle'),
     "external reference"),
    ('<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaa">]>' + SVG, "DOCTYPE"),
    (SVG.replace('fill="#3a6"', 'style="fill:url(http://evil.example/p.svg#g)"'),
     "external reference"),
    ("<svg>" + "<g>" * 10 + "not closed", "SVG render failed"),
])
def test_unsafe_or_broken_svg_is_refused(svg, why):
    with pytest.raises(Rejection, match=why):
        decode_image(svg.encode(), POLICY)


def test_oversized_svg_is_refused():
    big = SVG.replace("</svg>", "<!--" + "x" * 2_000_000 + "--></svg>")
    with pytest.raises(Rejection, match="SVG larger than"):
        decode_image(big.encode(), POLICY)


@pytest.mark.parametrize("url,classes,alt,hit", [
    ("https://x.org/static/site-logo.png", "", "", "logo"),
    ("https://x.org/img/icons/star.png", "", "", "icons"),
    ("https://ads.x.org/serve/banner_728.gif", "", "", "ads"),
    ("https://x.org/serve/banner_728.gif", "", "", "banner"),
    ("https://x.org/spacer.gif", "", "", "spacer"),
    ("https://x.org/t.gif?pixel=1", "", "", None),            # query strings are not read
    ("https://x.org/p/1.png", "ad-slot", "", "ad"),
    ("https://x.org/p/2.png", "", "Company logo", "logo"),
    ("https://x.org/uploads/2024/heads.jpg", "", "Bighead lads", None),  # tokens, not substrings
    ("https://x.org/img/iconic-bridge.jpg", "photo", "", None),
])
def test_junk_keyword_rule(url, classes, alt, hit):
    reason = junk_reason(url, classes, alt)
    assert (reason is None) if hit is None else (f"'{hit}'" in reason)


def test_data_uris():
    png = noise_image("d", 100, 100)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    assert decode_data_uri(uri, 1_000_000) == (png, "image/png")
    with pytest.raises(Rejection, match="larger than"):
        decode_data_uri(uri, 1000)
    with pytest.raises(Rejection, match="malformed"):
        decode_data_uri("data:image/png;base64", 1000)


def test_own_pixel_limit_applies_before_pillow_would_decode(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**12)  # Pillow would happily decode
    with pytest.raises(Rejection, match="decompression bomb: 30000x30000 exceeds"):
        decode_image(_png_with_header(30000, 30000), POLICY)


NARROW = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1 1000">'
          '<rect width="1" height="1000" fill="red"/></svg>')


@pytest.mark.parametrize("svg,why", [
    (NARROW, "aspect ratio 1000.0"),  # 512 x 512,000 px if rendered
    ('<svg xmlns="http://www.w3.org/2000/svg" width="5000" height="1">'
     '<rect width="1" height="1"/></svg>', "aspect ratio 5000.0"),
    ('<svg xmlns="http://www.w3.org/2000/svg" width="2" viewBox="0 0 1 900"/>', "aspect ratio"),
    # A decoy root in a comment does not hide the real one.
    ('<?xml version="1.0"?><!-- <svg width="100" height="100"> -->' + NARROW,
     "aspect ratio 1000.0"),
    ('<svg xmlns="http://www.w3.org/2000/svg" width="calc(1px)" height="9"/>', "unreadable"),
    ('<?xml version="1.0"?><html><svg width="1" height="1"/></html>',
     "root element is not <svg>"),
])
def test_svg_canvas_is_checked_before_rendering(svg, why):
    with pytest.raises(Rejection, match=why):
        decode_image(svg.encode(), POLICY)


def test_svg_render_pixel_cap():
    tall = SVG.replace('height="80" viewBox="0 0 100 80"', 'height="300" viewBox="0 0 100 300"')
    assert decode_image(tall.encode(), POLICY).height == 1536  # 512 x 1536 is within both caps
    with pytest.raises(Rejection, match="exceeds 500,000"):
        decode_image(tall.encode(), Policy(max_pixels=4_000_000, max_svg_render_pixels=500_000))


def test_narrow_svg_keeps_the_process_small():
    """The 1x1000 viewBox once took a miner from 132 MB to 2.18 GB of RSS. In a child
    process, decoding it and then a normal SVG stays under 300 MB of peak RSS (VmHWM: it
    starts afresh at exec, whereas ru_maxrss keeps the peak of the forked test process)."""
    code = (
        "import re\n"
        "from services.mining.imaging import Policy, Rejection, decode_image\n"
        f"narrow, ok = {NARROW.encode()!r}, {SVG.encode()!r}\n"
        "try:\n    decode_image(narrow, Policy())\n    print('accepted')\n"
        "except Rejection as e:\n    print('rejected:', e)\n"
        "print('rendered', decode_image(ok, Policy()).width)\n"
        "status = open('/proc/self/status').read()\n"
        "print('maxrss_kb', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, check=True).stdout
    assert "rejected: SVG aspect ratio 1000.0" in out and "rendered 512" in out, out
    maxrss_mb = int(out.split("maxrss_kb")[1]) / 1024
    print(f"child peak RSS {maxrss_mb:.1f} MB")
    assert maxrss_mb < 300, out


def test_svg_render_runs_under_a_memory_cap():
    """A render the canvas checks let through (here: the limits raised to allow a 16k x 16k
    render, 1 GiB of pixels) is refused by the render child's 256 MiB cap, the test process
    (the miner) never grows, and the next SVG renders in a fresh child."""
    huge = Policy(max_pixels=4_000_000, svg_render_px=16_384,
                  max_svg_render_pixels=300_000_000, svg_memory_cap_bytes=256 << 20)
    renderer = svgrender.renderer_for(huge.svg_memory_cap_bytes, huge.svg_render_timeout_s)
    restarts = renderer.restarts
    rss_before = _rss_mb()
    with pytest.raises(Rejection, match="exceeded the 256 MiB memory cap"):
        decode_image(SVG.encode(), huge)
    assert _rss_mb() - rss_before < 100
    assert renderer.restarts == restarts + 1
    small = dataclasses.replace(huge, svg_render_px=512)  # same renderer, a fresh child
    assert decode_image(SVG.encode(), small).width == 512


def test_svg_render_time_limit():
    """A render that outlives its time limit is killed and refused."""
    renderer = svgrender.SvgRenderer(timeout_s=0.5)
    try:
        blur = ('<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
                '<filter id="f"><feGaussianBlur stdDeviation="40"/></filter>'
                + '<rect width="100" height="100" fill="#3a6" filter="url(#f)"/>' * 3000
                + '</svg>')
        with pytest.raises(svgrender.RenderRefused, match=r"longer than 0\.5 s"):
            renderer.render(blur, 4096)
        assert renderer.render(SVG, 64)[:4] == b"\x89PNG"
    finally:
        renderer.close()


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
