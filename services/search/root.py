"""The search root: SearchService over the shards.

    python -m services.search.root    (MAGICLENS_SHARDS=host:port,host:port; Triton via
                                       MAGICLENS_TRITON_URL)

A query (image bytes | allow-listed URL | pool image id, + instruction; or an instruction
alone: text-to-image search through the model's text-query head) is embedded by Triton
in the model version the shards serve, fanned out to every shard with a deadline, and the
per-shard top-k lists are merged. A shard that does not answer in time makes the response
`partial` (with `missing_shards`) instead of failing it; no shard at all is UNAVAILABLE.

Unless the request sets `include_query_image`, the query image and its copies in the pool
are left out of the hits, whatever form the query came in: the pool image it is (by id or by
exact bytes), any image with the same bytes, and near-duplicates by the miner's own rule
(pHash + colour, runtime/near_duplicates.py): re-encoded or resized copies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import grpc
import httpx
from magiclens.v1 import search_pb2, search_pb2_grpc

from runtime import auth, db, rpc, tracing
from runtime.blobstore import open_blobstore
from runtime.bus import Throttle
from runtime.config import load_settings, run_main
from runtime.embedding_client import (
    EmbeddingClient,
    EmbeddingError,
    ModelNotLoadedError,
    NoTextPathError,
)
from runtime.errors import UnavailableError
from runtime.image_input import BadInput, decode_image
from runtime.limits import MAX_IMAGE_BYTES, MAX_INSTRUCTION_CHARS, MAX_K
from runtime.logs import setup_logging
from runtime.near_duplicates import Fingerprint, fingerprint, near, warm_up
from runtime.service import Service
from services.search import store
from services.search.config import RootSettings

log = logging.getLogger("search-root")
SHARD_MAX_K = 1000  # the most a shard returns (services/search/shard.py)


def fetch_url(url: str, allow: set[str], timeout_s: float) -> bytes:
    """Fetch a query image by URL: http(s) only, host on the allow-list, no redirects, size
    capped while streaming (SSRF: arbitrary hosts, incl. internal ones, are refused)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("image_url must be an http(s) URL")
    if parts.hostname.lower() not in allow:
        raise BadInput(f"host {parts.hostname} is not on the URL allow-list")
    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=False) as r:
            if r.status_code != 200:
                raise BadInput(f"image_url answered HTTP {r.status_code}")
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > MAX_IMAGE_BYTES:
                    raise BadInput("image at image_url is too large")
    except httpx.HTTPError as exc:
        raise BadInput(f"could not fetch image_url ({type(exc).__name__})") from None
    return bytes(data)


@dataclass
class QueryImage:
    """A query image: its bytes, and what its copies in the pool look like (empty when the
    request keeps them)."""

    data: bytes
    image_id: int | None = None  # the pool image it is (by id, or by exact bytes)
    fp: Fingerprint | None = None
    hashes: set[str] = field(default_factory=set)  # content hashes that are the same image


_outage_log = Throttle(30.0)


