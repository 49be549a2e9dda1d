"""The embedding worker: keeps `image_embeddings` complete for the serving model version.

    python -m services.embedding.worker    (Triton at MAGICLENS_TRITON_URL)

- ImageMined -> embed the image with the Triton `target` model, store the vector tagged with
  the version Triton used, emit EmbeddingReady (outbox, same transaction).
- ModelPublished(promoted) -> record the version in `serving_models` and point the Triton
  server at it (atomic write of its current-model file); the reconciler then re-embeds every
  live image lacking an embedding of that version, and the shards rebuild blue/green.
- Reconciler: images without an embedding for the serving version (and the current-model
  file drifting from Postgres) are re-derived from state, so nothing depends on Kafka.
"""

from __future__ import annotations

import logging
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from magiclens.v1 import events_pb2
from pydantic import Field

from services.embedding.client import BadImageError, EmbeddingClient, EmbeddingError
from services.embedding.current import read_current, write_current
from services.runtime import db, outbox
from services.runtime.blobstore import open_blobstore
from services.runtime.bus import Consumer, Event
from services.runtime.config import BaseServiceSettings, load_settings, run_main
from services.runtime.logs import setup_logging
from services.runtime.service import Service
from services.runtime.topics import EMBEDDINGS_READY, IMAGES_MINED, MODELS_PUBLISHED
from services.search import store

log = logging.getLogger("embedding-worker")


class WorkerSettings(BaseServiceSettings):
    triton_url: str = "127.0.0.1:8001"
    current_model_file: Path | None = None  # default: <data_dir>/serving/current_model.json
    reconcile_batch: int = Field(default=256, ge=1, le=10_000)

    @property
    def current_file(self) -> Path:
        return self.current_model_file or Path(self.data_dir) / "serving" / "current_model.json"


def checkpoint_path(uri: str) -> str:
    return uri.removeprefix("file://")


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.s = settings
        self.client = EmbeddingClient(settings.triton_url)
        self.blobs = open_blobstore(settings.blob_root)

    def handle(self, conn, event: Event) -> None:
        msg = event.message
        if isinstance(msg, events_pb2.ModelPublished):
            self.on_model_published(conn, msg)
        elif isinstance(msg, events_pb2.ImageMined):
            self.on_image_mined(conn, msg)

    def on_model_published(self, conn, msg: events_pb2.ModelPublished) -> None:
        if not msg.promoted:
            return
        conn.execute(
            "INSERT INTO model_versions (model_version, config_name, checkpoint_uri, status) "
            "VALUES (%s, %s, %s, 'promoted') ON CONFLICT (model_version) DO UPDATE "
            "SET status = 'promoted', updated_at = now()",
            (msg.model_version, msg.config_name or "compact", msg.checkpoint_uri))
        store.set_serving_version(conn, msg.model_version, msg.checkpoint_uri)
        write_current(self.s.current_file, msg.model_version, checkpoint_path(msg.checkpoint_uri))
        log.info("promoted model version", extra={"version": msg.model_version})

    def on_image_mined(self, conn, msg: events_pb2.ImageMined) -> None:
        serving = store.serving_version(conn)
        if serving is None:
            return  # nothing serves yet; the reconciler embeds once a version is promoted
        version = serving[0]
        row = conn.execute(
            "SELECT i.blob_uri, i.status, p.discovered_at FROM images i "
            "LEFT JOIN pages p ON p.page_id = i.first_page_id WHERE i.image_id = %s",
            (msg.image_id,)).fetchone()
        if row is None or not row["blob_uri"] or row["status"] in ("rejected", "deleted"):
            return
        done = conn.execute("SELECT 1 FROM image_embeddings WHERE image_id = %s AND "
                            "model_version = %s", (msg.image_id, version)).fetchone()
        if done:
            return
        data = self.blobs.get(row["blob_uri"])
        try:
            emb = self.client.embed_targets([data], model_version=version)
        except EmbeddingError as exc:
            if not isinstance(exc, BadImageError):
                raise  # e.g. the version is not loaded yet: retried, then reconciled
            conn.execute("UPDATE images SET status = 'rejected', status_reason = %s, "
                         "updated_at = now() WHERE image_id = %s",
                         (f"embedding: {exc}"[:500], msg.image_id))
            return
        conn.execute(
            "INSERT INTO image_embeddings (image_id, model_version, embedding) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (msg.image_id, emb.model_version, emb.vectors[0].astype("<f4").tobytes()))
        ready = events_pb2.EmbeddingReady(image_id=msg.image_id, model_version=emb.model_version)
        if msg.HasField("page_discovered_at"):
            ready.page_discovered_at.CopyFrom(msg.page_discovered_at)
        elif row["discovered_at"] is not None:
            ts = Timestamp()
            ts.FromDatetime(row["discovered_at"])
            ready.page_discovered_at.CopyFrom(ts)
        outbox.enqueue(conn, EMBEDDINGS_READY, msg.image_id, ready)

    def reconcile(self):
        with db.connect(self.s.database_url) as conn:
            serving = store.serving_version(conn)
            if serving is None:
                return
            version, uri = serving
            if read_current(self.s.current_file) != (version, checkpoint_path(uri)):
                write_current(self.s.current_file, version, checkpoint_path(uri))
            rows = conn.execute(
                "SELECT i.image_id FROM images i WHERE i.status NOT IN ('rejected', 'deleted') "
                "AND i.blob_uri IS NOT NULL AND NOT EXISTS (SELECT 1 FROM image_embeddings e "
                "WHERE e.image_id = i.image_id AND e.model_version = %s) "
                "ORDER BY i.image_id LIMIT %s", (version, self.s.reconcile_batch)).fetchall()
        for r in rows:
            yield Event(IMAGES_MINED.name, str(r["image_id"]), "",
                        events_pb2.ImageMined(image_id=r["image_id"]))


def main() -> int:
    settings = load_settings(WorkerSettings)
    setup_logging("embedding-worker", settings.log_level)
    service = Service("embedding-worker", settings)
    service.prepare()
    worker = Worker(settings)
    service.add_consumer(Consumer("embedding-worker", settings.kafka_bootstrap_servers,
                                  settings.database_url, [IMAGES_MINED, MODELS_PUBLISHED],
                                  worker.handle, reconciler=worker.reconcile,
                                  reconcile_interval_s=settings.reconcile_interval_s))
    service.add_outbox_relay()
    return service.run_forever()


if __name__ == "__main__":
    run_main("embedding-worker", main)
