"""Time for runs: injectable, so tests simulate days of runs without sleeping.

``Clock.now()`` is the wall clock (snapshot names, windows, schedules, records); ``monotonic()``
measures durations and lock waits; ``sleep()`` waits (lock and slot polling).  ``ShiftedClock``
starts at a chosen time and advances in real time (``btrsync run --now``); tests use their own.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class ShiftedClock(SystemClock):
    """Wall time that starts at ``start`` and runs at the real pace."""

    def __init__(self, start: datetime) -> None:
        self.offset: timedelta = start - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset
