"""The search root: SearchService over the shards.

    python -m services.search.root    (MAGICLENS_SHARDS=host:port,host:port; Triton via
                                       MAGICLENS_TRITON_URL)

A query (image bytes | allow-listed URL | pool image id, + instruction) is embedded by Triton
in the model version the shards serve, fanned out to every shard with a deadline, and the
per-shard top-k lists are merged. A shard that does not answer in time makes the response
`partial` (with `missing_shards`) instead of failing it; no shard at all is UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from concurrent import futures
from urllib.parse import urlsplit

import grpc
import httpx
from magiclens.v1 import search_pb2, search_pb2_grpc

from runtime import db
from runtime.blobstore import open_blobstore
from runtime.config import load_settings, run_main
from runtime.embedding_client import EmbeddingClient, EmbeddingError, ModelNotLoadedError
from runtime.errors import UnavailableError
from runtime.image_input import BadInput, decode_image
from runtime.limits import MAX_IMAGE_BYTES, MAX_INSTRUCTION_CHARS, MAX_K
from runtime.logs import setup_logging
from runtime.service import Service
from services.search import store
from services.search.config import RootSettings

log = logging.getLogger("search-root")


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


class Root(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, settings: RootSettings) -> None:
        self.s = settings
        self.addresses = [a.strip() for a in settings.shards.split(",") if a.strip()]
        self.stubs = [search_pb2_grpc.ShardServiceStub(grpc.insecure_channel(a))
                      for a in self.addresses]
        self.pool = futures.ThreadPoolExecutor(max_workers=4 * max(1, len(self.stubs)))
        self.embedder = EmbeddingClient(settings.triton_url, settings.embed_timeout_s)
        self.blobs = open_blobstore(settings.blob_root)
        self.allow = {h.strip().lower() for h in settings.url_allowlist.split(",") if h.strip()}
        self._versions: dict[int, str] = {}
        self._versions_at = 0.0
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- query image
    def _query_image(self, q, context) -> tuple[bytes, int | None]:
        """(image bytes, pool image id to exclude or None)."""
        which = q.WhichOneof("source")
        if which == "image_bytes":
            data = q.image_bytes
            if len(data) > MAX_IMAGE_BYTES:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "image_bytes too large")
        elif which == "image_url":
            data = fetch_url(q.image_url, self.allow, self.s.url_fetch_timeout_s)
        elif which == "image_id":
            with db.connect(self.s.database_url) as conn:
                uri = store.live_blob_uri(conn, q.image_id)
            if uri is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"image {q.image_id} is not in the pool")
            return self.blobs.get(uri), q.image_id
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "query image is required")
        decode_image(data)  # validates format, size and dimensions (BadInput)
        digest = hashlib.sha256(data).hexdigest()
        with db.connect(self.s.database_url) as conn:
            return data, store.image_id_by_content_hash(conn, digest)

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
        try:
            data, exclude = self._query_image(request.query, context)
        except BadInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        versions = self._shard_versions(min(deadline, time.monotonic() + self.s.shard_timeout_s))
        by_version: dict[str, list[int]] = {}
        for i in range(len(self.stubs)):
            if versions.get(i):
                by_version.setdefault(versions[i], []).append(i)
        if not by_version:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no search shard is serving")
        calls = []
        served_versions = []
        for version, shard_ids in by_version.items():
            try:
                emb = self.embedder.embed_queries([data], [request.instruction],
                                                  model_version=version,
                                                  timeout_s=max(0.1, deadline - time.monotonic()))
            except ModelNotLoadedError as exc:  # e.g. Triton still loading a new version
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except EmbeddingError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except UnavailableError as exc:
                if time.monotonic() >= deadline:
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "embedding timed out")
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            served_versions.append(emb.model_version)
            req = search_pb2.SearchShardRequest(
                query=emb.vectors[0].tolist(), k=k, filters=request.filters,
                exclude_image_ids=[exclude] if exclude is not None else [])
            for i in shard_ids:
                timeout = max(0.01, min(deadline, time.monotonic() + self.s.shard_timeout_s)
                              - time.monotonic())
                calls.append((i, self.stubs[i].SearchShard.future(req, timeout=timeout)))
        hits, missing = [], [i for i in range(len(self.stubs)) if i not in versions]
        for i, fut in calls:
            try:
                hits.extend(fut.result().hits)
            except grpc.RpcError as exc:
                missing.append(i)
                log.warning("shard failed", extra={"shard": i, "code": exc.code().name})
                with self._lock:
                    self._versions.pop(i, None)
        if len(missing) == len(self.stubs):
            if time.monotonic() >= deadline:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no shard answered in time")
            context.abort(grpc.StatusCode.UNAVAILABLE, "no search shard answered")
        best: dict[int, float] = {}
        for h in hits:
            if h.image_id != exclude and h.score > best.get(h.image_id, -2.0):
                best[h.image_id] = h.score
        top = sorted(best.items(), key=lambda t: -t[1])[:k]
        with db.connect(self.s.database_url) as conn:
            ctx = store.hit_context(conn, [i for i, _ in top])
        out = search_pb2.SearchResponse(model_version=served_versions[0],
                                        partial=bool(missing),
                                        missing_shards=sorted(set(missing)))
        for i, score in top:
            r = ctx.get(i)
            hit = out.hits.add(image_id=i, score=score)
            if r:
                hit.image_url = r["source_url"]
                hit.context.page_url = r["page_url"]
                hit.context.page_title = r["page_title"]
                hit.context.alt_text = r["alt"]
                hit.context.caption = r["caption"]
                hit.context.context_text = r["context_text"]
        return out

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
        with db.connect(self.s.database_url) as conn:
            p50 = store.freshness_p50(conn, version) if version else 0.0
        return search_pb2.IndexStatus(model_version=version, num_vectors=n,
                                      shards=len(self.stubs), shards_up=up, freshness_p50_s=p50)


def main() -> int:
    settings = load_settings(RootSettings)
    setup_logging("search-root", settings.log_level)
    service = Service("search-root", settings)
    service.prepare(topics=False)
    root = Root(settings)
    service.add_grpc([(search_pb2_grpc.add_SearchServiceServicer_to_server, root,
                       "magiclens.v1.SearchService")], max_workers=32)
    log.info("search root ready", extra={"port": service.grpc.port if service.grpc else 0,
                                         "shards": ",".join(root.addresses)})
    return service.run_forever()


if __name__ == "__main__":
    run_main("search-root", main)
