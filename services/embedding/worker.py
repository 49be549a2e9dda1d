"""The embedding worker: keeps `image_embeddings` complete for the serving model version.

    python -m services.embedding.worker    (Triton at MAGICLENS_TRITON_URL)

- ImageMined -> embed the image with the Triton `target` model, store the vector tagged with
  the version Triton used, emit EmbeddingReady (outbox, same transaction).
- ModelPublished(promoted) -> point the Triton server (atomic write of its current-model
  file) at the version Postgres serves: `serving_models`, which training's promotion writes
  in the transaction that emits the event. The event is only a nudge; its checkpoint URI is
  never used (anyone able to write the topic could name any checkpoint: issue 15). The
  reconciler then re-embeds every live image lacking an embedding of that version, and the
  shards rebuild blue/green.
  Vectors of earlier versions are kept: the shards serve them until the new version covers
  the pool.
- Reconciler: images without an embedding for the serving version (and the current-model
  file drifting from Postgres) are re-derived from state, so nothing depends on Kafka.

Why batches: one image per Triton request ran at ~6 images/s. Each ImageMined (real or
synthetic) therefore embeds its image together with up to `embed_batch - 1` other pending
images of the next ids (the rest of a re-embedding pass, or images mined just after it) in
one request, in one transaction with their vectors and EmbeddingReady events. Later events
for those images find the vector and do nothing. Rows are claimed with `FOR NO KEY UPDATE`
(the event's own image waits, the others `SKIP LOCKED`) so two workers never embed the same
image at once, and a vector insert that finds one already there emits no event: one
EmbeddingReady per (image, version). A request that fails is retried one image at a time, so
only a genuinely bad image is rejected; a version Triton is still loading is waited out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from magiclens.v1 import events_pb2

from runtime import checkpoint_store, db, metrics, outbox
from runtime.blobstore import open_blobstore
from runtime.bus import Consumer, Event, ensure_topics
from runtime.config import load_settings, run_main
from runtime.embedding_client import (
    BadImageError,
    EmbeddingClient,
    EmbeddingError,
    ModelNotLoadedError,
)
from runtime.errors import UnavailableError
from runtime.logs import setup_logging
from runtime.service import Service
from runtime.serving import serving_version
from runtime.topics import EMBEDDINGS_READY, IMAGES_MINED, MODELS_PUBLISHED, Topic, renamed
from services.embedding import store
from services.embedding.config import WorkerSettings
from services.embedding.current import read_current, write_current

log = logging.getLogger("embedding-worker")

EMBED_SECONDS = metrics.histogram(
    "magiclens_embedding_request_seconds", "One embedding request to Triton (a batch)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
EMBED_IMAGES = metrics.histogram(
    "magiclens_embedding_batch_images", "Images per embedding request",
    buckets=(1, 2, 4, 8, 16, 32, 64))
EMBED_REJECTED = metrics.counter(
    "magiclens_embedding_rejections_total", "Images the encoder refused (marked rejected)")
EMBED_BACKLOG = metrics.gauge(
    "magiclens_embedding_backlog_images",
    "Live images without a vector of the serving version (sampled)")

# Batch-mates are looked for among the next ids only: bounded work per event on any pool.
MATE_ID_WINDOW = 10_000
# A reconcile pass stops after this long (Kafka polling waits meanwhile; the consumer group
# drops a member that does not poll within max_poll_interval, 600 s); the next pass goes on.
RECONCILE_PASS_S = 240.0


def checkpoint_path(uri: str, current_file: Path, blobs) -> str:
    """The checkpoint as a directory on this pod's disk, beside the current-model file that
    the Triton server reads: a file:// URI's own path; an archive in the object store is
    fetched into `<that dir>/checkpoints/` once (runtime/checkpoint_store.py)."""
    return str(checkpoint_store.fetch(uri, current_file.parent / "checkpoints", blobs))


@dataclass
class Pending:
    """An image to embed, then its outcome: a vector (and the version that made it), or the
    reason it is rejected, or neither (left for later)."""

    image_id: int
    blob_uri: str
    discovered_at: datetime | None
    data: bytes = b""
    vector: np.ndarray | None = None
    version: str = ""
    bad: str = ""


class Worker:
    def __init__(self, settings: WorkerSettings, client: EmbeddingClient | None = None) -> None:
        self.s = settings
        self.client = client or EmbeddingClient(settings.triton_url)
        self.blobs = open_blobstore(settings.blob_root)
        self.images_topic = renamed(IMAGES_MINED, settings.embedding_images_topic)
        self.models_topic = renamed(MODELS_PUBLISHED, settings.embedding_models_topic)
        self.ready_topic = renamed(EMBEDDINGS_READY, settings.embedding_ready_topic)
        # counters (tests and the bench read them); seconds spent per stage of embedding
        self.requests = self.embedded = self.rejected = self.fallbacks = 0
        self.stage_s = dict.fromkeys(("claim", "blobs", "embed", "store"), 0.0)

    @property
    def topics(self) -> list[Topic]:
        return [self.images_topic, self.models_topic, self.ready_topic]

    def consumer(self) -> Consumer:
        return Consumer("embedding-worker", self.s.kafka_bootstrap_servers, self.s.database_url,
                        [self.images_topic, self.models_topic], self.handle,
                        group_id=self.s.embedding_group, reconciler=self.reconcile,
                        reconcile_interval_s=self.s.reconcile_interval_s)

    def handle(self, conn, event: Event) -> None:
        msg = event.message
        if isinstance(msg, events_pb2.ModelPublished):
            self.on_model_published(conn, msg)
        elif isinstance(msg, events_pb2.ImageMined):
            self.on_image_mined(conn, msg)

    def on_model_published(self, conn, msg: events_pb2.ModelPublished) -> None:
        if not msg.promoted:
            return
        serving = serving_version(conn)
        if serving is None or serving[0] != msg.model_version:
            log.warning("a promotion event for a version Postgres does not serve: following "
                        "Postgres", extra={"event_version": msg.model_version[:200],
                                           "serving": serving[0] if serving else None})
        if serving is None:
            return
        version, uri = serving
        write_current(self.s.current_file, version,
                      checkpoint_path(uri, self.s.current_file, self.blobs))
        log.info("promoted model version", extra={"version": version})

    # ------------------------------------------------------------------ embedding

    def on_image_mined(self, conn, msg: events_pb2.ImageMined) -> None:
        serving = serving_version(conn)
        if serving is None:
            return  # nothing serves yet; the reconciler embeds once a version is promoted
        version = serving[0]
        t0 = time.perf_counter()
        batch = self._claim(conn, msg.image_id, version)
        t1 = time.perf_counter()
        self.stage_s["claim"] += t1 - t0
        if not batch:
            return  # gone, rejected or already embedded (its own or another event's batch)
        for p in list(batch):
            try:
                p.data = self.blobs.get(p.blob_uri)
            except Exception:
                if p.image_id == msg.image_id:
                    raise  # retried, then dead-lettered; the reconciler tries again later
                log.warning("blob unreadable; left for its own event",
                            extra={"image_id": p.image_id, "blob_uri": p.blob_uri})
                batch.remove(p)
        log.debug("embedding batch", extra={"version": version,
                                            "image_ids": [p.image_id for p in batch]})
        t2 = time.perf_counter()
        self._embed(batch, version, own=msg.image_id)
        t3 = time.perf_counter()
        for p in batch:
            if p.bad:
                self._reject(conn, p.image_id, p.bad)
            elif p.vector is not None:
                self._store(conn, p, msg)
        self.stage_s["blobs"] += t2 - t1
        self.stage_s["embed"] += t3 - t2
        self.stage_s["store"] += time.perf_counter() - t3

    def _claim(self, conn, image_id: int, version: str) -> list[Pending]:
        """The event's image (first) and pending batch-mates of the next ids, row-locked.

        The event's own row is waited for; a worker holding it commits or rolls back first,
        and the separate statement after the lock sees what it stored."""
        own = store.claim(conn, image_id)
        if own is None or store.embedded(conn, version, [image_id]):
            return []
        mates = []
        if self.s.embed_batch > 1:
            mates = store.claim_pending_after(conn, image_id, MATE_ID_WINDOW, version,
                                              self.s.embed_batch - 1)
            if mates:  # one committed between this statement's snapshot and its lock
                done = store.embedded(conn, version, [r["image_id"] for r in mates])
                mates = [r for r in mates if r["image_id"] not in done]
        return [Pending(r["image_id"], r["blob_uri"], r["discovered_at"]) for r in [own, *mates]]

    def _request(self, images: list[bytes], version: str):
        self.requests += 1
        EMBED_IMAGES.observe(len(images))
        try:
            with EMBED_SECONDS.time():
                return self.client.embed_targets(images, model_version=version)
        except ModelNotLoadedError as exc:
            # Triton is still loading the version just promoted: wait it out, reject nothing.
            raise UnavailableError(str(exc)) from None

    def _embed(self, batch: list[Pending], version: str, own: int) -> None:
        """One request for the batch; if it fails, one request per image, so only the image
        at fault is rejected (or, for a failure that is not its input's, left for later)."""
        if len(batch) > 1:
            try:
                emb = self._request([p.data for p in batch], version)
            except EmbeddingError as exc:
                self.fallbacks += 1
                log.info("batch failed; embedding its images one by one",
                         extra={"images": len(batch), "error": str(exc)})
            else:
                for p, vec in zip(batch, emb.vectors, strict=True):
                    p.vector, p.version = vec, emb.model_version
                return
        for p in batch:
            try:
                emb = self._request([p.data], version)
            except BadImageError as exc:
                p.bad = str(exc)
                continue
            except EmbeddingError as exc:
                if p.image_id == own:
                    raise  # not the input's fault: retried, then dead-lettered and reconciled
                log.warning("image not embedded; left for its own event",
                            extra={"image_id": p.image_id, "error": str(exc)})
                continue
            p.vector, p.version = emb.vectors[0], emb.model_version

    def _store(self, conn, p: Pending, msg: events_pb2.ImageMined) -> None:
        if not store.insert_embedding(conn, p.image_id, p.version, p.vector):
            return  # stored before (another worker): its EmbeddingReady was emitted then
        self.embedded += 1
        metrics.pipeline("embeddings_written")
        ready = events_pb2.EmbeddingReady(image_id=p.image_id, model_version=p.version)
        if p.image_id == msg.image_id and msg.HasField("page_discovered_at"):
            ready.page_discovered_at.CopyFrom(msg.page_discovered_at)
        elif p.discovered_at is not None:
            ts = Timestamp()
            ts.FromDatetime(p.discovered_at)
            ready.page_discovered_at.CopyFrom(ts)
        outbox.enqueue(conn, self.ready_topic, p.image_id, ready)

    def _reject(self, conn, image_id: int, reason: str) -> None:
        self.rejected += 1
        EMBED_REJECTED.inc()
        store.reject_image(conn, image_id, f"embedding: {reason}")
        log.info("image rejected", extra={"image_id": image_id, "reason": reason})

    def sample_backlog(self) -> int | None:
        """Set magiclens_embedding_backlog_images (a periodic job, its own connection);
        None (and the gauge left alone) while no version serves."""
        with db.connect(self.s.database_url) as conn:
            serving = serving_version(conn)
            if serving is None:
                return None
            n = store.backlog(conn, serving[0])
        EMBED_BACKLOG.set(n)
        return n

    # ------------------------------------------------------------------ reconciliation

    def reconcile(self):
        with db.connect(self.s.database_url) as conn:
            serving = serving_version(conn)
            if serving is None:
                return
            version, uri = serving
            try:
                local = checkpoint_path(uri, self.s.current_file, self.blobs)
            except checkpoint_store.ArchiveRefused as exc:  # its event was dead-lettered
                log.error("promoted checkpoint refused", extra={"version": version,
                                                                "error": str(exc)})
                return
            if read_current(self.s.current_file) != (version, local):
                write_current(self.s.current_file, version, local)
        deadline = time.monotonic() + RECONCILE_PASS_S
        after = 0
        while time.monotonic() < deadline:
            with db.connect(self.s.database_url) as conn:
                ids = store.unembedded_ids(conn, version, after, self.s.reconcile_batch)
            if not ids:
                return
            for image_id in ids:
                # the handler embeds this image and the next pending ones in one request;
                # the events for those then find their vectors and cost one query each
                yield Event(self.images_topic.name, str(image_id), "",
                            events_pb2.ImageMined(image_id=image_id))
            after = ids[-1]


def main() -> int:
    settings = load_settings(WorkerSettings)
    setup_logging("embedding-worker", settings.log_level)
    service = Service("embedding-worker", settings)
    service.prepare()
    worker = Worker(settings)
    ensure_topics(settings.kafka_bootstrap_servers, worker.topics)
    service.add_consumer(worker.consumer())
    service.add_outbox_relay()
    worker.sample_backlog()
    service.every(metrics.SAMPLE_INTERVAL_S, worker.sample_backlog)
    return service.run_forever()


if __name__ == "__main__":
    run_main("embedding-worker", main)
