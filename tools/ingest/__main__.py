"""`python -m tools.ingest --url U | --sitemap URL | --warc FILE`: announce pages on Kafka.

Each page becomes a PageDiscovered event on the page topic (key = URL); the mining service
does the rest. Sitemaps are fetched through the miner's SSRF guard (`--allow-private` lets
this CLI read a sitemap on a private/loopback address, e.g. the local demo corpus; the miner
itself still needs MAGICLENS_MINING_ALLOW_HOSTS). A WARC is archived into the blob store and
Postgres so the miner can mine it without network access.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from magiclens.v1 import events_pb2

from runtime import db
from runtime.blobstore import open_blobstore
from runtime.bus import encode, ensure_topics, make_producer
from runtime.config import load_settings, run_main
from runtime.errors import ConfigError
from services.mining import sitemap, warc
from services.mining.config import MiningSettings
from services.mining.fetch import Fetcher, FetchError
from services.mining.handlers import pages_topic
from services.mining.netguard import Blocked, Guard
from services.mining.urls import BadUrl, normalise


def _fetcher(settings: MiningSettings, allow_private: bool) -> Fetcher:
    guard = Guard(settings.allowed_hosts(), allow_private or settings.mining_allow_private)
    return Fetcher(guard, connect_timeout_s=settings.mining_connect_timeout_s,
                   read_timeout_s=settings.mining_read_timeout_s,
                   max_redirects=settings.mining_max_redirects)


def collect(args: argparse.Namespace, settings: MiningSettings
            ) -> tuple[list[events_pb2.PageDiscovered], list[str]]:
    """The events to publish, and problems worth telling the user about."""
    heldout: set[str] = set()
    if args.heldout_file:
        heldout = {line.strip() for line in args.heldout_file.read_text().splitlines()
                   if line.strip()}
    events: list[events_pb2.PageDiscovered] = []
    problems: list[str] = []

    def add(url: str, source: str, html: str = "") -> None:
        try:
            norm = normalise(url)
        except BadUrl as exc:
            problems.append(f"{url[:200]}: {exc}")
            return
        split = "heldout" if url in heldout or norm in heldout else ""
        events.append(events_pb2.PageDiscovered(url=norm, html=html, source=source,
                                                split=split))

    for url in args.url or []:
        add(url, args.source or "web")
    if args.sitemap:
        fetcher = _fetcher(settings, args.allow_private)

        def get(u: str) -> bytes:
            return fetcher.get(u, max_bytes=sitemap.MAX_SITEMAP_BYTES).body

        try:
            urls, issues = sitemap.expand(args.sitemap, get, max_urls=args.max_pages)
        except (Blocked, FetchError) as exc:
            raise ConfigError(f"cannot read sitemap {args.sitemap}: {exc}") from None
        finally:
            fetcher.close()
        problems += issues
        for u in urls:
            add(u, args.source or "sitemap")
    if args.warc:
        blobs = open_blobstore(settings.blob_root)
        with db.transaction(settings.database_url) as conn, args.warc.open("rb") as fh:
            pages, skipped = warc.ingest(fh, conn, blobs, args.warc.name,
                                         max_html_bytes=settings.mining_max_html_bytes,
                                         max_image_bytes=settings.mining_max_image_bytes)
        problems += skipped
        for p in pages[: args.max_pages]:
            add(p.url, args.source or "warc", p.html)
    return events, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.ingest", description=__doc__)
    ap.add_argument("--url", action="append", help="a page URL (repeatable)")
    ap.add_argument("--sitemap", help="a sitemap or sitemap index URL")
    ap.add_argument("--warc", type=Path, help="a WARC(.gz) file")
    ap.add_argument("--allow-private", action="store_true",
                    help="let this CLI fetch a sitemap from a private/loopback address")
    ap.add_argument("--source", default="", help="source label (default: web/sitemap/warc)")
    ap.add_argument("--heldout-file", type=Path,
                    help="file of URLs to mark split=heldout (the corpus's heldout_pages.txt)")
    ap.add_argument("--max-pages", type=int, default=50_000)
    args = ap.parse_args(argv)
    if not (args.url or args.sitemap or args.warc):
        ap.error("give --url, --sitemap or --warc")
    settings = load_settings(MiningSettings)
    events, problems = collect(args, settings)
    for p in problems[:20]:
        print(f"ingest: skipped {p}", file=sys.stderr)
    topic = pages_topic(settings)
    ensure_topics(settings.kafka_bootstrap_servers, [topic])
    producer = make_producer(settings.kafka_bootstrap_servers, "magiclens-ingest")
    futures = []
    for ev in events:
        value, headers = encode(ev)
        futures.append(producer.send(topic.name, key=ev.url.encode(), value=value,
                                     headers=headers))
    producer.flush(timeout=60)
    for f in futures:
        f.get(timeout=30)
    producer.close(timeout=5)
    print(f"ingest: published {len(events)} page events to {topic.name}"
          + (f" ({len(problems)} skipped)" if problems else ""))
    return 0


if __name__ == "__main__":
    run_main("ingest", main)
