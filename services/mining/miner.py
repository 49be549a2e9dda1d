"""Mine one page: fetch, parse, download and validate images, dedupe, store, emit events.

Crash safety comes from the transaction shape. A page is first *registered* (status
`discovered`, committed on its own), then mined inside the consumer's transaction while that
transaction holds the page row `FOR UPDATE SKIP LOCKED`:
- a worker killed mid-page rolls everything back (images, links, pairs, outbox events, the
  status change); the page is still `discovered`, so redelivery or the reconciler redo it;
- a second worker (or a reconciler) that meets a locked page skips it — nobody mines twice;
- blobs are content-addressed, so a half-finished attempt leaves nothing that differs.
Network and decoding happen before any write; only the final store step writes.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from magiclens.v1 import events_pb2
from PIL import Image

from runtime import db, metrics, outbox
from runtime.blobstore import BlobStore, open_blobstore
from runtime.bus import Event, InvalidEvent
from runtime.near_duplicates import hamming, near
from runtime.topics import IMAGES_MINED, PAIRS_MINED
from services.mining import archive, store
from services.mining.config import MiningSettings
from services.mining.fetch import Fetcher, FetchError
from services.mining.htmlparse import Candidate, parse_page
from services.mining.imaging import (
    Decoded,
    Policy,
    Rejection,
    declared_size_reason,
    decode_data_uri,
    decode_image,
    junk_reason,
)
from services.mining.netguard import Blocked, Guard, Unresolved
from services.mining.urls import BadUrl, display, domain, normalise, url_hash

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")
STAGE_SECONDS = metrics.counter("magiclens_mining_stage_seconds_total",
                                "Time per mining stage", ["stage"])
PAGES = metrics.counter("magiclens_mining_pages_total", "Pages finished", ["status"])
IMAGES = metrics.counter("magiclens_mining_images_total", "Images stored (new)")
REJECTED = metrics.counter("magiclens_mining_rejections_total", "Image candidates rejected")


@dataclass
class Outcome:
    status: str                       # mined | failed | skipped
    reason: str = ""
    http_status: int | None = None
    title: str = ""
    images: list[tuple[Candidate, Decoded]] = field(default_factory=list)
    rejections: list[tuple[str, str]] = field(default_factory=list)  # (src_url, reason)


def _warm_up() -> None:
    """Import the phash DCT (scipy) once, up front, not inside the first page's threads."""
    tiny = io.BytesIO()
    Image.new("RGB", (80, 80), (200, 30, 30)).save(tiny, "PNG")
    decode_image(tiny.getvalue(), Policy(min_side=1))


