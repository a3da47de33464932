"""A token bucket shared by every upload of a process, applied to stored bytes (after encryption)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...
    def wait(self, event: threading.Event, seconds: float) -> bool: ...  # True: the event was set


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


class Cancelled(Exception):
    """A wait for tokens was cut short: the transfer it would have paced was aborted."""


@dataclass
class TokenBucket:
    """``rate`` bytes per second with a burst of ``burst`` bytes (default: one second's worth).

    ``schedule``, if given, is asked for the rate every second (``None`` = unlimited), so a
    transfer slows down or speeds up when a bandwidth window opens or closes.  ``initial`` is
    the bucket's content when it is first used (default: full); an empty bucket (``initial=0``)
    holds the limit from the first byte, so no interval from the start sees more than ``rate``
    bytes per second.  Tokens accrue from the first ``take``, not from the bucket's creation.
    """

    rate: float
    burst: float = 0.0
    clock: Clock = field(default_factory=SystemClock)
    schedule: Callable[[], float | None] | None = None
    initial: float | None = None

    def __post_init__(self) -> None:
        self.burst = self.burst or max(self.rate, 256 * 1024)
        self._tokens = self.burst if self.initial is None else min(self.initial, self.burst)
        self._stamp: float | None = None  # set by the first take
        self._checked = float("-inf")
        self._unlimited = False
        self._lock = threading.Lock()

    def _current_rate(self, now: float) -> float | None:
        if self.schedule is not None and now - self._checked >= 1.0:
            self._checked = now
            rate = self.schedule()
            self._unlimited = rate is None
            if rate is not None and rate != self.rate:
                self.rate, self.burst = rate, max(rate, 256 * 1024)
                self._tokens = min(self._tokens, self.burst)
        return None if self._unlimited else self.rate

    def current_rate(self) -> float | None:
        """Bytes per second allowed now (``None``: unlimited), following the schedule."""
        with self._lock:
            return self._current_rate(self.clock.monotonic())

    def take(self, n: int, cancel: threading.Event | None = None) -> None:
        """Block until ``n`` bytes may pass (large requests go into debt, then wait it off).
        ``Cancelled`` as soon as ``cancel`` is set during the wait: an aborted upload stops now,
        not once a wait of up to one frame divided by the rate has run out."""
        with self._lock:
            now = self.clock.monotonic()
            rate = self._current_rate(now)
            if rate is None:  # unlimited right now
                self._stamp, self._tokens = now, self.burst
                return
            if self._stamp is not None:
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            self._tokens -= n
            wait = -self._tokens / rate if self._tokens < 0 else 0.0
        if wait > 0:
            if cancel is None:
                self.clock.sleep(wait)
            elif self.clock.wait(cancel, wait):
                raise Cancelled("the transfer was aborted while it waited for its bandwidth share")


class Metered:
    """A token bucket (or none) that reports every amount once it has passed: what is counted is
    what the bucket let through to the target, never what is merely queued for it.  Used in
    place of the bucket (``take``); ``on_pass`` runs on the thread that took the tokens."""

    def __init__(self, bucket: TokenBucket | None, on_pass: Callable[[int], None]) -> None:
        self.bucket = bucket
        self.on_pass = on_pass

    def take(self, n: int, cancel: threading.Event | None = None) -> None:
        if self.bucket is not None:
            self.bucket.take(n, cancel)
        self.on_pass(n)


def throttle(items: Iterable[bytes], bucket: TokenBucket | Metered | None,
             cancel: threading.Event | None = None) -> Iterator[bytes]:
    """Pass byte strings through at the bucket's rate (a no-op without a bucket); ``Cancelled``
    when ``cancel`` is set while an item waits for its tokens."""
    for item in items:
        if bucket is not None:
            bucket.take(len(item), cancel)
        yield item
