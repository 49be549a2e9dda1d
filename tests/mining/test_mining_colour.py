"""Near-duplicate = same structure AND same colours: colour variants are kept apart."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw
from skimage import data

from runtime import image_input
from runtime.near_duplicates import colour_distance, colour_signature, fingerprint, hamming
from runtime.near_duplicates import flatten as _flatten
from runtime.near_duplicates import phash as _phash
from services.mining.imaging import Policy, decode_image


def _face(skin: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((20, 20, 140, 140), fill=(*skin, 255))
    draw.ellipse((55, 60, 70, 75), fill=(40, 30, 20, 255))
    draw.ellipse((90, 60, 105, 75), fill=(40, 30, 20, 255))
    draw.arc((50, 80, 110, 120), 20, 160, fill=(90, 40, 30, 255), width=5)
    return _flatten(img)


def test_skin_tone_variants_share_structure_but_not_colour():
    light, dark = _face((247, 222, 206)), _face((120, 80, 50))
    assert hamming(_phash(light), _phash(dark)) <= 10  # pHash alone would merge them
    assert colour_distance(colour_signature(light), colour_signature(dark)) > 20


def test_reencoded_and_resized_copies_stay_near_duplicates():
    photo = Image.fromarray(data.chelsea()).convert("RGB")
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=60)
    copy = _flatten(Image.open(io.BytesIO(buf.getvalue())))
    small = photo.resize((photo.width // 3, photo.height // 3))
    for other in (copy, small):
        assert colour_distance(colour_signature(photo), colour_signature(other)) <= 5
        assert hamming(_phash(photo), _phash(other)) <= 6


def test_search_roots_fingerprint_equals_what_the_miner_stores():
    """The search root fingerprints query bytes with the runtime's rule, reusing its own RGB
    decode when the image has no transparency: the same values the miner stores."""
    photo = Image.fromarray(data.chelsea()).convert("RGB")
    face = Image.new("RGBA", (120, 120), (0, 0, 0, 0))
    ImageDraw.Draw(face).ellipse((10, 10, 110, 110), fill=(200, 60, 60, 255))
    for img, fmt in ((photo, "JPEG"), (photo, "PNG"), (face, "PNG"), (face.convert("P"), "GIF")):
        buf = io.BytesIO()
        img.save(buf, fmt)
        raw = buf.getvalue()
        mined = decode_image(raw, Policy())
        for fp in (fingerprint(raw), fingerprint(raw, image_input.decode_image(raw))):
            assert (fp.content_hash, fp.phash, fp.colour_sig) == (
                mined.content_hash, mined.phash, mined.colour_sig), fmt
