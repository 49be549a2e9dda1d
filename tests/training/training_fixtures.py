"""Shared helpers for the training tests: a fresh database, seeded triples, a tiny backbone.

Seed data are real photos (scikit-image samples), cropped and transformed; the instruction
names the transformation. Rows go into pages/images/pairs/triples as mining and triplegen
would write them, with the bytes in the blob store.

The backbone is the small genuine Flax stand-in of tests/standin.py (shared with tests/trainer)
so a job trains in seconds; the production path builds the MobileNetV2 + MiniLM backbone
instead (minutes of XLA compilation on CPU).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
import psycopg
import skimage.data
from PIL import Image, ImageOps

from runtime import db
from runtime.blobstore import BlobStore
from tests.support.standin import StandInBackbone, StandInPreprocessor
from trainer.models.magiclens import MagicLensConfig

TRANSFORMS = {
    "flip": ("the same picture mirrored left to right", ImageOps.mirror),
    "grey": ("make it black and white", lambda im: ImageOps.grayscale(im).convert("RGB")),
    "invert": ("invert the colours", ImageOps.invert),
    "upside_down": ("turn it upside down", lambda im: im.rotate(180)),
}
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
HELDOUT_PHOTOS = ("hubble_deep_field", "immunohistochemistry")


# ----------------------------------------------------------------------------- database

def fresh_database(admin_url: str, name: str) -> str:
    """Create and migrate database `name` on the same server; returns its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = re.sub(r"/[^/?]+(\?|$)", rf"/{name}\1", admin_url, count=1)
    db.migrate(url)
    return url


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----------------------------------------------------------------------------- seed data

def _photo(name: str, size: int = 64) -> Image.Image:
    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    img = Image.fromarray(arr[..., :3].astype(np.uint8))
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize((size, size))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Seeded:
    train_triples: list[int] = field(default_factory=list)
    heldout_triples: list[int] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> triple id
    heldout_page: int = 0
    train_page: int = 0


class Seeder:
    def __init__(self, url: str, blobs: BlobStore, tag: str) -> None:
        self.url, self.blobs, self.tag = url, blobs, tag
        self.n = 0

    def page(self, conn: psycopg.Connection, split: str) -> int:
        self.n += 1
        u = f"https://example.org/{self.tag}/{split}/{self.n}"
        return conn.execute(
            "INSERT INTO pages (url, url_hash, domain, split, status) VALUES (%s, %s, %s, %s, "
            "'mined') RETURNING page_id",
            (u, hashlib.sha256(u.encode()).hexdigest(), "example.org", split)).fetchone()[
            "page_id"]

    def image(self, conn: psycopg.Connection, data: bytes, page_id: int,
              suffix: str = ".png") -> int:
        uri = self.blobs.put(data, suffix)
        h = hashlib.sha256(data).hexdigest()
        row = conn.execute(
            "INSERT INTO images (content_hash, source_url, first_page_id, blob_uri, mime_type) "
            "VALUES (%s, %s, %s, %s, 'image/png') ON CONFLICT (content_hash) DO UPDATE "
            "SET blob_uri = EXCLUDED.blob_uri RETURNING image_id",
            (h, f"https://example.org/{self.tag}/{h[:12]}.png", page_id, uri)).fetchone()
        iid = row["image_id"]
        conn.execute("INSERT INTO page_images (page_id, image_id, position, src_url) VALUES "
                     "(%s, %s, 0, 'x') ON CONFLICT DO NOTHING", (page_id, iid))
        return iid

    def triple(self, conn: psycopg.Connection, page_id: int, q: int, t: int, text: str,
               status: str = "active", split: str = "train") -> int:
        pair = conn.execute(
            "INSERT INTO pairs (page_id, query_image_id, target_image_id, status) VALUES "
            "(%s, %s, %s, 'tripled') ON CONFLICT (page_id, query_image_id, target_image_id) "
            "DO UPDATE SET status = 'tripled' RETURNING pair_id", (page_id, q, t)).fetchone()
        return conn.execute(
            "INSERT INTO triples (pair_id, query_image_id, target_image_id, instruction, writer, "
            "writer_version, split, status, relation) VALUES (%s, %s, %s, %s, 'metadata', "
            "'test', %s, %s, %s) RETURNING triple_id",
            (pair["pair_id"], q, t, text, split, status, text.split()[0].lower())).fetchone()[
            "triple_id"]

    def photo_triples(self, conn: psycopg.Connection, photo: str, page_id: int) -> list[int]:
        base = _photo(photo)
        q = self.image(conn, _png(base), page_id)
        return [self.triple(conn, page_id, q, self.image(conn, _png(fn(base)), page_id), text)
                for text, fn in TRANSFORMS.values()]


def seed(url: str, blobs: BlobStore, tag: str) -> Seeded:
    """16 training triples, 8 held-out ones, and 3 that must never reach training."""
    s = Seeder(url, blobs, tag)
    out = Seeded()
    with db.transaction(url) as conn:
        out.train_page, out.heldout_page = s.page(conn, "train"), s.page(conn, "heldout")
        for p in TRAIN_PHOTOS:
            out.train_triples += s.photo_triples(conn, p, out.train_page)
        for p in HELDOUT_PHOTOS:
            out.heldout_triples += s.photo_triples(conn, p, out.heldout_page)
        # A train-page triple whose target also appears on the held-out page: leaks.
        shared = conn.execute("SELECT target_image_id FROM triples WHERE triple_id = %s",
                              (out.heldout_triples[0],)).fetchone()["target_image_id"]
        q = s.image(conn, _png(ImageOps.posterize(_photo("coffee"), 2)), out.train_page)
        conn.execute("INSERT INTO page_images (page_id, image_id, position, src_url) "
                     "VALUES (%s, %s, 1, 'y')", (out.train_page, shared))
        out.excluded["touches held-out page"] = s.triple(conn, out.train_page, q, shared,
                                                         "a leak")
        # Superseded triples are history, not training data.
        a = s.image(conn, _png(ImageOps.solarize(_photo("chelsea"))), out.train_page)
        out.excluded["superseded"] = s.triple(conn, out.train_page, a, q, "old text",
                                              status="superseded")
        # Bytes that are not an image.
        bad = s.image(conn, b"this is not an image" * 10, out.train_page, suffix=".png")
        out.excluded["undecodable"] = s.triple(conn, out.train_page, a, bad, "broken target")
    return out


# ----------------------------------------------------------------------------- tiny backbone

def tiny_model_kwargs(cfg) -> dict:
    """Extra trainer.train.train arguments: the tiny backbone, embedding width 64."""
    return dict(backbone=(StandInBackbone(64), StandInPreprocessor()),
                model_config=MagicLensConfig("compact", 64, 2, num_layers=1))


@contextmanager
def compilation_cache(path: Path) -> Iterator[None]:
    """Share XLA compilations between the runs of a test module (each run re-jits the same
    step; on a loaded 2-core machine one compile takes tens of seconds)."""
    old = jax.config.jax_compilation_cache_dir
    old_min = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", old)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
