"""Per-key rate limits: a token bucket per API key, refilled at ``rate`` tokens a second up
to ``burst``. One flooding key gets 429s; every other key keeps its own budget."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from refinery.inference.exceptions import TooManyRequests


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)

    def take(self, key_id: str) -> None:
        """Spend one token of ``key_id``'s bucket, or raise TooManyRequests (Retry-After:
        when the next token is there)."""
        if self.rate <= 0:
            return
        now = self.clock()
        tokens, last = self._buckets.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key_id] = (tokens, now)
            wait = math.ceil((1 - tokens) / self.rate)
            raise TooManyRequests(
                f"over this key's rate limit of {self.rate:g} requests/s "
                f"(burst {self.burst}); retry in {wait} s",
                retry_after_s=max(1, wait),
            )
        self._buckets[key_id] = (tokens - 1, now)
