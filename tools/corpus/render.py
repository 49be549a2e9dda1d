"""Deterministic image rendering and encoding with an on-disk cache.

SVGs go through resvg (self-contained, no system cairo); rasters through Pillow with
explicit decompression-bomb limits because some openclipart PNGs are enormous.
Encoders are called with fixed parameters so the same input gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import resvg_py
from PIL import Image

RENDER_VERSION = "1"
MAX_SOURCE_BYTES = 12 * 1024 * 1024
MAX_PIXELS = 24_000_000  # ~4900x4900; larger clip art is skipped, never decoded


class RenderError(ValueError):
    """The source image could not be rendered safely."""


def svg_to_png(svg: str | bytes, width: int) -> bytes:
    text = svg.decode("utf-8") if isinstance(svg, bytes) else svg
    if len(text) > MAX_SOURCE_BYTES:
        raise RenderError("svg too large")
    try:
        data = bytes(resvg_py.svg_to_bytes(svg_string=text, width=width))
    except (ValueError, RuntimeError) as exc:
        raise RenderError(f"resvg: {exc}") from exc
    # Re-encode through Pillow so every PNG in the corpus uses the same encoder settings.
    return encode(open_image(data), "png")


def image_size(path: str) -> tuple[int, int] | None:
    """Header-only size check, so huge files are rejected before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check below
            with Image.open(path) as im:
                return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def open_image(data: bytes) -> Image.Image:
    if len(data) > MAX_SOURCE_BYTES:
        raise RenderError("image file too large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # own limit below
            im = Image.open(io.BytesIO(data))
        if im.width * im.height > MAX_PIXELS:
            raise RenderError(f"{im.width}x{im.height} exceeds {MAX_PIXELS} pixels")
        im.load()
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise RenderError(f"cannot decode image: {exc}") from exc
    if im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGBA" if ("transparency" in im.info or "A" in im.mode) else "RGB")
    return im


def fit(im: Image.Image, max_side: int) -> Image.Image:
    if max(im.size) <= max_side:
        return im
    scale = max_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS)


def flatten(im: Image.Image, bg: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    if im.mode != "RGBA":
        return im.convert("RGB")
    canvas = Image.new("RGB", im.size, bg)
    canvas.paste(im, mask=im.getchannel("A"))
    return canvas


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, "PNG", compress_level=6)
    elif fmt == "jpg":
        flatten(im).save(buf, "JPEG", quality=88, optimize=False, progressive=False)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=85, method=4)
    else:
        raise ValueError(fmt)
    return buf.getvalue()


def raster(data: bytes, max_side: int, fmt: str) -> bytes:
    return encode(fit(open_image(data), max_side), fmt)


class RenderCache:
    """Content-addressed cache: key -> file under data/cache/render."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str, produce: Callable[[], tuple[bytes, str]]) -> tuple[bytes, str]:
        digest = hashlib.sha256(f"{RENDER_VERSION}|{key}".encode()).hexdigest()
        d = self.root / digest[:2]
        for ext in ("png", "jpg", "webp"):
            p = d / f"{digest}.{ext}"
            if p.is_file():
                return p.read_bytes(), ext
        data, ext = produce()
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{digest}.{ext}.tmp"
        tmp.write_bytes(data)
        tmp.replace(d / f"{digest}.{ext}")
        return data, ext


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