def _outage_as_unavailable(method):
    """A database outage is UNAVAILABLE (retry later), with one warning per 30 s instead of
    an UNKNOWN status and a traceback per request."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:
            if not db.is_outage(exc):
                raise
            if _outage_log.due():
                log.warning("database unavailable; answering UNAVAILABLE",
                            extra={"error": str(exc)[:300]})
            context.abort(grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry")

    return wrapper


class Root(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, settings: RootSettings) -> None:
        self.s = settings
        self.addresses = [a.strip() for a in settings.shards.split(",") if a.strip()]
        self.stubs = [search_pb2_grpc.ShardServiceStub(rpc.channel(a, role=auth.READ))
                      for a in self.addresses]
        # Query embeddings run here while the request's thread does the rest.
        self.pool = futures.ThreadPoolExecutor(max_workers=settings.max_inflight + 4,
                                               thread_name_prefix="embed")
        self.embedder = EmbeddingClient(settings.triton_url, settings.embed_timeout_s)
        self.db = db.Pool(settings.database_url, name="search-root",
                          max_size=settings.db_pool_size)
        self.slots = threading.BoundedSemaphore(settings.max_inflight)
        self.blobs = open_blobstore(settings.blob_root)
        self.allow = {h.strip().lower() for h in settings.url_allowlist.split(",") if h.strip()}
        self._versions: dict[int, str] = {}
        self._versions_at = 0.0
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- query image
    def _query_bytes(self, q, context) -> tuple[bytes, dict | None]:
        """The query image's bytes, and its pool row when the query names a pool image."""
        which = q.WhichOneof("source")
        if which == "image_id":
            with self.db.connection() as conn:
                row = store.live_image(conn, q.image_id)
            if row is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"image {q.image_id} is not in the pool")
            return self.blobs.get(row["blob_uri"]), row
        if which == "image_bytes":
            data = q.image_bytes
            if len(data) > MAX_IMAGE_BYTES:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "image_bytes too large")
            return data, None
        if which == "image_url":
            return fetch_url(q.image_url, self.allow, self.s.url_fetch_timeout_s), None
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      "give a query image, an instruction, or both")
        raise AssertionError("unreachable")  # abort raises

    def _query_image(self, q, data: bytes, row: dict | None, include: bool) -> QueryImage:
        """What identifies the query image's copies in the pool (unless they are to be kept):
        its own pool id (by id or by exact bytes) and its fingerprint. Bytes from outside
        the pool are validated here (BadInput)."""
        if row is not None:  # a pool image, by id
            if include:
                return QueryImage(data)
            if row["phash"] is not None:  # as the miner stored it (an SVG's of its raster)
                fp = Fingerprint(row["content_hash"], row["phash"], bytes(row["colour_sig"] or b""))
            else:
                try:
                    fp = fingerprint(data)
                except Exception as exc:  # a pool blob Pillow cannot read: exclude the id only
                    log.warning("query image not fingerprinted",
                                extra={"image_id": q.image_id, "error": type(exc).__name__})
                    return QueryImage(data, q.image_id, hashes={row["content_hash"]})
            return QueryImage(data, q.image_id, fp, {row["content_hash"], fp.content_hash})
        rgb = decode_image(data)  # validates format, size and dimensions (BadInput)
        if include:
            return QueryImage(data)
        digest = hashlib.sha256(data).hexdigest()
        try:
            fp: Fingerprint | None = fingerprint(data, rgb)
        except Exception as exc:  # decodable for the model, odd for pHash: exact copies only
            log.warning("query image not fingerprinted", extra={"error": type(exc).__name__})
            fp = None
        with self.db.connection() as conn:
            same = store.image_id_by_content_hash(conn, digest)
        return QueryImage(data, same, fp, {digest})

    def _is_copy(self, qi: QueryImage, row: dict | None) -> bool:
        """A candidate hit that is the query image: same bytes, or a near-duplicate by the
        miner's rule (pHash AND colour). Rows without a pHash match by bytes only."""
        if row is None:
            return False
        if row["content_hash"] in qi.hashes:
            return True
        return (qi.fp is not None and row["phash"] is not None
                and near(qi.fp.phash, qi.fp.colour_sig, row["phash"],
                         bytes(row["colour_sig"] or b""), self.s.duplicate_phash_threshold,
                         self.s.duplicate_colour_threshold))

    # ---------------------------------------------------------------- fan-out
    def _shard_versions(self, deadline: float) -> dict[int, str]:
        """Which model version each shard serves (cached 1 s; refreshed in parallel)."""
        with self._lock:
            cached = dict(self._versions)
            fresh = self._versions_at
        if cached and time.monotonic() - fresh < 1.0:
            return cached
        futs = {i: stub.GetShardStatus.future(search_pb2.GetShardStatusRequest(),
                                              timeout=max(0.05, deadline - time.monotonic()))
                for i, stub in enumerate(self.stubs)}
        out = {}
        for i, f in futs.items():
            with contextlib.suppress(grpc.RpcError):
                out[i] = f.result().model_version
        with self._lock:
            self._versions, self._versions_at = out, time.monotonic()
        return out

    def _fan_out(self, queries: list[tuple[list[float], list[int]]], k: int,
                 exclude: list[int], filters, deadline: float
                 ) -> tuple[list[tuple[int, float]], set[int], bool]:
        """Ask every serving shard for its top `k`; (merged best-first hits, shards that did
        not answer, whether some shard may hold more than it returned)."""
        calls = []
        for vector, shard_ids in queries:
            req = search_pb2.SearchShardRequest(query=vector, k=k, filters=filters,
                                                exclude_image_ids=exclude)
            for i in shard_ids:
                timeout = max(0.01, min(deadline, time.monotonic() + self.s.shard_timeout_s)
                              - time.monotonic())
                calls.append((i, self.stubs[i].SearchShard.future(req, timeout=timeout)))
        missing: set[int] = set()
        answers = []
        for i, fut in calls:
            try:
                answers.append(fut.result().hits)
            except grpc.RpcError as exc:
                missing.add(i)
                log.warning("shard failed", extra={"shard": i, "code": exc.code().name})
                with self._lock:
                    self._versions.pop(i, None)
        with tracing.span("merge", lists=len(answers)):
            best: dict[int, float] = {}
            for got in answers:
                for h in got:
                    if h.score > best.get(h.image_id, -2.0):
                        best[h.image_id] = h.score
            more = any(len(got) >= k for got in answers)
            return sorted(best.items(), key=lambda t: -t[1]), missing, more

    def _embed(self, data: bytes, instruction: str, version: str, deadline: float):
        with tracing.span("embed query (Triton)", model_version=version):
            return self.embedder.embed_queries([data], [instruction], model_version=version,
                                               timeout_s=max(0.1, deadline - time.monotonic()))

    def _embed_text(self, _data: bytes, instruction: str, version: str, deadline: float):
        with tracing.span("embed text query (Triton)", model_version=version):
            return self.embedder.embed_text_queries(
                [instruction], model_version=version,
                timeout_s=max(0.1, deadline - time.monotonic()))

    def _embedding(self, future, deadline: float, context):
        """The query embedding from its future, with the embedding errors as gRPC codes."""
        try:
            return future.result()
        except ModelNotLoadedError as exc:  # e.g. Triton still loading a new version
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except NoTextPathError as exc:  # a text-only query, a version without the head
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except EmbeddingError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except UnavailableError as exc:
            if time.monotonic() >= deadline:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "embedding timed out")
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    @_outage_as_unavailable
    def Search(self, request, context):  # noqa: N802
        t0 = time.monotonic()
        k = request.k or 10
        if not 1 <= k <= MAX_K:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be in 1..{MAX_K}")
        if len(request.instruction) > MAX_INSTRUCTION_CHARS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"instruction longer than {MAX_INSTRUCTION_CHARS} characters")
        remaining = context.time_remaining()
        deadline = t0 + min(remaining if remaining is not None else 30.0, 30.0)
        if not self.slots.acquire(timeout=max(0.0, min(self.s.queue_wait_s,
                                                       deadline - time.monotonic()))):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.s.max_inflight} searches are running and the queue wait "
                          f"({self.s.queue_wait_s:g} s) ran out; retry with back-off")
        try:
            return self._search(request, context, k, deadline)
        finally:
            self.slots.release()

    def _search(self, request, context, k: int, deadline: float):
        # Text-to-image: no query image, an instruction. Nothing is left out of the hits
        # (there is no query image to have copies of).
        text_only = request.query.WhichOneof("source") is None and bool(request.instruction)
        if text_only and not request.instruction.strip():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "a text-only search needs a non-empty instruction")
        include = request.include_query_image or text_only
        try:
            with tracing.span("query bytes"):
                data, row = (b"", None) if text_only else self._query_bytes(request.query,
                                                                            context)
        except BadInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        versions = self._shard_versions(min(deadline, time.monotonic() + self.s.shard_timeout_s))
        by_version: dict[str, list[int]] = {}
        for i in range(len(self.stubs)):
            if versions.get(i):
                by_version.setdefault(versions[i], []).append(i)
        if not by_version:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no search shard is serving")
        # Triton embeds while this thread validates the image and finds its pool copies.
        embed = tracing.in_current_context(self._embed_text if text_only else self._embed)
        embeddings = {v: self.pool.submit(embed, data, request.instruction, v, deadline)
                      for v in by_version}
        try:
            with tracing.span("query image (decode, fingerprint, copies)"):
                qi = (QueryImage(b"") if text_only
                      else self._query_image(request.query, data, row, include))
        except BadInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        queries: list[tuple[list[float], list[int]]] = []
        served_versions = []
        for version, shard_ids in by_version.items():
            with tracing.span("wait for embedding"):
                emb = self._embedding(embeddings[version], deadline, context)
            served_versions.append(emb.model_version)
            queries.append((emb.vectors[0].tolist(), shard_ids))
        # The query image's copies are dropped after the merge (their fingerprints are in
        # Postgres, not in the shards), so ask for a margin more; when copies eat the margin
        # and the shards hold more, ask again for more, up to `duplicate_rounds` times.
        exclude = [qi.image_id] if qi.image_id is not None else []
        fetch = k if include else min(SHARD_MAX_K, k + self.s.duplicate_margin)
        missing = {i for i in range(len(self.stubs)) if i not in versions}
        dropped: list[int] = []
        rows: dict[int, dict] = {}
        for round_ in range(1 if include else self.s.duplicate_rounds):
            with tracing.span("fan-out", fetch=fetch):
                merged, failed, more = self._fan_out(queries, fetch, exclude + dropped,
                                                     request.filters, deadline)
            missing |= failed
            if len(missing) == len(self.stubs):
                if time.monotonic() >= deadline:
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no shard answered in time")
                context.abort(grpc.StatusCode.UNAVAILABLE, "no search shard answered")
            wanted = [i for i, _ in (merged[:k] if include else merged) if i not in rows]
            with tracing.span("context look-up", candidates=len(wanted)), \
                    self.db.connection() as conn:  # fingerprints and hit context at once
                rows.update(store.candidates(conn, wanted))
            # A hit without a row was taken down after its shard last heard of it: never
            # returned (the shard drops its vector when the takedown event arrives).
            gone = {i for i in wanted if i not in rows}
            if include:
                top = [(i, sc) for i, sc in merged[:k] if i not in gone]
                break
            copies = {i for i, _ in merged if self._is_copy(qi, rows.get(i))}
            dropped += sorted(copies | gone)
            top = [(i, sc) for i, sc in merged if i not in copies and i not in gone][:k]
            if (len(top) >= k or not (copies or gone) or not more or fetch >= SHARD_MAX_K
                    or round_ + 1 == self.s.duplicate_rounds or time.monotonic() >= deadline):
                break
            fetch = min(SHARD_MAX_K, fetch * 4)
        if dropped:
            log.info("query image copies left out", extra={"image_ids": dropped[:20]})
        out = search_pb2.SearchResponse(model_version=served_versions[0],
                                        partial=bool(missing),
                                        missing_shards=sorted(missing))
        for i, score in top:
            r = rows.get(i)
            hit = out.hits.add(image_id=i, score=score)
            if r:
                hit.image_url = r["source_url"]
                hit.context.page_url = r["page_url"]
                hit.context.page_title = r["page_title"]
                hit.context.alt_text = r["alt"]
                hit.context.caption = r["caption"]
                hit.context.context_text = r["context_text"]
        return out

    @_outage_as_unavailable
    def GetIndexStatus(self, request, context):  # noqa: N802
        futs = [s.GetShardStatus.future(search_pb2.GetShardStatusRequest(),
                                        timeout=self.s.shard_timeout_s) for s in self.stubs]
        up, n, versions = 0, 0, []
        for f in futs:
            try:
                st = f.result()
            except grpc.RpcError:
                continue
            up += 1
            n += st.num_vectors
            versions.append(st.model_version)
        version = max(set(versions), key=versions.count) if versions else ""
        with self.db.connection() as conn:
            p50 = store.freshness_p50(conn, version) if version else 0.0
        return search_pb2.IndexStatus(model_version=version, num_vectors=n,
                                      shards=len(self.stubs), shards_up=up, freshness_p50_s=p50)


def main() -> int:
    settings = load_settings(RootSettings)
    setup_logging("search-root", settings.log_level)
    service = Service("search-root", settings)
    service.prepare(topics=False)
    root = Root(settings)
    warm_up()
    # A thread for every call admitted: one that waited for a thread waited unseen, beyond
    # `queue_wait_s` (64 clients: p50 1.2 s with 32 threads). Past `max_inflight +
    # max_queued` calls (and a few for health and status) the rest are refused at once.
    calls = settings.max_inflight + settings.max_queued + 4
    service.add_grpc([(search_pb2_grpc.add_SearchServiceServicer_to_server, root,
                       "magiclens.v1.SearchService")], max_workers=calls,
                     max_concurrent_rpcs=calls)
    log.info("search root ready", extra={"port": service.grpc.port if service.grpc else 0,
                                         "shards": ",".join(root.addresses)})
    return service.run_forever()


if __name__ == "__main__":
    run_main("search-root", main)
