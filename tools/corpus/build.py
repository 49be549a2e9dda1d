"""Build the offline demo corpus: static site, WARC, manifest, held-out split, eval queries.

Held-out rule: a page is held out iff ``sha256("split:" + page_id)`` read as a big-endian
64-bit integer is ``< 15 %`` of 2**64 (``HELDOUT_PERCENT``). An image used by any held-out
page is held out too, and is removed from training pages, so no held-out picture is
ever seen in training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from runtime import ports
from tools.corpus import clipart, emoji, evalq, flags, gcompris, render
from tools.corpus.context import SIZES, Context
from tools.corpus.fetch import Fetcher
from tools.corpus.model import Page
from tools.corpus.site import (
    ImgRef,
    page_mode,
    render_credits,
    render_index,
    render_page,
    render_sitemap,
)
from tools.corpus.warc import write_warc

HELDOUT_PERCENT = 15
DEFAULT_BASE_URL = ports.CORPUS_SITE_URL
ALL_SOURCES = ("openmoji", "noto-emoji", "fluent-emoji-3d", "flags", "gcompris", "openclipart",
               "tuxpaint")


def is_heldout(page_id: str) -> bool:
    h = int.from_bytes(hashlib.sha256(f"split:{page_id}".encode()).digest()[:8], "big")
    return h < (HELDOUT_PERCENT * 2**64) // 100


def collect(ctx: Context) -> None:
    """Run every source; each registers assets and pages on the context."""
    emoji.build(ctx)
    fl = flags.build(ctx)
    gcompris.build(ctx, fl)
    clipart.build(ctx)


def _assign_split(pages: list[Page]) -> tuple[list[Page], set[str]]:
    for p in pages:
        p.split = "heldout" if is_heldout(p.id) else "train"
    held_assets = {f.asset_id for p in pages if p.split == "heldout" for f in p.all_figures()}
    kept = []
    for p in pages:
        if p.split == "train":
            p.figures = [f for f in p.figures if f.asset_id not in held_assets]
            p.sections = [(h, [f for f in figs if f.asset_id not in held_assets])
                          for h, figs in p.sections]
            if not p.all_figures():
                continue
        kept.append(p)
    return kept, held_assets


def build(out: Path, size: str = "default", base_url: str = DEFAULT_BASE_URL,
          cache: Path | None = None, quiet: bool = False) -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}")
    if not base_url.endswith("/"):
        base_url += "/"
    t0 = time.time()
    cache = cache or Path("data/cache")
    ctx = Context(size=size, fetcher=Fetcher(cache / "sources"),
                  render=render.RenderCache(cache / "render"))
    collect(ctx)
    pages = sorted(ctx.pages, key=lambda p: p.id)
    if len({p.id for p in pages}) != len(pages):
        raise RuntimeError("duplicate page ids")
    pages, held_assets = _assign_split(pages)
    used = sorted({f.asset_id for p in pages for f in p.all_figures()})

    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    site = tmp / "site"
    site.mkdir(parents=True)

    # 1) images (rendered through the cache), plus thumbnails / alternative formats
    need_thumb = {f.asset_id for p in pages if page_mode(p) == "srcset" for f in p.all_figures()}
    need_alt = {f.asset_id for p in pages if page_mode(p) == "picture" for f in p.all_figures()}
    refs: dict[str, ImgRef] = {}
    images: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for aid in tqdm(used, desc="images", disable=quiet, file=sys.stderr):
        a = ctx.assets[aid]
        try:
            data, ext = ctx.render.get(a.cache_key, a.produce)
            im = render.open_image(data)
        except (render.RenderError, OSError, ValueError) as exc:
            skipped[aid] = str(exc)
            continue
        rel = f"img/{aid}.{ext}"
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        ref = ImgRef(rel, im.width, im.height)
        variants = []
        if aid in need_thumb:
            ref.thumb = f"img/{aid}.thumb.jpg"
            tb = render.encode(render.fit(im, 128), "jpg")
            (site / ref.thumb).write_bytes(tb)
            variants.append(ref.thumb)
        if aid in need_alt:
            fmt = "png" if ext == "webp" else "webp"
            ref.alt_format = f"img/{aid}.alt.{fmt}"
            (site / ref.alt_format).write_bytes(render.encode(im, fmt))
            variants.append(ref.alt_format)
        refs[aid] = ref
        images[aid] = {
            "id": aid, "url": base_url + rel, "file": f"site/{rel}",
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "format": ext,
            "width": im.width, "height": im.height, "source": a.source, "alt": a.alt,
            "caption": a.caption, "credit": a.credit, "license": a.license, "truth": a.truth,
            "split": "heldout" if aid in held_assets else "train", "pages": [],
            "variants": [{"url": base_url + v, "file": f"site/{v}",
                          "sha256": hashlib.sha256((site / v).read_bytes()).hexdigest()}
                         for v in variants],
        }
    for aid, why in sorted(skipped.items()):
        print(f"corpus: skipped image {aid}: {why}", file=sys.stderr)

    # 2) pages
    for p in pages:
        p.figures = [f for f in p.figures if f.asset_id in refs]
        p.sections = [(h, [f for f in figs if f.asset_id in refs]) for h, figs in p.sections]
    pages = [p for p in pages if p.all_figures()]
    alts = {aid: ctx.assets[aid].alt for aid in refs}
    by_kind: dict[str, list[Page]] = {}
    for p in pages:
        by_kind.setdefault(p.kind, []).append(p)
    manifest_pages = []
    for p in tqdm(pages, desc="pages", disable=quiet, file=sys.stderr):
        sib = [q for q in by_kind[p.kind] if q.id != p.id]
        sib.sort(key=lambda q: (abs(hash_rank(q.id) - hash_rank(p.id)), q.id))
        nav = [(q.path, q.title) for q in sib[:5]]
        (site / p.path).parent.mkdir(parents=True, exist_ok=True)
        (site / p.path).write_text(render_page(p, refs, alts, base_url, nav), encoding="utf-8")
        ids = sorted({f.asset_id for f in p.all_figures()})
        for aid in ids:
            images[aid]["pages"].append(p.id)
        manifest_pages.append({"id": p.id, "url": base_url + p.path, "file": f"site/{p.path}",
                               "title": p.title, "source": p.source, "kind": p.kind,
                               "split": p.split, "markup": page_mode(p), "images": ids})

    # 3) index, credits, sitemap, robots
    (site / "index.html").write_text(render_index(pages), encoding="utf-8")
    rows = [(images[a]["file"][5:], images[a]["source"], images[a]["credit"],
             images[a]["license"]) for a in sorted(images)]
    (site / "credits.html").write_text(render_credits(ctx.sources_used, rows, ctx.failed),
                                       encoding="utf-8")
    html_paths = ["index.html", "credits.html"] + [p.path for p in pages]
    (site / "sitemap.xml").write_text(render_sitemap(base_url, html_paths), encoding="utf-8")
    (site / "robots.txt").write_text(f"User-agent: *\nAllow: /\nSitemap: {base_url}sitemap.xml\n",
                                     encoding="utf-8")

    # 4) WARC, split file, eval queries, manifest
    n_records = write_warc(site, tmp / "corpus.warc.gz", base_url)
    held_pages = sorted(p.id for p in pages if p.split == "heldout")
    (tmp / "heldout_pages.txt").write_text("".join(f"{base_url}pages/{i}.html\n"
                                                   for i in held_pages), encoding="utf-8")
    held_images = [images[a] for a in sorted(images) if images[a]["split"] == "heldout"]
    queries = evalq.build_queries(held_images)
    with (tmp / "eval_queries.jsonl").open("w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps(q, sort_keys=True, ensure_ascii=False) + "\n")
    # The same generator over the training pages: example queries for the demo and the UI
    # (never for measuring quality: these images are trained on).
    train_images = [images[a] for a in sorted(images) if images[a]["split"] != "heldout"]
    with (tmp / "example_queries.jsonl").open("w", encoding="utf-8") as fh:
        for q in evalq.build_queries(train_images):
            fh.write(json.dumps(q, sort_keys=True, ensure_ascii=False) + "\n")
    manifest = {
        "version": 1, "size": size, "base_url": base_url,
        "heldout_rule": f"sha256('split:'+page_id)[:8] big-endian < {HELDOUT_PERCENT}% of 2^64",
        "sources": ctx.sources_used, "failed_sources": ctx.failed,
        "pages": manifest_pages, "images": [images[a] for a in sorted(images)],
        "warc_records": n_records,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True,
                                                  ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    summary = summarise(manifest, queries, time.time() - t0)
    if not quiet:
        print(summary["table"])
    return summary


def hash_rank(page_id: str) -> int:
    return int(hashlib.sha256(page_id.encode()).hexdigest()[:6], 16)


def summarise(manifest: dict[str, Any], queries: list[dict[str, Any]],
              seconds: float) -> dict[str, Any]:
    per: dict[str, dict[str, int]] = {}
    for p in manifest["pages"]:
        s = per.setdefault(p["source"], {"pages": 0, "heldout_pages": 0, "images": 0,
                                         "heldout_images": 0})
        s["pages"] += 1
        s["heldout_pages"] += p["split"] == "heldout"
    for im in manifest["images"]:
        s = per.setdefault(im["source"], {"pages": 0, "heldout_pages": 0, "images": 0,
                                          "heldout_images": 0})
        s["images"] += 1
        s["heldout_images"] += im["split"] == "heldout"
    lines = [f"{'source':<18}{'pages':>7}{'held':>6}{'images':>8}{'held':>6}"]
    for k in sorted(per):
        v = per[k]
        lines.append(f"{k:<18}{v['pages']:>7}{v['heldout_pages']:>6}{v['images']:>8}"
                     f"{v['heldout_images']:>6}")
    tot = {k: sum(v[k] for v in per.values()) for k in
           ("pages", "heldout_pages", "images", "heldout_images")}
    lines.append(f"{'TOTAL':<18}{tot['pages']:>7}{tot['heldout_pages']:>6}{tot['images']:>8}"
                 f"{tot['heldout_images']:>6}")
    rels: dict[str, int] = {}
    for q in queries:
        rels[q["relation"]] = rels.get(q["relation"], 0) + 1
    lines.append(f"eval queries: {len(queries)} " + json.dumps(rels, sort_keys=True))
    lines.append(f"warc records: {manifest['warc_records']}; built in {seconds:.1f}s")
    if manifest["failed_sources"]:
        lines.append("unavailable sources: " + ", ".join(sorted(manifest["failed_sources"])))
    return {"per_source": per, "total": tot, "queries": len(queries), "relations": rels,
            "seconds": seconds, "table": "\n".join(lines)}
