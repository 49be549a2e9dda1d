"""`python -m tools.ingest --url U | --sitemap URL | --warc FILE`: submit pages for mining.

The pages go to the mining service's SubmitPages call (an admin call: MAGICLENS_TOKEN, or
locally the token file's admin token), which records each page with its source and split
and announces it on the page topic; the mining service does the rest. Through gRPC, not
straight onto Kafka, because the topic carries URLs only: a page's source label, its
held-out split and its HTML are trusted only from an authenticated caller. The service is
MAGICLENS_MINING_ADDR (default: this host's mining port, MAGICLENS_GRPC_PORT or 50051).

Sitemaps are fetched through the miner's SSRF guard (`--allow-private` lets this CLI read a
sitemap on a private/loopback address, e.g. the local demo corpus; the miner itself still
needs MAGICLENS_MINING_ALLOW_HOSTS). A WARC is archived into the blob store and Postgres so
the miner can mine it without network access (its HTML is read from that archive).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from magiclens.v1 import events_pb2, mining_pb2, mining_pb2_grpc
from pydantic import Field, field_validator

from runtime import db, ports, rpc
from runtime.blobstore import open_blobstore
from runtime.config import check_addr, load_settings, run_main
from runtime.errors import ConfigError
from services.mining import sitemap, warc
from services.mining.config import MiningSettings
from services.mining.fetch import Fetcher, FetchError
from services.mining.netguard import Blocked, Guard
from services.mining.server import MAX_URLS_PER_CALL
from services.mining.urls import BadUrl, normalise
from tools.cli import progress


class IngestSettings(MiningSettings):
    """The miner's settings (sitemap guard, WARC limits) plus where its gRPC API is."""

    mining_addr: str = ""  # MAGICLENS_MINING_ADDR; default 127.0.0.1:<this host's mining port>
    ingest_timeout_s: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("mining_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        return check_addr(v) if v else v

    @property
    def mining_target(self) -> str:
        return self.mining_addr or ports.local(self.grpc_port or ports.MINING.grpc)


def submit(settings: IngestSettings, events: list[events_pb2.PageDiscovered],
           show_progress: bool = False) -> tuple[int, list[str]]:
    """SubmitPages, one call per source label and at most MAX_URLS_PER_CALL pages each;
    (accepted, rejected lines). With `show_progress`, a bar on stderr counts pages sent."""
    by_source: dict[str, list[events_pb2.PageDiscovered]] = {}
    for ev in events:
        by_source.setdefault(ev.source, []).append(ev)
    accepted, rejected = 0, []
    addr = settings.mining_target
    with rpc.channel(addr) as ch, progress.bar(show_progress, total=len(events),
                                               desc="submitting", unit="page") as pbar:
        stub = mining_pb2_grpc.MiningServiceStub(ch)
        for source, group in by_source.items():
            for i in range(0, len(group), MAX_URLS_PER_CALL):
                chunk = group[i:i + MAX_URLS_PER_CALL]
                resp = rpc.call("mining", addr, stub.SubmitPages, mining_pb2.SubmitPagesRequest(
                    urls=[e.url for e in chunk], source=source,
                    heldout_urls=[e.url for e in chunk if e.split == "heldout"]),
                    settings.ingest_timeout_s)
                accepted += resp.accepted
                rejected += list(resp.rejected)
                pbar.update(len(chunk))
    return accepted, rejected


def _fetcher(settings: MiningSettings, allow_private: bool) -> Fetcher:
    guard = Guard(settings.allowed_hosts(), allow_private or settings.mining_allow_private)
    return Fetcher(guard, connect_timeout_s=settings.mining_connect_timeout_s,
                   read_timeout_s=settings.mining_read_timeout_s,
                   max_redirects=settings.mining_max_redirects)


def collect(args: argparse.Namespace, settings: MiningSettings, show_progress: bool = False
            ) -> tuple[list[events_pb2.PageDiscovered], list[str]]:
    """The events to publish, and problems worth telling the user about. With
    `show_progress`, bars on stderr count the sitemaps fetched and the WARC's bytes read."""
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
        pbar = progress.bar(show_progress, total=None, desc="reading sitemaps", unit="sitemap")

        def get(u: str) -> bytes:
            body = fetcher.get(u, max_bytes=sitemap.MAX_SITEMAP_BYTES).body
            pbar.update()
            return body

        try:
            urls, issues = sitemap.expand(args.sitemap, get, max_urls=args.max_pages)
        except (Blocked, FetchError) as exc:
            raise ConfigError(f"cannot read sitemap {args.sitemap}: {exc}") from None
        finally:
            pbar.close()
            fetcher.close()
        problems += issues
        for u in urls:
            add(u, args.source or "sitemap")
    if args.warc:
        blobs = open_blobstore(settings.blob_root)
        with db.transaction(settings.database_url) as conn, args.warc.open("rb") as raw, \
                progress.reading(show_progress, raw, args.warc.stat().st_size,
                                 f"reading {args.warc.name}") as fh:
            pages, skipped = warc.ingest(fh, conn, blobs, args.warc.name,
                                         max_html_bytes=settings.mining_max_html_bytes,
                                         max_image_bytes=settings.mining_max_image_bytes)
        problems += skipped
        for p in pages[: args.max_pages]:
            add(p.url, args.source or "warc", p.html)
    return events, problems


def main(argv: list[str] | None = None, show_progress: bool | None = None) -> int:
    """Submit the pages; progress bars on stderr when it is a terminal (or as told)."""
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
    settings = load_settings(IngestSettings)
    if show_progress is None:
        show_progress = progress.wanted()
    events, problems = collect(args, settings, show_progress)
    for p in problems[:20]:
        print(f"ingest: skipped {p}", file=sys.stderr)
    accepted, rejected = submit(settings, events, show_progress)
    for r in rejected[:20]:
        print(f"ingest: not queued {r}", file=sys.stderr)
    print(f"ingest: submitted {len(events)} pages to the mining service at "
          f"{settings.mining_target}: {accepted} queued"
          + (f", {len(rejected)} not queued" if rejected else "")
          + (f" ({len(problems)} skipped)" if problems else ""))
    return 0


if __name__ == "__main__":
    run_main("ingest", main)
