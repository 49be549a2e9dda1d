"""A model trained in the training pod is served by the embedding pod (issue 8, bug 1).

In the cluster the two pods share no disk: training exports to its own data volume, and the
embedding pod's worker and Triton server have another. Locally every process sees one disk, so
the end-to-end run in test_deploy_local_env.py cannot show this. Here the three places are
kept apart on purpose: the training pod's data directory, the embedding pod's data directory
(deleted / never shared), and the bucket — a real S3 API on localhost (tests/s3.py: moto's
server through boto3, as the pods reach their store with the `magiclens-s3` Secret's
variables). The training side is the service's own publish step (TrainingWorker._publish on a
claimed run, with a real compact checkpoint standing in for the trainer's export); the
serving side is the embedding worker handling the promotion event from the outbox and the
Triton server's own loader (server.Watcher) following the current-model file it writes.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from magiclens.v1 import events_pb2

from runtime import db
from runtime.blobstore import open_blobstore
from runtime.config import load_settings
from services.embedding.config import WorkerSettings
from services.embedding.current import read_current
from services.embedding.server import ModelHolder, Watcher
from services.embedding.worker import Worker
from services.training import store
from services.training.config import TrainingSettings
from services.training.worker import TrainingWorker, _Progress, resolve_config
from tests.support.s3 import s3_server

ROOT = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _outbox_events(url: str, version: str):
    with db.connect(url) as conn:
        rows = conn.execute("SELECT payload FROM outbox WHERE msg_key = %s ORDER BY id",
                            (version,)).fetchall()
    out = []
    for r in rows:
        msg = events_pb2.ModelPublished()
        msg.ParseFromString(bytes(r["payload"]))
        out.append(msg)
    return out


@pytest.mark.slow
def test_a_model_trained_in_one_pod_is_served_from_another(
        infra_servers, fresh_db, checkpoints, tmp_path, monkeypatch):
    training_pod, embedding_pod = tmp_path / "training-pod", tmp_path / "embedding-pod"
    with s3_server() as s3:
        blob_uri = f"s3://{s3.bucket}/pool"
        tset = load_settings(TrainingSettings, database_url=fresh_db, data_dir=training_pod,
                             kafka_bootstrap_servers=infra_servers.kafka_bootstrap,
                             blob_uri=blob_uri)
        trainer = TrainingWorker(tset)
        with db.transaction(fresh_db) as conn:
            store.create_run(conn, "compact", 1, "frozen", {})
        with db.transaction(fresh_db) as conn:
            run = store.claim_next(conn, trainer.worker_id)
        export = tset.runs_dir / run.run_id / "export"  # what trainer.train leaves behind
        shutil.copytree(checkpoints["serving-a"], export)
        want = _tree(export)

        seen = {}
        real_publish = store.publish

        def publish_checked(conn, topic, run_, *, checkpoint_uri, **kw):
            # the transaction that writes the row and the event: the blob must be there
            seen.update(uri=checkpoint_uri,
                        in_bucket=open_blobstore(blob_uri).exists(checkpoint_uri))
            return real_publish(conn, topic, run_, checkpoint_uri=checkpoint_uri, **kw)

        monkeypatch.setattr(store, "publish", publish_checked)
        trainer._publish(run, resolve_config("compact", 1, "frozen"),
                         SimpleNamespace(checkpoint=export, metrics={}),
                         {"train": {"triples": 4}, "heldout": {"triples": 0}},
                         _Progress(fresh_db, run.run_id, 0, 1.0))
        uri = f"{blob_uri}/models/{run.model_version}.tar"
        assert seen == {"uri": uri, "in_bucket": True}
        with db.connect(fresh_db) as conn:
            mv = conn.execute("SELECT status, checkpoint_uri FROM model_versions WHERE "
                              "model_version = %s", (run.model_version,)).fetchone()
        assert (mv["status"], mv["checkpoint_uri"]) == ("published", uri)
        assert [e.checkpoint_uri for e in _outbox_events(fresh_db, run.model_version)] == [uri]

        shutil.rmtree(training_pod)  # nothing of the training pod's disk is reachable now
        with db.transaction(fresh_db) as conn:
            store.promote(conn, store.models_topic(tset.training_models_topic),
                          run.model_version)
        promoted = [e for e in _outbox_events(fresh_db, run.model_version) if e.promoted]
        assert [e.checkpoint_uri for e in promoted] == [uri]

        current = embedding_pod / "embedding" / "current.json"  # as deploy/catalog.py sets it
        wset = load_settings(WorkerSettings, database_url=fresh_db, data_dir=embedding_pod,
                             kafka_bootstrap_servers=infra_servers.kafka_bootstrap,
                             blob_uri=blob_uri, current_model_file=current)
        worker = Worker(wset)
        with db.transaction(fresh_db) as conn:
            worker.on_model_published(conn, promoted[0])
        version, local = read_current(current)
        assert version == run.model_version
        assert Path(local).is_relative_to(embedding_pod / "embedding" / "checkpoints")
        assert _tree(Path(local)) == want

    # The bucket is gone too: what the server loads is on the embedding pod's own disk.
    holder = ModelHolder()
    assert Watcher(current, holder, threading.Event()).load_now()
    assert holder.current == run.model_version
    vec = holder.get().encode_target_pixels(np.zeros((1, 224, 224, 3), np.float32))
    assert vec.shape == (1, holder.get().embed_dim)

    # Reconciliation re-derives the current file from Postgres without fetching again.
    class Offline:
        def get_file(self, *a, **k):
            raise AssertionError("fetched again")

    current.unlink()
    worker.blobs = Offline()
    assert list(worker.reconcile()) == []  # no images to embed in this database
    assert read_current(current) == (version, local)
