"""gRPC MiningService: submit pages (via the outbox, never a direct publish) and read status."""

from __future__ import annotations

import contextlib
import io

import grpc
from magiclens.v1 import events_pb2, mining_pb2, mining_pb2_grpc

from runtime import db, outbox
from runtime.ratelimit import CallerBuckets, RateLimited, caller_of
from services.mining import sitemap, store, warc
from services.mining.config import MiningSettings
from services.mining.fetch import FetchError
from services.mining.handlers import pages_topic
from services.mining.miner import Miner
from services.mining.netguard import Blocked
from services.mining.takedown import BadTakedown, Takedowns
from services.mining.urls import BadUrl, domain, normalise, url_hash

MAX_URLS_PER_CALL = 10_000


class MiningServicer(mining_pb2_grpc.MiningServiceServicer):
    def __init__(self, settings: MiningSettings, miner: Miner,
                 takedowns: Takedowns | None = None) -> None:
        self.settings = settings
        self.miner = miner
        self.takedowns = takedowns or Takedowns(settings, miner.blobs)
        self.topic = pages_topic(settings)
        self.submit_limits = CallerBuckets(settings.mining_submit_urls_per_minute / 60.0,
                                           settings.mining_submit_burst_urls)

    def SubmitPages(self, request, context):  # noqa: N802 (gRPC method name)
        if len(request.urls) > MAX_URLS_PER_CALL:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"at most {MAX_URLS_PER_CALL} URLs per call")
        caller = caller_of(context.invocation_metadata(), context.peer())
        try:  # what the request names now; a sitemap's or WARC's pages are charged below
            self.submit_limits.admit(caller, len(request.urls) + bool(request.sitemap_url)
                                     + bool(request.warc_gz))
        except RateLimited as exc:
            context.set_trailing_metadata((("retry-after", str(int(exc.retry_after_s))),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        source = request.source or "web"
        items: list[tuple[str, str, str]] = [(u, "", source) for u in request.urls]
        rejected: list[str] = []
        if request.sitemap_url:
            def get(u: str) -> bytes:
                return self.miner.fetcher.get(u, max_bytes=sitemap.MAX_SITEMAP_BYTES).body
            try:
                urls, problems = sitemap.expand(request.sitemap_url, get,
                                                max_urls=MAX_URLS_PER_CALL)
            except (Blocked, FetchError) as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"sitemap: {exc}")
            rejected += problems
            items += [(u, "", request.source or "sitemap") for u in urls]
        if request.warc_gz:
            with db.transaction(self.settings.database_url) as conn:
                pages, skipped = warc.ingest(
                    io.BytesIO(request.warc_gz), conn, self.miner.blobs, "grpc-upload",
                    max_html_bytes=self.settings.mining_max_html_bytes,
                    max_image_bytes=self.settings.mining_max_image_bytes)
            rejected += skipped
            items += [(p.url, p.html, request.source or "warc") for p in pages]
        self.submit_limits.charge(caller, len(items) - len(request.urls))
        heldout = set()
        for raw in request.heldout_urls[:MAX_URLS_PER_CALL]:
            with contextlib.suppress(BadUrl):
                heldout.add(normalise(raw))
        accepted = 0
        with db.transaction(self.settings.database_url) as conn:
            for raw, _html, src in items[:MAX_URLS_PER_CALL]:
                try:
                    url = normalise(raw)
                except BadUrl as exc:
                    rejected.append(f"{raw[:200]}: {exc}")
                    continue
                # Source and split live on the page row; the event names only the page (its
                # consumer trusts nothing else in it), and a WARC's HTML is in the archive.
                status = store.submit_page(conn, url, url_hash(url), domain(url), src[:100],
                                           "heldout" if url in heldout else "train")
                if status in ("mined", "skipped"):
                    rejected.append(f"{url}: already {status}")
                    continue
                if status == "deleted":
                    rejected.append(f"{url}: taken down")
                    continue
                outbox.enqueue(conn, self.topic, url, events_pb2.PageDiscovered(url=url))
                accepted += 1
        return mining_pb2.SubmitPagesResponse(accepted=accepted, rejected=rejected[:1000])

    def DeleteContent(self, request, context):  # noqa: N802
        which = request.WhichOneof("target")
        if which is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "name what to take down: image_id, page_url or domain")
        kind = {"image_id": "image", "page_url": "page", "domain": "domain"}[which]
        try:
            ids, pages = self.takedowns.take_down(kind, getattr(request, which), request.reason)
        except BadTakedown as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return mining_pb2.DeleteContentResponse(images_deleted=len(ids), pages_deleted=pages,
                                                image_ids=ids[:1000])

    def GetPageStatus(self, request, context):  # noqa: N802
        try:
            url = normalise(request.url)
        except BadUrl as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with db.connect(self.settings.database_url) as conn:
            row = store.page_status(conn, url_hash(url))
        if row is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown page {url}")
        return mining_pb2.PageStatus(url=row["url"], status=row["status"], reason=row["reason"],
                                     images=row["images"], rejected_images=row["rej"],
                                     pairs=row["pairs"])

    def GetMiningStatus(self, request, context):  # noqa: N802
        with db.connect(self.settings.database_url) as conn:
            c = store.mining_counts(conn)
        return mining_pb2.MiningStatus(pages_by_status=c["pages"], images_by_status=c["images"],
                                       pairs=c["pairs"], rejected_images=c["rejected"])


def registration(servicer: MiningServicer):
    return (mining_pb2_grpc.add_MiningServiceServicer_to_server, servicer,
            "magiclens.v1.MiningService")
