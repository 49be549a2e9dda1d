"""What "the same image" means to the suite: exact bytes (sha256), or a near-duplicate by
perceptual hash AND colour. The miner merges near-duplicates on ingestion with it; the search
root drops the query image's copies from results with it, so both agree on what a copy is.

Pure functions over Pillow images and stored values (Postgres BIGINT phash, 192-byte colour
signature). Imports imagehash (scipy), so not for the Triton server's environment.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import imagehash
from PIL import Image

# Largest pHash Hamming distance (of 64 bits) still called a near-duplicate.
PHASH_THRESHOLD = 6
# Largest 8x8-cell colour difference (0-255) still called a near-duplicate: re-encodes and
# resizes stay under ~10; skin-tone and recolour variants differ by 30+.
COLOUR_THRESHOLD = 20
COLOUR_SIG_BYTES = 192


@dataclass(frozen=True)
class Fingerprint:
    """An image as the duplicate rules see it."""

    content_hash: str  # sha256 hex of the bytes as received
    phash: int         # signed 64-bit, as Postgres BIGINT stores it
    colour_sig: bytes  # 8x8 RGB cell means (192 bytes)


_ALPHA_MODES = ("RGBA", "LA", "P", "PA")


def flatten(img: Image.Image) -> Image.Image:
    """Transparent images on white, as a browser shows them."""
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def phash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash of a flattened image, signed as Postgres BIGINT stores it."""
    value = int(str(imagehash.phash(img, hash_size=8)), 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def colour_signature(img: Image.Image) -> bytes:
    """8x8 cell means per RGB channel: cheap, and sees what greyscale pHash cannot."""
    return img.resize((8, 8), Image.Resampling.BOX).tobytes()


def colour_distance(a: bytes, b: bytes) -> int:
    """Largest per-cell colour difference (mean over channels, 0-255); 0 when unknown."""
    if len(a) != COLOUR_SIG_BYTES or len(b) != COLOUR_SIG_BYTES:
        return 0
    return max(sum(abs(a[i + c] - b[i + c]) for c in range(3)) // 3
               for i in range(0, COLOUR_SIG_BYTES, 3))


def hamming(a: int, b: int) -> int:
    return bin((a ^ b) & ((1 << 64) - 1)).count("1")


def near(phash_a: int, sig_a: bytes, phash_b: int, sig_b: bytes,
         phash_threshold: int = PHASH_THRESHOLD, colour_threshold: int = COLOUR_THRESHOLD
         ) -> bool:
    """Near-duplicate: the same structure (pHash) AND the same colours (skin tones and
    recolourings are different images, not copies)."""
    return (hamming(phash_a, phash_b) <= phash_threshold
            and colour_distance(sig_a, sig_b) <= colour_threshold)


def fingerprint(data: bytes, rgb: Image.Image | None = None) -> Fingerprint:
    """The fingerprint of image bytes, already validated by the caller (this decodes without
    further checks). `rgb`, the caller's own `convert("RGB")` of them, saves a second decode
    when the image has no transparency (then it equals the flattened image)."""
    img = Image.open(io.BytesIO(data))  # lazy: the header only, until load()
    if rgb is None or img.mode in _ALPHA_MODES or "transparency" in img.info:
        img.seek(0)  # animations: the first frame, as the miner hashes it
        img.load()
        rgb = flatten(img)
    return Fingerprint(hashlib.sha256(data).hexdigest(), phash(rgb), colour_signature(rgb))


def warm_up() -> None:
    """Import the pHash DCT (scipy) once, up front, not inside the first request's threads."""
    phash(Image.new("RGB", (32, 32)))
