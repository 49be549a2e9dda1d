"""Who may replace a search shard's serving index, and when (real ScaNN and PostgreSQL).

Two periodic jobs of a shard replace its serving index: `sync()` rebuilds the serving version
when it outgrew its searcher, `check_version()` builds a newly promoted version beside it
(blue/green). Each test holds one job at a chosen point, runs the other one to the end, then
lets the first one finish: the interleaving is forced, not hoped for. The invariants:

* once the promoted version serves, the old version never serves again;
* an event applied to the serving index while it was being rebuilt is not lost with it;
* each index carries the size its searcher was built at (nothing shared between builds);
* the snapshot on disk is of the latest serving index, however snapshots and swaps overlap.
"""

from __future__ import annotations

import threading
import uuid
import zlib

import numpy as np
import pytest
from magiclens.v1 import events_pb2

from runtime import db
from runtime.bus import Event
from runtime.serving import set_serving_version
from runtime.topics import EMBEDDINGS_READY
from services.search.config import ShardSettings
from services.search.index import ShardIndex
from services.search.shard import Shard
from tests.support.processes import wait_for

M, D, BRUTE = 80, 16, 64  # A starts at M/2 (brute force) and outgrows BRUTE: a sync rebuild


class RecordingShard(Shard):
    """A shard that records the version of every index it serves, in order."""

    @property
    def index(self) -> ShardIndex:
        return self.__dict__["_index"]

    @index.setter
    def index(self, idx: ShardIndex) -> None:
        self.__dict__["_index"] = idx
        self.__dict__.setdefault("served", []).append(idx.model_version)


class Hold:
    """Stops the thread named `thread` the first time it passes a point, until released."""

    def __init__(self, thread: str) -> None:
        self.thread, self.reached, self.go = thread, threading.Event(), threading.Event()

    def wrap(self, fn, when=lambda out, *a: True):
        """`fn` that holds after returning, when `when(its result, *its args)`."""
        def held(*args, **kwargs):
            out = fn(*args, **kwargs)
            if self._mine() and when(out, *args):
                self._stop()
            return out
        return held

    def wrap_before(self, fn, when=lambda *a: True):
        """`fn` that holds before it runs, when `when(*its args)`."""
        def held(*args, **kwargs):
            if self._mine() and when(*args):
                self._stop()
            return fn(*args, **kwargs)
        return held

    def _mine(self) -> bool:
        return threading.current_thread().name == self.thread and not self.reached.is_set()

    def _stop(self) -> None:
        self.reached.set()
        assert self.go.wait(60), "never released"


@pytest.fixture(scope="module")
def images(fresh_db) -> list[int]:
    with db.transaction(fresh_db) as conn, conn.cursor() as cur:
        # Live images have bytes in the blob store (the shard never reads them).
        cur.executemany("INSERT INTO images (content_hash, source_url, blob_uri) "
                        "VALUES (%s, %s, %s)",
                        [(f"swap-{i}", f"https://swap.example/{i}", f"file:///blobs/swap-{i}")
                         for i in range(M)])
        return [r["image_id"] for r in cur.execute(
            "SELECT image_id FROM images WHERE content_hash LIKE 'swap-%' ORDER BY image_id"
        ).fetchall()]


def _version(url: str) -> str:
    v = f"swap-{uuid.uuid4().hex[:8]}"
    with db.transaction(url) as conn:
        conn.execute("INSERT INTO model_versions (model_version, config_name, status) "
                     "VALUES (%s, 'compact', 'published')", (v,))
    return v


def _embed(url: str, version: str, ids: list[int]) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(f"{version}{ids}".encode()))
    vecs = rng.standard_normal((len(ids), D)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with db.transaction(url) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO image_embeddings (image_id, model_version, embedding) "
                        "VALUES (%s, %s, %s)",
                        [(i, version, v.astype("<f4").tobytes()) for i, v in zip(ids, vecs,
                                                                                   strict=True)])
    return dict(zip(ids, vecs, strict=True))


def _promote(url: str, version: str) -> None:
    with db.transaction(url) as conn:
        set_serving_version(conn, version, f"file:///{version}")


