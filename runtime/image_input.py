"""Validation of images sent to the encoders, the same in the embedding server and in the
search root (which checks a query image before embedding it). No JAX, and no numpy 2: the
Triton server's environment (.venv-triton) imports it too. Limits: runtime/limits.py."""

from __future__ import annotations

import io

from PIL import Image

from runtime.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

MIN_IMAGE_SIDE = 8
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}


class BadInput(ValueError):
    """A client input the model cannot take (bad image, too long instruction)."""


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> RGB PIL image, refusing oversized, tiny, bomb-like or unknown formats."""
    if not data:
        raise BadInput("empty image")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadInput(f"image is {len(data)} bytes; limit {MAX_IMAGE_BYTES}")
    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ALLOWED_FORMATS:
            raise BadInput(f"unsupported image format {img.format}")
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise BadInput(f"image is {w}x{h}; limit {MAX_IMAGE_PIXELS} pixels")
        if min(w, h) < MIN_IMAGE_SIDE:
            raise BadInput(f"image is {w}x{h}; each side must be >= {MIN_IMAGE_SIDE}")
        img.load()
    except BadInput:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadInput(f"cannot decode image ({type(exc).__name__})") from None
    return img.convert("RGB")


