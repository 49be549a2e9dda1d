"""Clip art galleries: openclipart (public domain) and Tux Paint stamps (GPL-2).

Both ship a topic folder taxonomy; that folder is the ground-truth category. Some
openclipart PNGs are huge, so files over the size limits are skipped, never decoded.
"""

from __future__ import annotations

import re
from pathlib import Path

from tools.corpus import render
from tools.corpus.context import Context
from tools.corpus.fetch import SourceUnavailable, unavailable
from tools.corpus.model import Asset, Figure, Page, slug, stable_hash

MAX_PNG_BYTES = 4 * 1024 * 1024


def _pngs(root: Path) -> list[Path]:
    """Regular PNG files inside ``root``; symlinks (duplicates, or pointing anywhere) skipped."""
    real = root.resolve()
    out = []
    for p in sorted(root.rglob("*.png")):
        if p.is_symlink() or not p.is_file() or real not in p.resolve().parents:
            continue
        if any(part.is_symlink() for part in p.parents if real in part.resolve().parents):
            continue
        if p.stat().st_size <= MAX_PNG_BYTES:
            out.append(p)
    return out


def _title_from_file(stem: str) -> str:
    stem = re.sub(r"_0\d$", "", stem)
    return re.sub(r"[_\s]+", " ", stem).strip()


def _gallery(ctx: Context, source: str, root: Path, folders: dict[str, list[Path]],
             cap_name: str, label: str, licence: str, describe) -> None:
    order = sorted(folders, key=lambda f: (stable_hash(source + f), f))
    for folder in sorted(ctx.take(order, cap_name)):
        fits = [p for p in folders[folder] if (wh := render.image_size(str(p)))
                and wh[0] * wh[1] <= render.MAX_PIXELS]
        for part, chunk in enumerate(ctx.parts(fits, "gallery_max"), start=1):
            figs = []
            for p in chunk:
                title, text = describe(p)
                rel = p.relative_to(root).as_posix()

                def produce(path: Path = p) -> tuple[bytes, str]:
                    return render.raster(path.read_bytes(), 384, "png"), "png"

                aid = ctx.add(Asset(
                    id=f"{source}/{slug(rel.rsplit('.', 1)[0])}-{stable_hash(rel) % 16**6:06x}",
                    source=source, produce=produce,
                    cache_key=f"{source}|{rel}|{p.stat().st_size}",
                    alt=title, caption=title.capitalize(),
                    truth={"type": "clipart", "style": label, "category": folder, "name": title},
                    credit=label, license=licence))
                figs.append(Figure(aid, title.capitalize(), text=text))
            if len(figs) < 2:
                continue
            nice = folder.replace("/", " › ").replace("_", " ")
            ctx.pages.append(Page(
                id=f"{source}/{slug(folder)}" + (f"-part-{part}" if part > 1 else ""),
                title=f"{nice.capitalize()} — {label} gallery"
                + (f", part {part}" if part > 1 else ""),
                source=source, kind="gallery",
                intro=[f"Free {label} in the “{nice}” topic: {len(figs)} pictures you can reuse.",
                       f"Licence: {licence}."], figures=figs))


def build(ctx: Context) -> None:
    _openclipart(ctx)
    _tuxpaint(ctx)


def _openclipart(ctx: Context) -> None:
    try:
        root = ctx.fetcher.deb("openclipart-png") / "usr/share/openclipart/png"
    except SourceUnavailable as exc:
        ctx.failed["openclipart"] = str(exc)
        unavailable("openclipart", str(exc))
        return
    ctx.sources_used["openclipart"] = {
        "name": "Open Clip Art Library 0.18 (Debian openclipart-png)",
        "license": "Public domain (CC0)", "url": "https://openclipart.org/"}
    folders: dict[str, list[Path]] = {}
    for p in _pngs(root):
        folders.setdefault(p.parent.relative_to(root).as_posix(), []).append(p)
    folders = {k: v for k, v in folders.items() if len(v) >= 4 and k != "unsorted"}
    _gallery(ctx, "openclipart", root, folders, "clip_folders", "clip art",
             "Public domain", lambda p: (_title_from_file(p.stem), ""))


def _tuxpaint(ctx: Context) -> None:
    try:
        root = ctx.fetcher.deb("tuxpaint-stamps-default") / "usr/share/tuxpaint/stamps"
    except SourceUnavailable as exc:
        ctx.failed["tuxpaint"] = str(exc)
        unavailable("tuxpaint", str(exc))
        return
    ctx.sources_used["tuxpaint"] = {
        "name": "Tux Paint stamps 2022.06.04 (Debian tuxpaint-stamps-default)",
        "license": "GPL-2.0-or-later", "url": "https://tuxpaint.org/"}
    folders: dict[str, list[Path]] = {}
    for p in _pngs(root):
        if not p.stem.endswith("_back"):
            folders.setdefault(p.parent.relative_to(root).as_posix(), []).append(p)
    folders = {k: v for k, v in folders.items() if len(v) >= 3}

    def describe(p: Path) -> tuple[str, str]:
        txt = p.with_suffix(".txt")
        line = ""
        if txt.is_file() and txt.stat().st_size < 256 * 1024:
            line = txt.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
            line = line[0].strip() if line else ""
        return _title_from_file(p.stem), line

    _gallery(ctx, "tuxpaint", root, folders, "stamp_folders", "Tux Paint stamps",
             "GPL-2.0-or-later", describe)
