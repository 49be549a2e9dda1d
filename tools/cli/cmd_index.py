"""`magiclens index --images DIR`: add a folder of images to the pool without a web page.

The folder becomes one synthetic page (source `upload`, host `upload.magiclens.invalid`, a
reserved name that never resolves) stored by the miner's own validation and store code, in one
transaction: images are decoded and checked by the same rules as mined ones, deduplicated
against the pool, and each new image emits ImageMined through the outbox, so the embedding
worker indexes it like any other. Pairs are not made unless `--pairs` is given, because a
folder is not evidence that its images are related.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runtime import db
from runtime.config import load_settings
from tools.cli import backends, progress
from tools.cli.errors import NotBuiltError, UsageError
from tools.cli.output import emit, table
from tools.cli.settings import ClientSettings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".svg"}
MAX_FILES = 5000
MAX_CAPTIONS_BYTES = 16 * 1024 * 1024
MAX_CAPTION_CHARS = 600
UPLOAD_HOST = "upload.magiclens.invalid"


def read_captions(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise UsageError(f"--captions {path}: no such file")
    if path.stat().st_size > MAX_CAPTIONS_BYTES:
        raise UsageError(f"--captions {path}: larger than {MAX_CAPTIONS_BYTES} bytes")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--captions {path}: not valid JSON ({exc.msg}, line "
                             f"{exc.lineno})") from None
        if not isinstance(data, dict):
            raise UsageError(f"--captions {path}: want a JSON object {{file name: caption}}")
        return {str(k): " ".join(str(v).split())[:MAX_CAPTION_CHARS] for k, v in data.items()}
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, caption = line.partition("\t")
        if not sep:
            raise UsageError(f"--captions {path}:{n}: want 'file name<TAB>caption'")
        out[name.strip()] = " ".join(caption.split())[:MAX_CAPTION_CHARS]
    return out


def list_images(folder: Path, recursive: bool) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"--images {folder}: not a folder")
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir())
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"--images {folder}: no image files "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(files) > MAX_FILES:
        raise UsageError(f"--images {folder}: {len(files)} files, more than {MAX_FILES} "
                         "per call (split the folder)")
    return files


def page_url(folder: Path) -> str:
    resolved = str(folder.resolve())
    slug = re.sub(r"[^a-z0-9]+", "-", folder.resolve().name.lower()).strip("-") or "images"
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    return f"https://{UPLOAD_HOST}/{slug[:60]}-{digest}/"


def index_folder(settings_env: ClientSettings, folder: Path, captions: dict[str, str],
                 title: str, source: str, recursive: bool, pairs: bool,
                 show_progress: bool = False) -> dict[str, Any]:
    """Store the folder's images as one mined page; returns counts and per-file outcomes.
    With `show_progress`, a bar on stderr counts the files checked, then says "storing"."""
    # The miner (imagehash/scipy, httpx, lxml) doubles the CLI's start time (0.45 s -> 1 s);
    # only this command needs it.
    from services.mining import store as mining_store
    from services.mining.config import MiningSettings
    from services.mining.htmlparse import Candidate
    from services.mining.imaging import Rejection, decode_image
    from services.mining.miner import Miner, Outcome
    from services.mining.urls import url_hash

    files = list_images(folder, recursive)
    overrides: dict[str, Any] = {} if pairs else {"mining_max_pairs_per_page": 0}
    settings = load_settings(MiningSettings, **overrides)
    url = page_url(folder)
    title = title or f"Images from {folder.resolve().name}"
    miner = Miner(settings, worker_id="magiclens-cli-index")
    files_out: list[dict[str, Any]] = []
    pbar = progress.bar(show_progress, total=len(files), desc="checking images", unit="file")
    try:
        out = Outcome("mined", title=title)
        for pos, path in enumerate(files):
            rel = path.relative_to(folder).as_posix()
            caption = captions.get(rel, captions.get(path.name, ""))
            src = url + quote(rel)
            size = path.stat().st_size
            if size > settings.mining_max_image_bytes:
                reason = f"too large ({size} bytes)"
                out.rejections.append((src, reason))
                files_out.append({"file": rel, "status": "rejected", "reason": reason})
            else:
                try:
                    decoded = decode_image(path.read_bytes(), miner.policy)
                except Rejection as exc:
                    out.rejections.append((src, str(exc)))
                    files_out.append({"file": rel, "status": "rejected", "reason": str(exc)})
                else:
                    cand = Candidate(url=src, position=pos, alt=caption, title=path.stem,
                                     caption=caption)
                    out.images.append((cand, decoded))
                    files_out.append({"file": rel, "status": "accepted",
                                      "content_hash": decoded.content_hash})
            pbar.update()
        pbar.set_description(f"storing {len(out.images)} images")
        # Registered as mined: no miner ever tries to fetch the synthetic URL.
        miner.register(url, source, "train", status="mined")
        with db.transaction(settings.database_url) as conn:
            page = mining_store.lock_page(conn, url_hash(url), skip_locked=False)
            before = mining_store.count_images(conn)
            miner.store(conn, page, out)
            after = mining_store.count_images(conn)
            ids = mining_store.page_image_ids(conn, page["page_id"])
            n_pairs = mining_store.count_pairs(conn, page["page_id"])
    finally:
        pbar.close()
        miner.close()
    for f in files_out:
        h = f.pop("content_hash", None)
        if h is not None:
            f["image_id"] = ids.get(h)
            if f["image_id"] is None:
                f["status"] = "near-duplicate"
    return {"page_url": url, "page_id": page["page_id"], "files": len(files),
            "new_images": after - before,
            "accepted": sum(f["status"] == "accepted" for f in files_out),
            "rejected": sum(f["status"] == "rejected" for f in files_out),
            "pairs": n_pairs, "results": files_out}


def _human(d: dict[str, Any]) -> str:
    head = (f"indexed {d['accepted']} of {d['files']} files from page {d['page_url']}: "
            f"{d['new_images']} new in the pool, {d['rejected']} rejected, {d['pairs']} pairs")
    bad = [[f["file"], f["status"], f.get("reason", "")] for f in d["results"]
           if f["status"] != "accepted"]
    return head + ("\n" + table(bad, ["file", "status", "reason"]) if bad else "")


def run(args: argparse.Namespace, settings: ClientSettings) -> int:
    if not backends.is_built("mining"):
        raise NotBuiltError(f"{backends.describe('mining')} is not built yet")
    captions = read_captions(args.captions) if args.captions else {}
    list_images(args.images, args.recursive)  # argument errors before touching the database
    data = index_folder(settings, args.images, captions, args.title, args.source,
                        args.recursive, args.pairs, show_progress=progress.wanted(args.json))
    emit(data, args.json, _human)
    return 0
