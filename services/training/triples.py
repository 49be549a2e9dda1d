"""Training triples from Postgres (the trainer's `TripleSource`), and their JSONL export.

Which triples count: active ones between live images (the `live_images` view). `split="train"`
takes triples of split 'train' and drops every triple that touches a held-out page (the
pair's page, or any page either image appears on), so held-out pages never leak into
training. `split="heldout"` is the evaluation set: triples of split 'heldout' or on a
held-out page.

The trainer opens images by path, so each blob is fetched from the blob store once, decoded
with Pillow (size and pixel limits; undecodable images drop their triples, counted in
`skipped`) and written to a local cache folder; the triples point at those files.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from runtime import db
from runtime.blobstore import BlobStore, open_blobstore
from runtime.config import BaseServiceSettings, load_settings, run_main
from runtime.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_INSTRUCTION_CHARS
from services.training import store
from services.training.store import SPLITS
from trainer.data.triples import Triple, write_jsonl

_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
           "TIFF": ".tif"}


class PostgresTripleSource:
    """A snapshot of one split's triples, with images materialised under `cache_dir`.

    Reads happen in the constructor (one query, then one blob fetch per distinct image), so
    `len()` is exact and iteration is repeatable. `triple_ids` and `max_triple_id` say which
    rows were used; `skipped` counts dropped triples by reason.
    """

    def __init__(self, database_url: str, blobstore: BlobStore | str, cache_dir: str | Path,
                 split: str = "train", *, limit: int = 200_000,
                 max_image_bytes: int = MAX_IMAGE_BYTES,
                 max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        self.split = split
        self.cache_dir = Path(cache_dir).absolute()
        self.blobs = open_blobstore(blobstore) if isinstance(blobstore, str) else blobstore
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.skipped: Counter[str] = Counter()
        self.triple_ids: list[int] = []
        self._triples: list[Triple] = []
        self._paths: dict[int, str | None] = {}
        with db.connect(database_url) as conn:
            rows = store.triple_rows(conn, split, limit)
        for r in rows:
            text = (r["instruction"] or "").strip()
            if not text or len(text) > MAX_INSTRUCTION_CHARS:
                self.skipped["bad instruction"] += 1
                continue
            q = self._image(r["q_id"], r["q_uri"])
            t = self._image(r["t_id"], r["t_uri"])
            if q is None or t is None:
                self.skipped["image unavailable or undecodable"] += 1
                continue
            spec = r.get("specificity")
            self._triples.append(Triple(q, text, t, page=f"page-{r['page_id']}",
                                        specificity=None if spec is None else float(spec),
                                        relation=(r.get("relation") or "")[:200]))
            self.triple_ids.append(int(r["triple_id"]))

    @property
    def max_triple_id(self) -> int:
        return max(self.triple_ids, default=0)

    @property
    def num_images(self) -> int:
        return sum(1 for p in self._paths.values() if p is not None)

    def __iter__(self) -> Iterator[Triple]:
        return iter(self._triples)

    def __len__(self) -> int:
        return len(self._triples)

    def _image(self, image_id: int, uri: str) -> str | None:
        """Local path of a decodable image (cached per image id); None if unusable."""
        if image_id in self._paths:
            return self._paths[image_id]
        path = None
        try:
            path = self._materialise(int(image_id), uri)
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
            path = None
        self._paths[image_id] = path
        return path

    def _materialise(self, image_id: int, uri: str) -> str:
        existing = sorted(self.cache_dir.glob(f"{image_id}.*"))
        if existing:
            return str(existing[0])
        data = self.blobs.get(uri)
        if len(data) > self.max_image_bytes:
            raise ValueError(f"image {image_id}: {len(data)} bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit below
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > self.max_image_pixels:
                    raise ValueError(f"image {image_id}: {im.width}x{im.height} pixels")
                fmt = im.format or ""
                im.convert("RGB").load()  # full decode: truncated files fail here
        suffix = _SUFFIX.get(fmt)
        if suffix is None:  # a format the trainer may not open by name: store as PNG
            buf = io.BytesIO()
            with Image.open(io.BytesIO(data)) as im:
                im.convert("RGB").save(buf, "PNG")
            data, suffix = buf.getvalue(), ".png"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / f"{image_id}{suffix}"
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
        return str(target)

    def export_captions(self, database_url: str, path: str | Path) -> int:
        """Write `{image, text}` lines (the mined alt text, else the caption) for every image
        this snapshot uses: the compact model's alignment stage learns its projections from
        them before the fusion stage. Returns the number of lines."""
        ids = [i for i, p in self._paths.items() if p is not None]
        with db.connect(database_url) as conn:
            rows = store.caption_rows(conn, ids)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        n = 0
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                text = " ".join((r["alt_text"] or r["caption"] or "").split())
                text = text[:MAX_INSTRUCTION_CHARS]
                if text:
                    f.write(json.dumps({"image": self._paths[r["image_id"]], "text": text}) + "\n")
                    n += 1
        tmp.replace(path)
        return n

    def export(self, path: str | Path) -> Path:
        """Write the trainer's JSONL (`trainer.data.triples.JsonlTriples` reads it back)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        write_jsonl(tmp, self._triples)
        tmp.replace(path)
        return path

    def summary(self) -> dict[str, object]:
        return {"split": self.split, "triples": len(self), "images": self.num_images,
                "max_triple_id": self.max_triple_id, "skipped": dict(self.skipped)}


def main(argv: list[str] | None = None) -> int:
    """`python -m services.training.triples OUT.jsonl [--split heldout]` for offline runs
    (with the train split, also captions.jsonl beside it: together a snapshot that
    `python -m trainer.experiments --snapshot` reads)."""
    ap = argparse.ArgumentParser(description="Export Postgres triples as trainer JSONL; images "
                                             "are written to an images/ folder beside it.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--split", choices=SPLITS, default="train")
    ap.add_argument("--limit", type=int, default=200_000)
    a = ap.parse_args(argv)
    settings = load_settings(BaseServiceSettings)
    src = PostgresTripleSource(settings.database_url, settings.blob_root,
                               a.out.parent / "images", a.split, limit=a.limit)
    src.export(a.out)
    captions = 0
    if a.split == "train":
        captions = src.export_captions(settings.database_url, a.out.parent / "captions.jsonl")
    print(json.dumps({"out": str(a.out), "captions": captions, **src.summary()}))
    return 0


if __name__ == "__main__":
    run_main("training-export", main)
