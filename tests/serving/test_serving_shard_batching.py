"""Concurrent shard searches are answered by one ScaNN `search_batched` call and get the hits
a search of their own gets (real ScaNN): exactly by brute force; by the tree + AH + reorder,
the same up to the approximation (ScaNN's batched asymmetric-hashing scores are not
bit-identical to its single-query ones, so a near tie can pick another candidate)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.search.batcher import QueryBatcher
from services.search.index import IndexParams, Query, ShardIndex
from tests.support.processes import wait_for


def _vectors(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("brute_threshold", [10_000, 500], ids=["brute force", "tree"])
def test_a_batch_gives_each_query_its_own_hits(brute_threshold):
    vecs = _vectors(3000)
    idx = ShardIndex.build("v1", np.arange(3000), vecs,
                           IndexParams(brute_threshold=brute_threshold))
    assert idx.kind == ("brute_force" if brute_threshold > 3000 else "tree_ah")
    qs = _vectors(12, seed=1)
    plain = [Query(qs[i], k=5) for i in range(6)]  # one search_batched call for these
    mixed = [Query(qs[i], k=3 + i, exclude=[i, i + 1] if i % 2 else (),
                   keep=(lambda j: j % 3 != 0) if i % 3 == 0 else None) for i in range(6, 12)]
    queries = plain + mixed
    together = idx.search_batch(queries)
    alone = [idx.search(q.vector, q.k, q.exclude, q.keep) for q in queries]
    if idx.kind == "brute_force":
        assert [[i for i, _ in h] for h in together] == [[i for i, _ in h] for h in alone]
    else:  # each query got its own neighbours, not another query's
        overlap = [len({i for i, _ in a} & {i for i, _ in b}) / q.k
                   for a, b, q in zip(together, alone, queries, strict=True)]
        assert min(overlap) >= 0.5 and np.mean(overlap) >= 0.8, overlap
    for q, hits in zip(queries, together, strict=True):
        ids = [i for i, _ in hits]
        assert len(ids) == q.k and len(set(ids)) == q.k
        assert not set(ids) & set(q.exclude)
        assert q.keep is None or all(q.keep(i) for i in ids)
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True)


class _GatedIndex:
    """A real ShardIndex whose first search waits on a gate: the other requests queue
    meanwhile, so the batch the next leader runs is observable."""

    def __init__(self, index: ShardIndex) -> None:
        self.index, self.gate, self.started = index, threading.Event(), threading.Event()
        self.batches: list[int] = []

    def search_batch(self, queries):
        self.batches.append(len(queries))
        if len(self.batches) == 1:
            self.started.set()
            assert self.gate.wait(30)
        return self.index.search_batch(queries)


def test_requests_that_arrive_during_a_search_are_answered_by_the_next_batch():
    vecs = _vectors(2000)
    idx = _GatedIndex(ShardIndex.build("v1", np.arange(2000), vecs, IndexParams()))  # exact
    sizes: list[int] = []
    batcher = QueryBatcher(max_batch=64, on_batch=sizes.append)
    qs = _vectors(9, seed=2)
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(batcher.search, idx, Query(qs[0], 5))
        assert idx.started.wait(30)  # the first request runs alone, at once
        rest = [pool.submit(batcher.search, idx, Query(q, 5)) for q in qs[1:]]

        def queued() -> int:
            with batcher._cond:
                return len(batcher._queue)

        wait_for(lambda: queued() == 8, 30, "the other requests to queue behind the first")
        idx.gate.set()
        results = [first.result(30)] + [f.result(30) for f in rest]
    assert idx.batches == [1, 8] and sizes == [1, 8]
    for q, hits in zip(qs, results, strict=True):
        assert [i for i, _ in hits] == [i for i, _ in idx.index.search(q, 5)]


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_request_still_runs():
    class Broken:
        def search_batch(self, queries):
            raise ValueError("query dim 3 != index dim 64")

    batcher = QueryBatcher()
    with pytest.raises(ValueError, match="index dim"):
        batcher.search(Broken(), Query(np.zeros(3, np.float32), 5))
    idx = ShardIndex.build("v1", np.arange(100), _vectors(100), IndexParams())
    assert len(batcher.search(idx, Query(_vectors(1, seed=3)[0], 5))) == 5
