"""A token bucket shared by every upload of a process, applied to stored bytes (after encryption)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass
class TokenBucket:
    """``rate`` bytes per second with a burst of ``burst`` bytes (default: one second's worth)."""

    rate: float
    burst: float = 0.0
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        self.burst = self.burst or max(self.rate, 256 * 1024)
        self._tokens = self.burst
        self._stamp = self.clock.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Block until ``n`` bytes may pass (large requests go into debt, then wait it off)."""
        with self._lock:
            now = self.clock.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self.clock.sleep(wait)


def throttle(items: Iterable[bytes], bucket: TokenBucket | None) -> Iterator[bytes]:
    """Pass byte strings through at the bucket's rate (a no-op without a bucket)."""
    for item in items:
        if bucket is not None:
            bucket.take(len(item))
        yield item
