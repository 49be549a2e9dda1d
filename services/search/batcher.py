"""Concurrent shard searches answered together: one ScaNN `search_batched` call for all the
requests that arrived while the previous batch ran.

Why: ScaNN answers a batch of queries in much less time than the same queries one by one
(one pass over the chosen leaves, vectorised scoring), and under concurrent load the gRPC
threads otherwise each ran their own search, competing for the same two cores.

How (leader/follower, no timer): a request that finds no batch running runs at once, alone,
so a lone request never waits for company. Requests that arrive while a batch runs queue;
when the batch ends, the first queued request becomes the leader and runs everything queued
(up to `max_batch`) as the next batch, and every request returns as soon as its own batch is
done. Requests for different index objects (a blue/green swap in progress) in one batch are
searched per index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.search.index import Query, ShardIndex

Hits = list[tuple[int, float]]


@dataclass
class _Pending:
    index: Any
    query: Query
    lead: bool = False
    hits: Hits | None = None
    error: BaseException | None = None

    @property
    def answered(self) -> bool:
        return self.hits is not None or self.error is not None


class QueryBatcher:
    """Thread-safe; `search` blocks until its own hits are ready."""

    def __init__(self, max_batch: int = 64,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.on_batch = on_batch  # called with each batch's size (a metric)
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._running = False

    def search(self, index: ShardIndex, query: Query) -> Hits:
        me = _Pending(index, query)
        with self._cond:
            self._queue.append(me)
            if not self._running:  # nothing runs, so the queue held nothing: lead at once
                self._running = me.lead = True
            while not me.lead and not me.answered:
                self._cond.wait()
        if not me.answered:
            self._lead()  # a batch that starts with this request
        if me.error is not None:
            raise me.error
        assert me.hits is not None
        return me.hits

    def _lead(self) -> None:
        """Run one batch (the queue's head, which is the caller), then hand the lead to the
        next queued request, or stop."""
        with self._cond:
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
        try:
            by_index: dict[int, list[_Pending]] = {}
            for p in batch:
                by_index.setdefault(id(p.index), []).append(p)
            for group in by_index.values():
                try:
                    results = group[0].index.search_batch([p.query for p in group])
                except Exception as exc:  # each caller raises it (the servicer maps it)
                    for p in group:
                        p.error = exc
                else:
                    for p, hits in zip(group, results, strict=True):
                        p.hits = hits
            if self.on_batch is not None:
                self.on_batch(len(batch))
        finally:
            with self._cond:
                for p in batch:
                    if not p.answered:
                        p.error = RuntimeError("the batch ended without an answer")
                if self._queue:
                    self._queue[0].lead = True
                else:
                    self._running = False
                self._cond.notify_all()