def _started(url: str, tmp_path, images: list[int]) -> tuple[RecordingShard, str]:
    """A shard serving a fresh version A that covers half the images (brute force)."""
    a = _version(url)
    _embed(url, a, images[: M // 2])
    _promote(url, a)
    shard = RecordingShard(ShardSettings(
        database_url=url, data_dir=tmp_path, brute_threshold=BRUTE, leaves_frac=1.0,
        bluegreen_min_coverage=1.0))
    shard.start()
    assert (shard.index.model_version, len(shard.index), shard.index.kind) == (
        a, M // 2, "brute_force")
    return shard, a


def _in_thread(name: str, fn) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    t = threading.Thread(target=run, name=name)
    t.start()
    return t, errors


def _never_back(served: list[str], new: str) -> None:
    first = served.index(new)
    assert all(v == new for v in served[first:]), served


@pytest.mark.parametrize("held_at", ["decided", "built"])
def test_sync_rebuild_never_puts_the_old_version_back_after_a_bluegreen_swap(
        fresh_db, images, tmp_path, monkeypatch, held_at):
    """A sync that rebuilds version A (the serving index outgrew brute force) overlaps the
    promotion of B. `decided`: the sync has chosen to rebuild A when check_version swaps B in.
    `built`: the sync has finished building A when check_version runs."""
    shard, a = _started(fresh_db, tmp_path, images)
    _embed(fresh_db, a, images[M // 2:])  # the next sync upserts them: A needs a rebuild
    b = _version(fresh_db)
    _embed(fresh_db, b, images)
    _promote(fresh_db, b)

    hold = Hold("sync")
    if held_at == "decided":
        monkeypatch.setattr(ShardIndex, "needs_rebuild",
                            hold.wrap(ShardIndex.needs_rebuild, lambda out, *a: out))
    else:
        monkeypatch.setattr(shard, "_build", hold.wrap(shard._build,
                                                       lambda out, v: v == a))
    t, errors = _in_thread("sync", shard.sync)
    assert hold.reached.wait(60)
    shard.check_version()  # the periodic version check, on its own thread in the service
    hold.go.set()
    t.join(60)
    assert not t.is_alive() and not errors, errors
    shard.check_version()  # its next tick (a no-op where the first one already swapped)

    assert shard.index.model_version == b, shard.served
    _never_back(shard.served, b)
    assert len(shard.index) == M and shard.index.built_size == M
    assert shard.next_version == ""
    # The snapshot on disk is of the serving version: a restart restores B, not A.
    snap = ShardIndex.restore(shard.dir / "current")
    assert snap is not None and snap.model_version == b


def test_event_applied_while_the_serving_index_is_rebuilt_survives_the_rebuild(
        fresh_db, images, tmp_path, monkeypatch):
    """An EmbeddingReady upsert lands in the serving index after a sync's rebuild of the same
    version read Postgres and before it replaced that index: the rebuilt index must have it."""
    shard, a = _started(fresh_db, tmp_path, images)
    late = images[-1]
    _embed(fresh_db, a, images[M // 2:-1])  # enough for a rebuild, without `late`
    hold = Hold("sync")
    monkeypatch.setattr(shard, "_build", hold.wrap(shard._build, lambda out, v: v == a))
    t, errors = _in_thread("sync", shard.sync)
    assert hold.reached.wait(60)

    vec = _embed(fresh_db, a, [late])[late]
    with db.transaction(fresh_db) as conn:
        shard.handle(conn, Event(EMBEDDINGS_READY, str(late), "",
                                 events_pb2.EmbeddingReady(image_id=late, model_version=a)))
    assert late in shard.index.ids()  # applied to the index serving now
    hold.go.set()
    t.join(60)
    assert not t.is_alive() and not errors, errors

    assert shard.served == ["", a, a], shard.served  # start, then one rebuild
    assert shard.index.kind == "tree_ah"
    assert late in shard.index.ids(), "the rebuilt index lost an event applied meanwhile"
    assert shard.index.search(vec, 1)[0][0] == late
    assert len(shard.index) == M and shard.index.built_size == M - 1


def test_snapshot_started_before_a_swap_never_replaces_the_newer_one_on_disk(
        fresh_db, images, tmp_path, monkeypatch):
    """The periodic snapshot is about to write A when check_version swaps B in and writes B's
    snapshot: the snapshot on disk must end up B (a restart restores it instead of building)."""
    shard, a = _started(fresh_db, tmp_path, images)
    b = _version(fresh_db)
    _embed(fresh_db, b, images)
    _promote(fresh_db, b)
    shard._dirty = True  # as after an EmbeddingReady upsert
    hold = Hold("snapshot")
    monkeypatch.setattr(ShardIndex, "snapshot", hold.wrap_before(
        ShardIndex.snapshot, lambda idx, directory: idx.model_version == a))
    snap_t, snap_errors = _in_thread("snapshot", shard.snapshot_if_dirty)
    assert hold.reached.wait(60)
    check_t, check_errors = _in_thread("version-check", shard.check_version)
    # The swap never waits for a snapshot: B serves while A's snapshot is still held (a
    # generous bound for the build on a loaded machine; the hold is what proves the claim).
    wait_for(lambda: shard.index.model_version == b, 120, "the swap while the snapshot waits")
    assert snap_t.is_alive()  # A's snapshot is still held
    hold.go.set()
    for t in (snap_t, check_t):
        t.join(60)
        assert not t.is_alive()
    assert not snap_errors and not check_errors, (snap_errors, check_errors)

    snap = ShardIndex.restore(shard.dir / "current")
    assert snap is not None and (snap.model_version, len(snap)) == (b, M)
