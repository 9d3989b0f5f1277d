"""A token-bucket rate limiter for the proxy's hot path: a dictionary lookup and some arithmetic."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class RateLimiter:
    """``rate`` requests per second per key on average, bursts of up to ``burst``.

    Keys are whatever the caller limits by (a service and a client address).  At most
    ``max_keys`` buckets are kept: past that, the full ones (idle callers) are forgotten,
    and if that frees nothing, all are (a flood of addresses cannot grow memory).
    """

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max = max_keys
        self._buckets: dict[Hashable, list[float]] = {}  # key -> [tokens, at]

    def take(self, key: Hashable) -> float:
        """Spend one token of ``key``'s bucket: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._forget_full(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max:
            self._buckets.clear()
