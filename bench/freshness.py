"""Freshness: how long after a page is published on the ingestion topic its images are
searchable, with a model already serving.

    ./taskw up                    # after ./taskw demo (a promoted model, indexed shards)
    python bench/freshness.py [--pages 20] [--images-per-page 2] [--interval 0.5]

Each run writes `--pages` new pages into the corpus site (data/corpus/site/fresh/RUN/),
each with images drawn at random here (new content, so the miner's near-duplicate rule keeps
them), and publishes one PageDiscovered event per page on the ingestion topic, `--interval`
seconds apart, as a crawler would. It then reads the pipeline's own timestamps from
Postgres until every image is searchable or `--timeout` passes:

    published (this script) -> mined (the page fetched, parsed, its images stored) ->
    embedded (image_embeddings, the serving version) -> searchable (index_freshness: a
    shard upserted it on EmbeddingReady)

and prints the p50/p99 of each step and of published -> searchable. Finally a search by
one new image's bytes (include_query_image) must return that image as hit 1: searchable
means found, not only recorded.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE_BASE = "http://127.0.0.1:8765"  # the corpus site ./taskw up serves (Procfile)


def draw(rng: random.Random, size: int = 320) -> bytes:
    """A new picture: random shapes in random colours, so no stored image is a near copy."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randrange(6, 14)):
        box = sorted(rng.randrange(size) for _ in range(2)) + sorted(
            rng.randrange(size) for _ in range(2))
        x0, x1, y0, y1 = box
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice(("ellipse", "rectangle", "polygon"))
        if shape == "polygon":
            d.polygon([(rng.randrange(size), rng.randrange(size)) for _ in range(5)],
                      fill=colour)
        else:
            getattr(d, shape)((x0, y0, x1 + 8, y1 + 8), fill=colour)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_pages(site: Path, run: str, pages: int, per_page: int, seed: int) -> list[str]:
    """The pages' URLs; files under site/fresh/RUN/."""
    rng = random.Random(seed)
    d = site / "fresh" / run
    d.mkdir(parents=True, exist_ok=True)
    urls = []
    for p in range(pages):
        figures = []
        for i in range(per_page):
            name = f"p{p}-{i}.png"
            (d / name).write_bytes(draw(rng))
            figures.append(f'<figure><img src="{name}" alt="abstract shapes {p}-{i}" '
                           f'width="320" height="320"><figcaption>Shapes, plate {p}-{i}'
                           f'</figcaption></figure>')
        (d / f"page-{p}.html").write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>Fresh shapes {run} "
            f"{p}</title></head><body><h1>Shapes {p}</h1>{''.join(figures)}</body></html>")
        urls.append(f"{SITE_BASE}/fresh/{run}/page-{p}.html")
    return urls


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def timeline(conn, urls: list[str], version: str) -> list[dict]:
    """One row per image found on the pages so far, with each stage's time (or None)."""
    return conn.execute(
        "SELECT p.url, i.image_id, i.source_url, "
        "       i.created_at AS stored, "
        "       e.created_at AS embedded, f.searchable_at "
        "FROM pages p LEFT JOIN page_images pi ON pi.page_id = p.page_id "
        "LEFT JOIN images i ON i.image_id = pi.image_id "
        "LEFT JOIN image_embeddings e ON e.image_id = i.image_id AND e.model_version = %s "
        "LEFT JOIN index_freshness f ON f.image_id = i.image_id AND f.model_version = %s "
        "WHERE p.url = ANY(%s)", (version, version, urls)).fetchall()


def main() -> int:
    import psycopg
    from magiclens.v1 import events_pb2

    from runtime.bus import make_producer, publish
    from runtime.config import BaseServiceSettings, load_settings
    from runtime.serving import serving_version
    from runtime.topics import PAGES_DISCOVERED

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--images-per-page", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between pages")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--site", type=Path, default=ROOT / "data" / "corpus" / "site")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if not 1 <= args.pages <= 1000 or not 1 <= args.images_per_page <= 10:
        raise SystemExit("--pages must be 1..1000 and --images-per-page 1..10")
    if not args.site.is_dir():
        raise SystemExit(f"no corpus site at {args.site}: run ./taskw demo first")
    settings = load_settings(BaseServiceSettings)
    with psycopg.connect(settings.database_url, row_factory=psycopg.rows.dict_row) as conn:
        serving = serving_version(conn)
        if serving is None:
            raise SystemExit("no model serves yet: run ./taskw demo (or promote one) first")
        version = serving[0]
        run = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        seed = args.seed if args.seed is not None else int(time.time())
        urls = write_pages(args.site, run, args.pages, args.images_per_page, seed)
        producer = make_producer(settings.kafka_bootstrap_servers, client_id="bench-freshness")
        published: dict[str, datetime] = {}
        print(f"serving {version}; publishing {len(urls)} pages x {args.images_per_page} "
              f"images, {args.interval:g} s apart")
        for url in urls:
            published[url] = datetime.now(UTC)
            publish(producer, PAGES_DISCOVERED, url, events_pb2.PageDiscovered(url=url))
            time.sleep(args.interval)
        producer.close()
        want = len(urls) * args.images_per_page
        deadline = time.monotonic() + args.timeout
        while True:
            rows = timeline(conn, urls, version)
            done = [r for r in rows if r["searchable_at"] is not None]
            if len(done) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        conn.commit()
    steps = {"published -> mined (fetched, parsed, stored)": [], "mined -> embedded": [],
             "embedded -> searchable": [], "published -> searchable": []}
    for r in done:
        t0 = published[r["url"]]
        marks = [t0, r["stored"], r["embedded"], r["searchable_at"]]
        for (name, a, b) in zip(list(steps)[:3], marks[:-1], marks[1:], strict=True):
            steps[name].append(max(0.0, (b - a).total_seconds()))
        steps["published -> searchable"].append((r["searchable_at"] - t0).total_seconds())
    print(f"{len(done)} of {want} images searchable within {args.timeout:g} s")
    print("| step | p50 s | p99 s | max s |")
    print("|---|---|---|---|")
    for name, v in steps.items():
        print(f"| {name} | {pct(v, 0.5):.2f} | {pct(v, 0.99):.2f} | "
              f"{max(v) if v else float('nan'):.2f} |")
    if not done:
        return 1
    return 0 if check_found(settings, args.site, run, done) and len(done) >= want else 1


def check_found(settings, site: Path, run: str, done: list[dict]) -> bool:
    """Search by one new image's bytes: that image must come back as hit 1."""
    from magiclens.v1 import common_pb2, search_pb2

    from runtime import ports
    from runtime.search_client import SearchClient

    page = done[-1]["url"].rsplit("/", 1)[1].removeprefix("page-").removesuffix(".html")
    data = (site / "fresh" / run / f"p{page}-0.png").read_bytes()
    want = next((x["image_id"] for x in done if x["source_url"].endswith(f"/p{page}-0.png")),
                None)
    client = SearchClient(ports.SEARCH_ADDR)
    try:
        hits = client.search(search_pb2.SearchRequest(
            query=common_pb2.ImageInput(image_bytes=data), k=5, include_query_image=True), 30)
    finally:
        client.close()
    found = [h.image_id for h in hits.hits]
    ok = bool(found) and want is not None and found[0] == want
    print(f"search by a new image's bytes: hit 1 is image {found[0] if found else None}, "
          f"the image itself is {want} ({'found' if ok else 'NOT found'})")
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
