"""gRPC MiningService: submit pages (via the outbox, never a direct publish) and read status."""

from __future__ import annotations

import io

import grpc
from magiclens.v1 import events_pb2, mining_pb2, mining_pb2_grpc

from runtime import db, outbox
from services.mining import sitemap, warc
from services.mining.config import MiningSettings
from services.mining.fetch import FetchError
from services.mining.handlers import pages_topic
from services.mining.miner import Miner
from services.mining.netguard import Blocked
from services.mining.urls import BadUrl, domain, normalise, url_hash

MAX_URLS_PER_CALL = 10_000


class MiningServicer(mining_pb2_grpc.MiningServiceServicer):
    def __init__(self, settings: MiningSettings, miner: Miner) -> None:
        self.settings = settings
        self.miner = miner
        self.topic = pages_topic(settings)

    def SubmitPages(self, request, context):  # noqa: N802 (gRPC method name)
        if len(request.urls) > MAX_URLS_PER_CALL:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"at most {MAX_URLS_PER_CALL} URLs per call")
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
        accepted = 0
        with db.transaction(self.settings.database_url) as conn:
            for raw, html, src in items[:MAX_URLS_PER_CALL]:
                try:
                    url = normalise(raw)
                except BadUrl as exc:
                    rejected.append(f"{raw[:200]}: {exc}")
                    continue
                row = conn.execute(
                    "INSERT INTO pages (url, url_hash, domain, source) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (url_hash) DO UPDATE SET updated_at = pages.updated_at "
                    "RETURNING status, (xmax = 0) AS inserted",
                    (url, url_hash(url), domain(url), src[:100])).fetchone()
                if row["status"] in ("mined", "skipped"):
                    rejected.append(f"{url}: already {row['status']}")
                    continue
                outbox.enqueue(conn, self.topic, url,
                               events_pb2.PageDiscovered(url=url, html=html, source=src))
                accepted += 1
        return mining_pb2.SubmitPagesResponse(accepted=accepted, rejected=rejected[:1000])

    def GetPageStatus(self, request, context):  # noqa: N802
        try:
            url = normalise(request.url)
        except BadUrl as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with db.connect(self.settings.database_url) as conn:
            row = conn.execute(
                "SELECT p.url, p.status, coalesce(p.status_reason, '') AS reason, "
                "(SELECT count(*) FROM page_images WHERE page_id = p.page_id) AS images, "
                "(SELECT count(*) FROM image_rejections WHERE page_id = p.page_id) AS rej, "
                "(SELECT count(*) FROM pairs WHERE page_id = p.page_id) AS pairs "
                "FROM pages p WHERE url_hash = %s", (url_hash(url),)).fetchone()
        if row is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown page {url}")
        return mining_pb2.PageStatus(url=row["url"], status=row["status"], reason=row["reason"],
                                     images=row["images"], rejected_images=row["rej"],
                                     pairs=row["pairs"])

    def GetMiningStatus(self, request, context):  # noqa: N802
        with db.connect(self.settings.database_url) as conn:
            pages = {r["status"]: r["n"] for r in conn.execute(
                "SELECT status, count(*) AS n FROM pages GROUP BY status")}
            images = {r["status"]: r["n"] for r in conn.execute(
                "SELECT status, count(*) AS n FROM images GROUP BY status")}
            pairs = conn.execute("SELECT count(*) AS n FROM pairs").fetchone()["n"]
            rej = conn.execute("SELECT count(*) AS n FROM image_rejections").fetchone()["n"]
        return mining_pb2.MiningStatus(pages_by_status=pages, images_by_status=images,
                                       pairs=pairs, rejected_images=rej)


def registration(servicer: MiningServicer):
    return (mining_pb2_grpc.add_MiningServiceServicer_to_server, servicer,
            "magiclens.v1.MiningService")
