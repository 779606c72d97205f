"""Client-side limits for remote backends: concurrent requests, requests per minute, tokens per minute."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RateLimits:
    """How hard one backend may be driven."""

    concurrency: int = 8
    """Requests in flight at once."""
    requests_per_minute: float | None = None
    """Request starts per minute (None = unlimited)."""
    tokens_per_minute: float | None = None
    """Estimated prompt + completion tokens per minute (None = unlimited)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")


class TokenBucket:
    """A bucket of `per_minute` units that refills continuously; taking more than is there waits.

    Requests larger than the whole bucket are let through once it is full and leave it in debt, so one huge
    prompt cannot block forever. Waiters are served in arrival order.
    """

    def __init__(self, per_minute: float) -> None:
        self.capacity = float(per_minute)
        self.rate = self.capacity / 60.0
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, amount: float) -> None:
        """Wait until `amount` units are available, then take them."""
        async with self._lock:
            needed = min(amount, self.capacity)
            while True:
                self._refill()
                if self._level >= needed:
                    self._level -= amount
                    return
                await asyncio.sleep((needed - self._level) / self.rate)

    def give_back(self, amount: float) -> None:
        """Return units (negative: take more), e.g. when the real token count differs from the estimate."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)


BucketFactory = Callable[[str, float], Any]
"""(name, units per minute) -> a bucket with TokenBucket's `take` / `give_back`."""

_shared_buckets: BucketFactory | None = None


def share_buckets(factory: BucketFactory | None) -> None:
    """Make this process's rate-limit buckets with `factory` from now on (a Ray worker: buckets held by one actor
    for the whole night, pipeline/ray_night.py); None: this process's own buckets again."""
    global _shared_buckets
    _shared_buckets = factory


def make_bucket(name: str, per_minute: float) -> Any:
    """A bucket of `per_minute` units for the limit called `name` (e.g. an endpoint's requests): this process's
    own, or the shared one where `share_buckets` says so."""
    if _shared_buckets is not None:
        return _shared_buckets(name, per_minute)
    return TokenBucket(per_minute)
