"""Per-caller token buckets: how much work one caller may hand a service per unit of time.

A caller is named by the digest of its bearer token (one token per client or team), else by
its peer address. Each caller has a bucket of `burst` units refilled at `per_second`; a
request is admitted while the bucket is positive and then pays what it really cost, which
may leave the bucket in debt (a sitemap or WARC's size is only known once it is read): the
caller's next requests wait until the debt is paid. State is per process (per replica):
limits are per replica, and a restart forgets debts, which only ever errs toward admitting.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_CALLERS = 10_000  # buckets kept; the least recently seen are forgotten (they are full)


class RateLimited(Exception):
    """Refused: the caller's bucket is empty; `retry_after_s` says when it next may ask."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate limit: try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class CallerBuckets:
    """Token buckets keyed by caller; thread-safe."""

    def __init__(self, per_second: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_second <= 0 or burst <= 0:
            raise ValueError("per_second and burst must be positive")
        self.per_second, self.burst, self.clock = per_second, burst, clock
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()  # (level, at)
        self._lock = threading.Lock()

    def _level(self, caller: str, now: float) -> float:
        level, at = self._levels.get(caller, (self.burst, now))
        return min(self.burst, level + (now - at) * self.per_second)

    def _store(self, caller: str, level: float, now: float) -> None:
        self._levels[caller] = (level, now)
        self._levels.move_to_end(caller)
        while len(self._levels) > MAX_CALLERS:
            self._levels.popitem(last=False)

    def admit(self, caller: str, cost: float) -> None:
        """Take `cost` now, or raise RateLimited when the bucket cannot cover it (up to a
        full bucket: a request larger than `burst` waits for a full one)."""
        with self._lock:
            now = self.clock()
            level = self._level(caller, now)
            need = min(cost, self.burst)
            if level < need:
                raise RateLimited(max(1.0, math.ceil((need - level) / self.per_second)))
            self._store(caller, level - cost, now)

    def charge(self, caller: str, cost: float) -> None:
        """Take `cost` that was only known after the request was admitted (may go into
        debt)."""
        with self._lock:
            now = self.clock()
            self._store(caller, self._level(caller, now) - cost, now)


def caller_of(metadata, peer: str) -> str:
    """A stable, non-secret name for the caller: its bearer token's digest, else its peer."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return "token:" + hashlib.sha256(value.encode()).hexdigest()[:16]
    return "peer:" + peer.rsplit(":", 1)[0]