class Miner:
    def __init__(self, settings: MiningSettings, blobs: BlobStore | None = None,
                 worker_id: str | None = None) -> None:
        self.settings = settings
        self.blobs = blobs or open_blobstore(settings.blob_root)
        self.worker_id = worker_id or settings.mining_worker_id or \
            f"{socket.gethostname()}:{os.getpid()}"
        self.guard = Guard(settings.allowed_hosts(), settings.mining_allow_private)
        self.fetcher = Fetcher(
            self.guard, connect_timeout_s=settings.mining_connect_timeout_s,
            read_timeout_s=settings.mining_read_timeout_s,
            deadline_s=settings.mining_fetch_deadline_s,
            max_redirects=settings.mining_max_redirects,
            per_host_concurrency=settings.mining_per_host_concurrency,
            per_host_delay_s=settings.mining_per_host_delay_s,
            user_agent=settings.mining_user_agent)
        self.policy = Policy(max_pixels=settings.mining_max_image_pixels,
                             min_side=settings.mining_min_side,
                             max_aspect=settings.mining_max_aspect,
                             max_svg_bytes=settings.mining_max_svg_bytes,
                             svg_render_px=settings.mining_svg_render_px,
                             max_svg_render_pixels=settings.mining_max_svg_render_pixels,
                             svg_memory_cap_bytes=settings.mining_svg_memory_cap_bytes,
                             svg_render_timeout_s=settings.mining_svg_render_timeout_s,
                             max_data_uri_bytes=settings.mining_max_data_uri_bytes)
        # Pillow's own guard: warn above the limit (turned into an error), refuse above 2x.
        Image.MAX_IMAGE_PIXELS = settings.mining_max_image_pixels
        self.pool = ThreadPoolExecutor(settings.mining_fetch_threads,
                                       thread_name_prefix="mining-fetch")
        self._reg: psycopg.Connection | None = None
        _warm_up()
        self._lock = threading.Lock()
        self.timings: dict[str, float] = {"fetch": 0.0, "decode": 0.0, "hash": 0.0, "db": 0.0}
        self.counts = {"pages": 0, "images": 0, "rejections": 0}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()
        if self._reg is not None:
            self._reg.close()

    def _add_time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        STAGE_SECONDS.labels(stage).inc(seconds)

    # ------------------------------------------------------------------ registration
    def register(self, url: str, source: str, split: str, status: str = "discovered",
                 reason: str | None = None) -> None:
        """Insert the page row in its own committed transaction (idempotent)."""
        if self._reg is None or self._reg.closed:
            self._reg = db.connect(self.settings.database_url, autocommit=True)
        store.register_page(self._reg, url, url_hash(url), domain(url), (source or "web")[:100],
                            split if split in ("train", "heldout") else "train", status, reason)

    # ------------------------------------------------------------------ handler
    def handle(self, conn: psycopg.Connection, event: Event) -> None:
        """Consumer handler; idempotent by page status, safe to run in several workers.

        From the event only the URL is used: anyone able to write the topic could send one
        (an external producer sends JSON on purpose). A page's source and split are what
        Postgres holds (SubmitPages, an admin call, records them; a page first seen here is
        source "web", split "train"), and its HTML is fetched or read from the WARC archive,
        never taken from the event."""
        msg = event.message
        try:
            url = normalise(msg.url)
        except BadUrl as exc:
            # Dead-lettered with the reason (visible, never retried); later events go on.
            raise InvalidEvent(f"page URL refused: {exc}") from None
        self.register(url, "web", "train")
        row = store.lock_page(conn, url_hash(url), skip_locked=True)
        if row is None:
            return  # another worker holds it right now
        # A failed page (network, DNS, timeout) is tried again, up to max attempts: by a
        # redelivered event, or by the reconciler once its back-off has passed.
        retry_failed = (row["status"] == "failed"
                        and row["attempts"] < self.settings.mining_max_attempts)
        if row["status"] not in ("discovered", "fetching") and not retry_failed:
            return  # mined, skipped, or taken down ('deleted'): never mined again
        if store.domain_taken_down(conn, domain(url)):
            store.finish_page(conn, row["page_id"], "deleted", "taken down: its domain",
                              self.worker_id)
            return
        outcome = self.mine(conn, url, None)
        t0 = time.perf_counter()
        self.store(conn, row, outcome)
        self._add_time("db", time.perf_counter() - t0)
        PAGES.labels(outcome.status).inc()
        if outcome.status == "mined":
            metrics.pipeline("pages_mined")
        with self._lock:
            self.counts["pages"] += 1
        log.info("page done", extra={"url": url, "status": outcome.status,
                                     "reason": outcome.reason, "images": len(outcome.images),
                                     "rejected": len(outcome.rejections)})

    def reconcile(self) -> Iterator[Event]:
        """Pages that Postgres says are still pending (their events may be lost)."""
        with db.connect(self.settings.database_url) as conn:
            rows = store.pending_pages(conn, self.settings.mining_reconcile_min_age_s,
                                       retry_backoff_s=self.settings.mining_retry_backoff_s,
                                       max_attempts=self.settings.mining_max_attempts)
        for r in rows:
            yield Event(self.settings.mining_pages_topic, r["url"], "",
                        events_pb2.PageDiscovered(url=r["url"], source=r["source"],
                                                  split=r["split"]))

    # ------------------------------------------------------------------ mining (no writes)
    def _page_html(self, conn: psycopg.Connection, url: str) -> tuple[bytes, int | None, str]:
        found = archive.lookup(conn, [url]).get(url)
        if found is not None:
            ctype, uri = found
            if not ctype.startswith(HTML_TYPES):
                raise FetchError(f"unexpected content-type '{ctype}'")
            body = self.blobs.get(uri)
            cap = self.settings.mining_max_html_bytes
            return body[:cap], 200, (f"HTML truncated at {cap} bytes" if len(body) > cap else "")
        resp = self.fetcher.get(url, max_bytes=self.settings.mining_max_html_bytes,
                                accept=HTML_TYPES, truncate=True)
        note = f"HTML truncated at {len(resp.body)} bytes" if resp.truncated else ""
        return resp.body, resp.status, note

    def mine(self, conn: psycopg.Connection, url: str, html: bytes | None) -> Outcome:
        t0 = time.perf_counter()
        note, http_status = "", None
        try:
            if html is not None:
                cap = self.settings.mining_max_html_bytes
                if len(html) > cap:
                    html, note = html[:cap], f"HTML truncated at {cap} bytes"
            else:
                html, http_status, note = self._page_html(conn, url)
        except Unresolved as exc:  # may pass: failed, retried with back-off by the reconciler
            return Outcome("failed", str(exc))
        except Blocked as exc:
            return Outcome("skipped", str(exc))
        except FetchError as exc:
            status = "skipped" if str(exc).startswith("unexpected content-type") else "failed"
            return Outcome(status, str(exc))
        finally:
            self._add_time("fetch", time.perf_counter() - t0)
        parsed = parse_page(html, url, self.settings.mining_max_images_per_page)
        out = Outcome("mined", note, http_status, parsed.title)
        out.rejections += [(r.url, r.reason) for r in parsed.rejected]
        todo: list[Candidate] = []
        for c in parsed.candidates:
            reason = junk_reason(c.url, c.classes, c.alt) or \
                declared_size_reason(c.declared_w, c.declared_h, self.policy.min_side)
            if reason:
                out.rejections.append((c.url, reason))
            else:
                todo.append(c)
        archived = archive.lookup(conn, [c.url for c in todo if not c.url.startswith("data:")])
        results = list(self.pool.map(lambda c: self._image(c, archived.get(c.url)), todo))
        seen: dict[str, int] = {}
        for c, res in zip(todo, results, strict=True):
            if isinstance(res, str):
                out.rejections.append((c.url, res))
            elif res.content_hash in seen:
                out.rejections.append((c.url, f"same image as position {seen[res.content_hash]}"))
            else:
                seen[res.content_hash] = c.position
                out.images.append((c, res))
        return out

    def _image(self, c: Candidate, archived: tuple[str, str] | None) -> Decoded | str:
        """Bytes → Decoded, or the rejection reason (never raises for bad input)."""
        t0 = time.perf_counter()
        try:
            if c.url.startswith("data:"):
                data, _ = decode_data_uri(c.url, self.policy.max_data_uri_bytes)
            elif archived is not None:
                ctype, uri = archived
                if not ctype.startswith(IMAGE_TYPES):
                    return f"not an image (content-type '{ctype}')"
                data = self.blobs.get(uri)
                if len(data) > self.settings.mining_max_image_bytes:
                    return f"too large ({len(data)} bytes)"
            else:
                resp = self.fetcher.get(c.url, max_bytes=self.settings.mining_max_image_bytes,
                                        accept=IMAGE_TYPES)
                data = resp.body
        except Rejection as exc:
            return str(exc)
        except Blocked as exc:
            return str(exc)
        except FetchError as exc:
            msg = str(exc)
            if msg.startswith("unexpected content-type"):
                return "not an image (" + msg.removeprefix("unexpected ") + ")"
            return msg
        finally:
            self._add_time("fetch", time.perf_counter() - t0)
        timings: dict[str, float] = {}
        try:
            return decode_image(data, self.policy, timings)
        except Rejection as exc:
            return str(exc)
        except Exception as exc:  # a decoder bug must not lose the rest of the page
            log.warning("image decoder failed", extra={"url": display(c.url), "error": repr(exc)})
            return f"decoder error ({type(exc).__name__})"
        finally:
            for stage, s in timings.items():
                self._add_time(stage, s)

    # ------------------------------------------------------------------ store (one transaction)
    def store(self, conn: psycopg.Connection, page: dict, out: Outcome) -> None:
        page_id = page["page_id"]
        if out.status != "mined":
            store.finish_page(conn, page_id, out.status, out.reason[:1000], self.worker_id)
            return
        thr = self.settings.mining_phash_threshold
        ts = Timestamp()
        ts.FromDatetime(page["discovered_at"])
        # 1. In page order, decide what each candidate is: an existing image (exact or near
        #    duplicate), a near-duplicate of an earlier candidate here, or a new image.
        plan: list[tuple[Candidate, Decoded, int | None]] = []  # image_id None = new
        fresh: list[Decoded] = []
        for c, d in sorted(out.images, key=lambda cd: cd[0].position):
            twin = next((f for f in fresh if self._near(f.phash, f.colour_sig, d)), None)
            if twin is not None:
                out.rejections.append((c.url, "near-duplicate of an earlier image on this page"))
                continue
            existing = self._existing(conn, d, thr)
            plan.append((c, d, existing))
            if existing is None:
                fresh.append(d)
        # 2. Insert new images in content-hash order, so concurrent workers take the unique
        #    index's locks in one order (no deadlocks); a lost race links the winner's row.
        ids: dict[str, tuple[int, bool]] = {}
        by_hash = {d.content_hash: (c, d) for c, d, existing in plan if existing is None}
        # Bytes are stored only for new images: an image already stored (or taken down,
        # whose bytes must not come back) keeps its own.
        uris = {h: self.blobs.put(d.data) for h, (_, d) in by_hash.items()}
        for h in sorted(by_hash):
            c, d = by_hash[h]
            ids[h] = self._insert_image(conn, page_id, c, d, uris[h], out.title)
        # 3. Link in page order; announce images this transaction created.
        linked: dict[int, tuple[int, Decoded]] = {}  # image_id -> (position, decoded)
        new_images = 0
        for c, d, existing in plan:
            image_id, new = (existing, False) if existing is not None else ids[d.content_hash]
            if image_id in linked:
                out.rejections.append((c.url, f"near-duplicate of image {image_id} on this page"))
                continue
            store.link_image(conn, page_id, image_id, c.position, display(c.url), c.alt, c.title,
                             c.caption, c.context)
            linked[image_id] = (c.position, d)
            if new:
                new_images += 1
                outbox.enqueue(conn, IMAGES_MINED, image_id, events_pb2.ImageMined(
                    image_id=image_id, page_id=page_id, blob_uri=uris[d.content_hash],
                    content_hash=d.content_hash, width=d.width, height=d.height,
                    page_discovered_at=ts))
        for src, reason in out.rejections:
            store.reject_candidate(conn, page_id, display(src), reason[:1000])
        pair_ids = self._pairs(conn, page_id, linked, thr)
        if pair_ids:
            outbox.enqueue(conn, PAIRS_MINED, page_id,
                           events_pb2.PairsMined(page_id=page_id, pair_ids=pair_ids))
        store.finish_mined_page(conn, page_id, out.reason or None, out.title or None,
                                out.http_status, self.worker_id)
        IMAGES.inc(new_images)
        metrics.pipeline("images_stored", new_images)
        metrics.pipeline("pairs_mined", len(pair_ids))
        REJECTED.inc(len(out.rejections))
        with self._lock:
            self.counts["images"] += new_images
            self.counts["rejections"] += len(out.rejections)

    def _existing(self, conn: psycopg.Connection, d: Decoded, thr: int) -> int | None:
        """An image already stored with these bytes, or with a phash within `thr` bits."""
        found = store.image_by_content_hash(conn, d.content_hash)
        if found is not None:
            return found
        for row in store.near_phash(conn, d.phash, thr):
            if self._near(row["phash"], bytes(row["colour_sig"] or b""), d):
                return row["image_id"]
        return None

    def _near(self, phash: int, colour_sig: bytes, d: Decoded) -> bool:
        """Near-duplicate: the same structure (pHash) AND the same colours (skin tones and
        recolourings are different images, not copies)."""
        return near(phash, colour_sig, d.phash, d.colour_sig,
                    self.settings.mining_phash_threshold, self.settings.mining_colour_threshold)

    def _insert_image(self, conn: psycopg.Connection, page_id: int, c: Candidate, d: Decoded,
                      uri: str, page_title: str) -> tuple[int, bool]:
        """(image_id, created by this transaction)."""
        image_id = store.insert_image(conn, {
            "content_hash": d.content_hash, "phash": d.phash, "colour_sig": d.colour_sig or None,
            "source_url": display(c.url), "first_page_id": page_id, "blob_uri": uri,
            "mime_type": d.mime, "width": d.width, "height": d.height, "alt_text": c.alt,
            "title_text": c.title, "caption": c.caption, "context_text": c.context,
            "page_title": page_title or None})
        if image_id is not None:
            return image_id, True
        return store.image_by_content_hash(conn, d.content_hash), False

    def _pairs(self, conn: psycopg.Connection, page_id: int,
               linked: dict[int, tuple[int, Decoded]], thr: int) -> list[int]:
        """Ordered pairs of the page's images, nearest on the page first, capped."""
        items = sorted(linked.items(), key=lambda kv: kv[1][0])
        cands = []
        for qa, (qpos, qd) in items:
            for ta, (tpos, td) in items:
                if qa == ta:
                    continue
                dist = hamming(qd.phash, td.phash)
                if self._near(qd.phash, qd.colour_sig, td):
                    continue  # near-duplicates teach nothing
                cands.append((abs(qpos - tpos), min(qpos, tpos), qpos, qa, ta, dist))
        cands.sort()
        pair_ids = []
        for *_, qa, ta, dist in cands[: self.settings.mining_max_pairs_per_page]:
            pair_id = store.insert_pair(conn, page_id, qa, ta, 1.0 - dist / 64.0)
            if pair_id is not None:
                pair_ids.append(pair_id)
        return pair_ids
