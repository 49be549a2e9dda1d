"""Per-caller token buckets (runtime/ratelimit.py), on a clock the test moves."""

from __future__ import annotations

import pytest

from runtime.ratelimit import MAX_CALLERS, CallerBuckets, RateLimited, caller_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_caller_gets_its_burst_then_waits_for_the_refill():
    clock = Clock()
    buckets = CallerBuckets(per_second=10, burst=100, clock=clock)
    buckets.admit("a", 60)
    buckets.admit("a", 40)
    with pytest.raises(RateLimited) as refused:
        buckets.admit("a", 30)
    assert refused.value.retry_after_s == 3  # 30 units at 10/s
    clock.now += 3
    buckets.admit("a", 30)


def test_callers_do_not_share_a_bucket():
    buckets = CallerBuckets(per_second=1, burst=10, clock=Clock())
    buckets.admit("a", 10)
    with pytest.raises(RateLimited):
        buckets.admit("a", 1)
    buckets.admit("b", 10)  # another caller is untouched


def test_cost_known_later_leaves_a_debt_that_is_paid_before_the_next_request():
    clock = Clock()
    buckets = CallerBuckets(per_second=10, burst=100, clock=clock)
    buckets.admit("a", 1)          # a sitemap: one unit up front...
    buckets.charge("a", 299)       # ...and the 299 pages it yielded
    with pytest.raises(RateLimited) as refused:
        buckets.admit("a", 1)
    assert refused.value.retry_after_s == 21  # from -200 back to +1 at 10/s
    clock.now += 21
    buckets.admit("a", 1)


def test_a_request_larger_than_the_burst_waits_for_a_full_bucket_instead_of_forever():
    clock = Clock()
    buckets = CallerBuckets(per_second=10, burst=100, clock=clock)
    buckets.admit("a", 50)
    with pytest.raises(RateLimited):
        buckets.admit("a", 500)
    clock.now += 5
    buckets.admit("a", 500)
    with pytest.raises(RateLimited):
        buckets.admit("a", 1)


def test_the_table_of_callers_is_bounded():
    buckets = CallerBuckets(per_second=1, burst=1, clock=Clock())
    for i in range(MAX_CALLERS + 50):
        buckets.admit(f"c{i}", 1)
    assert len(buckets._levels) == MAX_CALLERS
    buckets.admit("c0", 1)  # forgotten, so full again


def test_callers_are_named_by_token_digest_else_peer():
    a = caller_of([("authorization", "Bearer secret-token-aaaaaaaa")], "ipv4:10.0.0.1:5555")
    b = caller_of([("authorization", "Bearer secret-token-bbbbbbbb")], "ipv4:10.0.0.1:5555")
    assert a != b and a.startswith("token:") and "secret" not in a
    assert caller_of([], "ipv4:10.0.0.1:5555") == caller_of([], "ipv4:10.0.0.1:6666")
