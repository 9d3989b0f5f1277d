"""The proxy's token bucket, on an injected clock."""

from __future__ import annotations

import pytest

from labhub.proxy.limits import RateLimiter


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate():
    clock = Clock()
    limit = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limit.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("a") == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert limit.take("b") == 0.0  # each key has its own bucket
    clock.now += 0.5
    assert limit.take("a") == 0.0
    assert limit.take("a") > 0
    clock.now += 60  # a long pause refills up to the burst, no further
    assert [limit.take("a") for _ in range(4)][-1] > 0


def test_many_keys_cannot_grow_it_without_bound():
    clock = Clock()
    limit = RateLimiter(rate=1.0, burst=2, clock=clock, max_keys=10)
    for n in range(10):
        limit.take(n)
        limit.take(n)  # each bucket spent
    limit.take("new")  # nothing is full yet: everything is forgotten rather than kept
    assert len(limit._buckets) == 1
    for n in range(9):
        limit.take(n)
    clock.now += 10  # now every bucket is full again: those are the ones dropped
    limit.take("newer")
    assert len(limit._buckets) == 1


def test_nonsense_rates_are_refused():
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0)
