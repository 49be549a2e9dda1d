"""One shard's vector index: a ScaNN searcher over unit vectors with ids, safe to mutate
while it is being searched, and snapshotted to disk.

Why: ScaNN's searches release the GIL and are thread-safe, but its Python wrapper mutates
docid maps in upsert/delete without a lock, so writes take a write lock and searches a
read lock. Below `brute_threshold` vectors an exact brute-force ScaNN searcher answers
within a fraction of a millisecond (threshold measured by bench/search.py --threshold-sweep,
see DEFAULT_BRUTE_THRESHOLD); above it the searcher is a spherical k-means tree
(spherical: vectors upserted later still route to the right leaves) + asymmetric hashing +
exact reordering.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scann

# Below this many vectors a shard searches by exact brute force, above it by the tree.
# Measured with `python bench/search.py --threshold-sweep` (clustered 512-d, 300 queries,
# the shard's own configs searched through ShardIndex.search, 2-core dev machine with a
# 32 MiB L3): the tree is faster at every size from 1k up (1.2x at 1k, 7x at 10k), so QPS
# alone never favours brute force. But brute force is exact and needs no training (a 4k
# tree with these defaults missed neighbours for 26 of 4,000 queries on tightly clustered
# 128-d data), and it stays cheap next to the ~3 ms gRPC fan-out only while the pool fits
# in cache: p50 0.18 ms at 5k, 0.47 ms at 10k, then 0.80 ms at 15k, 1.26 ms (p99 3.9) at
# 20k and 4.4 ms at 50k, where the tree answers in 0.06-0.13 ms at recall@10 >= 0.996.
# So brute force below 10k (the largest size measured within a 0.5 ms p50 budget), the
# tree from there. Configurable per shard: MAGICLENS_BRUTE_THRESHOLD; re-measure on the
# node type you deploy (the cliff moves with its cache size).
DEFAULT_BRUTE_THRESHOLD = 10_000
MANIFEST = "manifest.json"


class RWLock:
    """Many readers or one writer; writers are not starved (new readers wait for them)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass(frozen=True)
class IndexParams:
    brute_threshold: int = DEFAULT_BRUTE_THRESHOLD
    leaves_to_search_frac: float = 0.1  # of sqrt(n) leaves
    reorder: int = 200
    aq_threshold: float = 0.2


def build_searcher(ids: np.ndarray, vectors: np.ndarray, params: IndexParams, k: int = 10):
    """A ScaNN searcher over `vectors` (unit rows) named by `ids`; returns (searcher, kind)."""
    n = len(ids)
    docids = [str(int(i)) for i in ids]
    if n == 0:
        return None, "empty"
    b = scann.scann_ops_pybind.builder(np.ascontiguousarray(vectors, np.float32), k,
                                       "dot_product")
    if n < params.brute_threshold:
        return b.score_brute_force().build(docids=docids), "brute_force"
    leaves = max(2, int(math.sqrt(n)))
    search = min(leaves, max(8, int(leaves * params.leaves_to_search_frac)))
    s = (b.tree(num_leaves=leaves, num_leaves_to_search=search,
                training_sample_size=min(n, 250_000), spherical=True)
         .score_ah(2, anisotropic_quantization_threshold=params.aq_threshold)
         .reorder(params.reorder).build(docids=docids))
    return s, "tree_ah"


@dataclass(frozen=True)
class Query:
    """One search: the query vector, how many hits, ids to leave out, and an optional
    id filter (`keep(id) -> bool`)."""
    vector: np.ndarray
    k: int
    exclude: Iterable[int] = ()
    keep: Callable[[int], bool] | None = None


