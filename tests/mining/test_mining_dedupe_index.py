"""The miner's indexed near-duplicate look-up (multi-index hashing of the pHash, migration
0011) finds exactly what the full scan it replaced finds, on real images and their copies
and on hashes at the threshold's edge spread over the bands, and the planner uses the band
indexes for it."""

from __future__ import annotations

import io
import random

import psycopg
import pytest
from PIL import Image, ImageEnhance
from skimage import data

from runtime import db
from runtime.near_duplicates import PHASH_THRESHOLD, fingerprint, hamming
from services.mining import store

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "moon", "page",
          "text", "horse", "clock", "hubble_deep_field", "immunohistochemistry", "retina",
          "cat", "grass", "gravel", "brick", "colorwheel", "logo", "cell")


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _variants(img: Image.Image) -> list[bytes]:
    """Copies the web makes of an image: re-encodes, resizes, a crop, small edits."""
    w, h = img.size
    return [_jpeg(img, 92), _jpeg(img, 40), _jpeg(img.resize((w // 2, h // 2)), 85),
            _jpeg(img.crop((w // 40, h // 40, w - w // 40, h - h // 40)), 85),
            _jpeg(img.rotate(2), 85), _jpeg(ImageEnhance.Brightness(img).enhance(1.15), 85),
            _jpeg(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 85)]


def _spread(phash: int, per_band: tuple[int, int, int, int], rng: random.Random) -> int:
    """`phash` with per_band[i] bits flipped in band i (band 0 = the high 16 bits)."""
    mask = 0
    for band, n in zip(store.PHASH_BANDS, per_band, strict=True):
        for bit in rng.sample(range(16), n):
            mask |= 1 << (band + bit)
    value = (phash & ((1 << 64) - 1)) ^ mask
    return value - (1 << 64) if value >= 1 << 63 else value


# Distances at the default threshold's edge (6) spread so that no band, or exactly one, is
# equal: an exact-band-match scheme with four bands misses the first kind.
SPREADS = [(1, 1, 1, 1), (2, 2, 1, 1), (1, 2, 2, 1), (2, 2, 2, 0), (2, 2, 2, 1), (0, 3, 3, 0),
           (6, 0, 0, 0), (2, 1, 2, 2), (3, 1, 1, 1), (2, 2, 2, 2), (3, 3, 1, 0)]


@pytest.fixture(scope="module")
def pool(fresh_db):
    """(stored phashes, query phashes): real photos, their copies and edge-distance hashes."""
    rng = random.Random(16)
    photos = [Image.fromarray(getattr(data, n)()).convert("RGB") for n in PHOTOS]
    stored: list[int] = []
    queries: list[int] = []
    rows = []
    for i, photo in enumerate(photos):
        variants = [fingerprint(b) for b in _variants(photo)]
        # the first copies are in the pool; the rest arrive as new images (queries)
        for fp in variants[:4]:
            rows.append((fp.content_hash, fp.phash, fp.colour_sig))
        queries += [fp.phash for fp in variants]
        for j, spread in enumerate(SPREADS):  # edge rows around each stored photo's hash
            ph = _spread(variants[0].phash, spread, rng)
            rows.append((f"edge-{i}-{j}", ph, variants[0].colour_sig))
    for k in range(300):  # unrelated hashes, some with the sign bit set
        rows.append((f"random-{k}", rng.getrandbits(64) - (1 << 63), b""))
    with db.transaction(fresh_db) as conn:
        for content_hash, ph, sig in rows:
            store.insert_image(conn, {
                "content_hash": content_hash, "phash": ph, "colour_sig": sig or None,
                "source_url": f"https://example.test/{content_hash}.jpg", "first_page_id": None,
                "blob_uri": None, "mime_type": "image/jpeg", "width": 1, "height": 1,
                "alt_text": "", "title_text": "", "caption": "", "context_text": "",
                "page_title": ""})
        stored = [r["phash"] for r in conn.execute("SELECT phash FROM images")]
    return stored, queries


@pytest.mark.parametrize("threshold", [0, 3, PHASH_THRESHOLD, 7, 9, 13])
def test_indexed_lookup_finds_what_the_full_scan_finds(fresh_db, pool, threshold):
    stored, queries = pool
    queries = queries + stored  # every stored hash is a query too
    found_at_edge = 0
    with db.connect(fresh_db) as conn:
        for q in queries:
            scan = store.near_phash_scan(conn, q, threshold, limit=1000)
            assert store.near_phash(conn, q, threshold, limit=1000) == scan, hex(q)
            # the miner's own limit keeps the scan's order and ties too
            assert store.near_phash(conn, q, threshold) == scan[:20]
            found_at_edge += sum(hamming(q, r["phash"]) == threshold for r in scan)
            # and nothing within the threshold is left out of the scan itself
            assert len(scan) == sum(hamming(q, s) <= threshold for s in stored)
    if threshold in (PHASH_THRESHOLD, 7):
        assert found_at_edge >= len(PHOTOS)  # the edge distances were really exercised


def test_no_band_equal_at_the_threshold_is_still_found(fresh_db, pool):
    """Six bits spread 2-2-1-1 over the bands leave no band equal: the look-up probes each
    band's neighbours within one bit, not only its exact value."""
    stored, _ = pool
    base = stored[0]
    rng = random.Random(6)
    with db.connect(fresh_db) as conn:
        near = _spread(base, (2, 2, 1, 1), rng)
        ids = [r["image_id"] for r in store.near_phash(conn, near, PHASH_THRESHOLD, 1000)]
        expected = [r["image_id"] for r in store.near_phash_scan(conn, near, PHASH_THRESHOLD,
                                                                  1000)]
        assert ids == expected and ids, "a near-duplicate with no equal band was missed"


class _Explain:
    """A connection that answers the plan of a statement instead of its rows."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn, self.plan = conn, ""

    def execute(self, sql: str, params=None):
        self.plan = "\n".join(r["QUERY PLAN"] for r in
                              self.conn.execute("EXPLAIN " + sql, params).fetchall())
        return self.conn.execute("SELECT 1 WHERE false")


def test_lookup_reads_the_band_indexes_not_the_table(fresh_db, pool):
    """The band expressions in the query are the indexes' (a mismatch would scan the table
    for every new image again, silently). Sequential scans are priced out, as they are on a
    big pool; the plan must still need none."""
    stored, _ = pool
    with db.connect(fresh_db) as conn:
        conn.execute("SET enable_seqscan = off")
        explain = _Explain(conn)
        store.near_phash(explain, stored[0], PHASH_THRESHOLD)
        assert "Seq Scan" not in explain.plan, explain.plan
        for i in range(len(store.PHASH_BANDS)):
            assert f"images_phash_band{i}_idx" in explain.plan, explain.plan
