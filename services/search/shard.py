"""A search shard: owns the vectors of images with image_id % N == i for the serving version.

    python -m services.search.shard --index default --num-shards 2 --shard 0

Lifecycle: restore the snapshot from disk (if it is of the serving version), else build from
Postgres; then reconcile with Postgres (upsert missing, delete gone) and serve. EmbeddingReady
events upsert/delete as they arrive; a periodic sync repairs anything missed. When the
promoted version changes, a new index is built beside the old one once the new version covers
the partition (blue/green), then swapped in; the old one serves until then.

Threads: gRPC handlers read, the EmbeddingReady consumer writes into the serving index, and
the periodic jobs (sync, version check, snapshot) each run on their own thread. The serving
index is replaced in one place only, `Shard._replace`, under one lock (see there); readers
never take that lock, so no query waits for a build.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
from magiclens.v1 import events_pb2, search_pb2, search_pb2_grpc

from runtime import db, metrics, ports, tracing
from runtime.bus import Consumer, Event
from runtime.config import load_settings, run_main
from runtime.errors import ConfigError
from runtime.logs import setup_logging
from runtime.service import Service
from runtime.serving import serving_version
from runtime.topics import EMBEDDINGS_READY, IMAGES_DELETED, MODELS_PUBLISHED
from services.search import store
from services.search.batcher import QueryBatcher
from services.search.config import ShardSettings
from services.search.index import IndexParams, Query, ShardIndex

log = logging.getLogger("search-shard")

FRESHNESS = metrics.histogram("magiclens_index_freshness_seconds",
                              "Page discovery to searchable in this shard",
                              buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600,
                                       86400))
VECTORS = metrics.gauge("magiclens_shard_vectors", "Vectors in the serving index")
BATCH = metrics.histogram("magiclens_shard_search_batch_size",
                          "Concurrent searches answered by one ScaNN search_batched call",
                          buckets=(1, 2, 4, 8, 16, 32, 64))
# Per shard (label `shard`), read when scraped from the index that serves at that moment.
INDEX_VECTORS = metrics.gauge("magiclens_index_vectors",
                              "Vectors in this shard's serving index", ["shard"])
INDEX_BYTES = metrics.gauge("magiclens_index_vector_bytes",
                            "Bytes of float32 vectors in this shard's serving index", ["shard"])
INDEX_UPDATED = metrics.gauge(
    "magiclens_index_last_update_timestamp_seconds",
    "When this shard last applied a change (an event, a sync, a build); Unix time", ["shard"])
INDEX_UPDATE_AGE = metrics.gauge(
    "magiclens_index_update_age_seconds",
    "Seconds since this shard last applied a change (freshness)", ["shard"])
INDEX_SYNCED = metrics.gauge(
    "magiclens_index_last_sync_timestamp_seconds",
    "When this shard last finished a reconcile with Postgres; Unix time", ["shard"])
MAX_K = 1000


class Shard:
    def __init__(self, settings: ShardSettings) -> None:
        self.s = settings
        self.params = IndexParams(brute_threshold=settings.brute_threshold,
                                  leaves_to_search_frac=settings.leaves_frac)
        self.dir = (Path(settings.data_dir) / "index" / settings.index
                    / f"shard-{settings.shard}-of-{settings.num_shards}")
        # The serving index. Readers take it once per request and use that object throughout;
        # it carries its own model_version and built_size, so a reader or a job never mixes
        # two indexes' state. Only `_replace` assigns it once the service runs.
        self.index = ShardIndex("", 0, self.params)
        self.next_version = ""
        self.restored = False
        self._replacing = threading.Lock()  # held by the one build + swap under way
        self._snapshotting = threading.Lock()
        self._dirty = False
        self.updated_at = time.time()  # when a change was last applied (freshness)
        label = str(settings.shard)
        INDEX_VECTORS.labels(label).set_function(lambda: len(self.index))
        INDEX_BYTES.labels(label).set_function(lambda: 4.0 * len(self.index) * self.index.dim)
        INDEX_UPDATED.labels(label).set_function(lambda: self.updated_at)
        INDEX_UPDATE_AGE.labels(label).set_function(lambda: time.time() - self.updated_at)

    # ---------------------------------------------------------------- state
    def start(self) -> None:
        """Restore or build the serving version (before any other thread runs), then sync."""
        with db.connect(self.s.database_url) as conn:
            serving = serving_version(conn)
        version = serving[0] if serving else ""
        snap = ShardIndex.restore(self.dir / "current")
        if snap is not None and snap.model_version == version and version:
            snap.params = self.params
            self.index, self.restored = snap, True
            log.info("restored snapshot", extra={"vectors": len(snap), "version": version})
        elif version:
            self.index = self._build(version)
        self.sync()
        self.snapshot()

    def _build(self, version: str) -> ShardIndex:
        t0 = time.monotonic()
        with db.connect(self.s.database_url) as conn:
            ids = sorted(store.partition_ids(conn, version, self.s.shard, self.s.num_shards))
            ids_a, vecs, attrs = store.load_embeddings(conn, version, ids)
        idx = ShardIndex.build(version, ids_a, vecs, self.params)
        idx.attrs = attrs
        log.info("built index", extra={"version": version, "vectors": len(idx), "kind": idx.kind,
                                       "seconds": round(time.monotonic() - t0, 2)})
        return idx

    def _replace(self, old: ShardIndex, version: str) -> ShardIndex | None:
        """Build `version` and serve it in place of `old`; the fresh index, or None (nothing
        changed) when another build is under way or `old` no longer serves.

        Invariant: this is the only writer of `self.index` while the service runs, and it
        holds `_replacing` from the check to the swap, so "`old` still serves" stays true
        until the swap: a job that read the index before someone else replaced it (e.g. a
        sync rebuilding the old version across a blue/green swap) can never put it back.
        The lock is taken without waiting, so at most one build runs at a time and a job that
        finds one under way retries on its next tick. Readers never take it."""
        if not self._replacing.acquire(blocking=False):
            return None
        try:
            if self.index is not old:
                return None
            fresh = self._build(version)
            self.index = fresh  # one reference assignment: a reader sees old or fresh, whole
            self._dirty = True
            self.updated_at = time.time()
            VECTORS.set(len(fresh))
            return fresh
        finally:
            self._replacing.release()

    def sync(self) -> tuple[int, int]:
        """Make the index equal Postgres' view of this partition (the repair path); rebuild
        it when it outgrew its searcher."""
        idx = self.index
        added, gone = self._reconcile(idx)
        if idx.needs_rebuild() and (fresh := self._replace(idx, idx.model_version)):
            # Events applied to `idx` while `fresh` was built are in Postgres: carry them over.
            self._reconcile(fresh)
        return added, gone

    def _reconcile(self, idx: ShardIndex) -> tuple[int, int]:
        if not idx.model_version:
            return 0, 0
        with db.connect(self.s.database_url) as conn:
            want = store.partition_ids(conn, idx.model_version, self.s.shard, self.s.num_shards)
            have = idx.ids()
            add = sorted(want - have)
            ids, vecs, attrs = store.load_embeddings(conn, idx.model_version, add)
        if len(ids):
            idx.attrs.update(attrs)
            idx.upsert(ids, vecs)
        gone = idx.delete(have - want)
        INDEX_SYNCED.labels(str(self.s.shard)).set(time.time())
        if len(ids) or gone:
            self._dirty = True
            self.updated_at = time.time()
            log.info("synced", extra={"added": len(ids), "deleted": gone,
                                      "version": idx.model_version})
        VECTORS.set(len(self.index))
        return len(ids), gone

    def snapshot(self) -> None:
        """Write the serving index to disk. Serialised, and each write takes the index that
        serves when it starts, so the last snapshot written is of the latest index."""
        with self._snapshotting:
            idx = self.index
            if not idx.model_version:
                return
            self._dirty = False  # before writing: a change made meanwhile marks it again
            try:
                idx.snapshot(self.dir / "current")
            except BaseException:
                self._dirty = True
                raise

    def snapshot_if_dirty(self) -> None:
        if self._dirty:
            self.snapshot()

    def check_version(self) -> None:
        """Blue/green: build the promoted version beside the serving one, then swap."""
        current = self.index
        with db.connect(self.s.database_url) as conn:
            serving = serving_version(conn)
            if serving is None or serving[0] == current.model_version:
                self.next_version = ""
                return
            version = serving[0]
            self.next_version = version
            cov = store.coverage(conn, version, self.s.shard, self.s.num_shards)
        if cov < self.s.bluegreen_min_coverage and current.model_version:
            return  # keep serving the old index until the new version covers the partition
        if self._replace(current, version) is None:
            return  # a build under way, or `current` was just rebuilt: the next check retries
        self.next_version = ""
        self.sync()  # events the old index took while the new one was built
        self.snapshot()
        log.info("swapped to new model version", extra={"version": version})

    # ---------------------------------------------------------------- events
    def handle(self, conn, event: Event) -> None:
        msg = event.message
        if isinstance(msg, events_pb2.ModelPublished):
            return  # the periodic version check reads serving_models (set by the worker)
        if isinstance(msg, events_pb2.ImageDeleted):  # a takedown: drop the vector now
            if (msg.image_id % self.s.num_shards == self.s.shard
                    and not store.image_live(conn, msg.image_id)  # Postgres decides
                    and self.index.delete([msg.image_id])):
                self._dirty = True
                self.updated_at = time.time()
                VECTORS.set(len(self.index))
            return
        if not isinstance(msg, events_pb2.EmbeddingReady):
            return
        if msg.image_id % self.s.num_shards != self.s.shard:
            return
        idx = self.index
        if msg.model_version != idx.model_version:
            return  # another version: the blue/green build reads it from Postgres
        if not store.image_live(conn, msg.image_id):
            if idx.delete([msg.image_id]):
                self._dirty = True
            return
        ids, vecs, attrs = store.load_embeddings(conn, msg.model_version, [msg.image_id])
        if not len(ids):
            return
        idx.attrs.update(attrs)
        # Into the index read above. If `_replace` swaps it out meanwhile, nothing is lost:
        # this row was committed before the event was sent, and every replacement is followed
        # by a reconcile of the fresh index from Postgres.
        idx.upsert(ids, vecs)
        self._dirty = True
        self.updated_at = time.time()
        VECTORS.set(len(self.index))
        if msg.HasField("page_discovered_at"):
            discovered = msg.page_discovered_at.ToDatetime(tzinfo=UTC)
            FRESHNESS.observe(max(0.0, (datetime.now(UTC) - discovered).total_seconds()))
            store.record_freshness(conn, msg.image_id, msg.model_version, self.s.shard,
                                   discovered)


class ShardServicer(search_pb2_grpc.ShardServiceServicer):
    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.batcher = QueryBatcher(on_batch=BATCH.observe)  # concurrent searches batch

    def SearchShard(self, request, context):  # noqa: N802
        idx = self.shard.index
        k = request.k or 10
        if not 1 <= k <= MAX_K:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be in 1..{MAX_K}")
        q = np.asarray(request.query, np.float32)
        if idx.model_version and q.shape[0] != idx.dim:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"query has {q.shape[0]} dims; index has {idx.dim}")
        f = request.filters
        keep = None
        if f.source or f.page_domain:
            def keep(i: int, a=idx.attrs, f=f) -> bool:
                src, dom = a.get(i, ("", ""))
                return (not f.source or src == f.source) and (
                    not f.page_domain or dom == f.page_domain)
        with tracing.span("shard search", shard=self.shard.s.shard, k=k, vectors=len(idx)):
            hits = self.batcher.search(idx, Query(q, k, request.exclude_image_ids, keep)) \
                if len(q) else []
        return search_pb2.SearchShardResponse(
            hits=[search_pb2.ShardHit(image_id=i, score=s) for i, s in hits],
            model_version=idx.model_version)

    def GetShardStatus(self, request, context):  # noqa: N802
        s, idx = self.shard, self.shard.index  # one index: its version and size agree
        return search_pb2.ShardStatus(shard=s.s.shard, model_version=idx.model_version,
                                      num_vectors=len(idx), next_model_version=s.next_version)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="MagicLens search shard")
    ap.add_argument("--index")
    ap.add_argument("--num-shards", type=int)
    ap.add_argument("--shard", type=int)
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in (("index", args.index), ("num_shards", args.num_shards),
                                   ("shard", args.shard)) if v is not None}
    settings = load_settings(ShardSettings, **overrides)
    if settings.shard >= settings.num_shards:
        raise ConfigError(f"--shard {settings.shard} must be < --num-shards {settings.num_shards}")
    if "MAGICLENS_GRPC_PORT" not in os.environ:
        settings.grpc_port = ports.shard_grpc_port(settings.shard)
    setup_logging(f"search-shard-{settings.shard}", settings.log_level)
    service = Service(f"search-shard-{settings.shard}", settings)
    service.prepare()
    shard = Shard(settings)
    shard.start()
    service.add_grpc([(search_pb2_grpc.add_ShardServiceServicer_to_server, ShardServicer(shard),
                       "magiclens.v1.ShardService")])
    name = f"search-shard-{settings.index}-{settings.shard}-of-{settings.num_shards}"
    service.add_consumer(Consumer(name, settings.kafka_bootstrap_servers, settings.database_url,
                                  [EMBEDDINGS_READY, MODELS_PUBLISHED, IMAGES_DELETED],
                                  shard.handle))
    service.every(settings.sync_interval_s, shard.sync)
    service.every(settings.version_check_s, shard.check_version)
    service.every(max(5.0, settings.sync_interval_s), shard.snapshot_if_dirty)
    port = service.grpc.port if service.grpc else 0
    log.info("shard ready", extra={"port": port, "vectors": len(shard.index),
                                   "restored": shard.restored})
    code = service.run_forever()
    shard.snapshot_if_dirty()
    return code


if __name__ == "__main__":
    run_main("search-shard", main)