class ShardIndex:
    """Vectors of one model version. `search` may run from many threads; `upsert`/`delete`
    serialise on the write lock."""

    def __init__(self, model_version: str, dim: int, params: IndexParams | None = None) -> None:
        self.model_version = model_version
        self.dim = dim
        self.params = params or IndexParams()
        self.lock = RWLock()
        self._searcher = None
        self.kind = "empty"
        self.built_size = 0  # vectors the searcher was trained on (needs_rebuild compares)
        self._ids: set[int] = set()
        self.attrs: dict[int, tuple[str, str]] = {}  # id -> (source, page_domain) for filters

    # ---------------------------------------------------------------- build / mutate
    @classmethod
    def build(cls, model_version: str, ids: np.ndarray, vectors: np.ndarray,
              params: IndexParams | None = None) -> ShardIndex:
        ids = np.asarray(ids, np.int64)
        vectors = _check_vectors(vectors, len(ids))
        idx = cls(model_version, vectors.shape[1] if len(ids) else 0, params)
        idx._searcher, idx.kind = build_searcher(ids, vectors, idx.params)
        idx._ids = set(int(i) for i in ids)
        idx.built_size = len(idx._ids)
        return idx

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> set[int]:
        with self.lock.read():
            return set(self._ids)

    def upsert(self, ids: Iterable[int], vectors: np.ndarray) -> None:
        ids = [int(i) for i in ids]
        if not ids:
            return
        vectors = _check_vectors(vectors, len(ids))
        with self.lock.write():
            if self._searcher is None:
                self.dim = vectors.shape[1]
                self._searcher, self.kind = build_searcher(np.asarray(ids), vectors, self.params)
                self.built_size = len(set(ids))
            else:
                if vectors.shape[1] != self.dim:
                    raise ValueError(f"vector dim {vectors.shape[1]} != index dim {self.dim}")
                # upsert of an existing docid replaces it
                self._searcher.upsert(docids=[str(i) for i in ids], database=vectors)
            self._ids.update(ids)

    def delete(self, ids: Iterable[int]) -> int:
        with self.lock.write():
            present = [int(i) for i in ids if int(i) in self._ids]
            if present and self._searcher is not None:
                self._searcher.delete(docids=[str(i) for i in present])
                self._ids.difference_update(present)
            return len(present)

    def needs_rebuild(self) -> bool:
        """Brute force that outgrew the threshold, or a tree whose size doubled/halved since
        it was built."""
        n, built = len(self), self.built_size
        if self.kind == "brute_force":
            return n >= self.params.brute_threshold
        return self.kind == "tree_ah" and (n > 2 * built or n < built / 2)

    # ---------------------------------------------------------------- search
    def search(self, query: np.ndarray, k: int, exclude: Iterable[int] = (),
               keep=None) -> list[tuple[int, float]]:
        """Top-k (id, score) by dot product, without `exclude`, keeping ids where keep(id)."""
        return self.search_batch([Query(query, k, exclude, keep)])[0]

    def search_batch(self, queries: list[Query]) -> list[list[tuple[int, float]]]:
        """`search` for many queries in one ScaNN `search_batched` call (one pass over the
        leaves and the reorder for all of them: what concurrent requests share)."""
        if not queries:
            return []
        excludes = [set(int(i) for i in q.exclude) for q in queries]
        qs = [np.asarray(q.vector, np.float32).reshape(-1) for q in queries]
        with self.lock.read():
            if self._searcher is None or not self._ids:
                return [[] for _ in queries]
            for q in qs:
                if q.shape[0] != self.dim:
                    raise ValueError(f"query dim {q.shape[0]} != index dim {self.dim}")
            # How many candidates each needs; queries asking for the same number go in one
            # call (the candidate count changes a tree's answer, so each gets exactly what a
            # search of its own would).
            groups: dict[int, list[int]] = {}
            for n, (q, ex) in enumerate(zip(queries, excludes, strict=True)):
                fetch = 2 * q.k + len(ex) + (10 * q.k if q.keep is not None else 0)
                groups.setdefault(min(fetch, len(self._ids)), []).append(n)
            all_ids: list = [None] * len(qs)
            all_scores: list = [None] * len(qs)
            for fetch, members in groups.items():
                if len(members) == 1:
                    ids, scores = self._searcher.search(qs[members[0]],
                                                        final_num_neighbors=fetch)
                    got_ids, got_scores = [ids], [scores]
                else:
                    got_ids, got_scores = self._searcher.search_batched(
                        np.stack([qs[n] for n in members]), final_num_neighbors=fetch)
                for n, ids, scores in zip(members, got_ids, got_scores, strict=True):
                    all_ids[n], all_scores[n] = ids, scores
        return [_top(ids, scores, q.k, ex, q.keep) for ids, scores, q, ex
                in zip(all_ids, all_scores, queries, excludes, strict=True)]

    # ---------------------------------------------------------------- snapshots
    def snapshot(self, directory: Path) -> Path:
        """Write the searcher + manifest into a fresh generation folder, then switch the
        `LATEST` pointer atomically. (ScaNN's serialized config records absolute asset paths,
        so a written snapshot must never be moved.)"""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        gen = directory / f"gen-{time.time_ns()}"
        gen.mkdir()
        with self.lock.read():
            if self._searcher is not None:
                (gen / "scann").mkdir()
                self._searcher.serialize(str(gen / "scann"))
            ids = np.array(sorted(self._ids), np.int64)
            manifest = {"model_version": self.model_version, "dim": self.dim, "kind": self.kind,
                        "num_vectors": len(ids), "built_size": self.built_size,
                        "params": self.params.__dict__}
        np.save(gen / "ids.npy", ids, allow_pickle=False)
        (gen / MANIFEST).write_text(json.dumps(manifest))
        tmp = directory / "LATEST.tmp"
        tmp.write_text(gen.name)
        tmp.replace(directory / "LATEST")
        for old in directory.glob("gen-*"):
            if old != gen:
                shutil.rmtree(old, ignore_errors=True)
        return gen

    @classmethod
    def restore(cls, directory: Path) -> ShardIndex | None:
        try:
            directory = Path(directory) / (Path(directory) / "LATEST").read_text().strip()
            manifest = json.loads((directory / MANIFEST).read_text())
            ids = np.load(directory / "ids.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None
        idx = cls(manifest["model_version"], int(manifest["dim"]),
                  IndexParams(**manifest.get("params", {})))
        idx.kind = manifest["kind"]
        if len(ids):
            idx._searcher = scann.scann_ops_pybind.load_searcher(str(directory / "scann"))
        idx._ids = set(int(i) for i in ids)
        idx.built_size = int(manifest.get("built_size", len(ids)))  # older snapshots: as before
        return idx


def _top(ids, scores, k: int, exclude: set[int], keep) -> list[tuple[int, float]]:
    out, seen = [], set()
    for d, s in zip(ids, scores, strict=True):
        i = int(d)  # an upserted id can come back twice from a tree: keep its best score
        if i in seen or i in exclude or (keep is not None and not keep(i)):
            continue
        seen.add(i)
        out.append((i, float(s)))
        if len(out) == k:
            break
    return out


def _check_vectors(vectors: np.ndarray, n: int) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    if n == 0:
        return vectors.reshape(0, vectors.shape[-1] if vectors.ndim == 2 else 0)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"expected [{n}, D] vectors, got {vectors.shape}")
    if not np.all(np.isfinite(vectors)):
        raise ValueError("vectors must be finite")
    return np.ascontiguousarray(vectors)
