"""Bandwidth schedules: ``"Mon-Fri 08:00-18:00 5M"`` windows over a default rate.

Entries are ``[DAYS] HH:MM-HH:MM RATE``; ``DAYS`` is ``Mon-Fri``, ``Sat,Sun`` or omitted (every
day); a window may cross midnight (``22:00-06:00``, which belongs to the day it starts on); RATE is
a size per second (``5M`` = 5 MiB/s) or ``unlimited``.  The first matching entry wins, otherwise
the default.  Times are the host's local time unless a timezone is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from btrsync.units import parse_size

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_ENTRY = re.compile(r"^\s*(?:(?P<days>[A-Za-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})"
                    r"\s+(?P<rate>\S+)\s*$")


def parse_rate(text: str | int | None) -> float | None:
    """Bytes per second, or ``None`` for unlimited (``unlimited``, ``0``, empty)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "unlimited", "none", "0")):
        return None
    value = parse_size(text)
    return float(value) if value > 0 else None


def _days(text: str | None) -> frozenset[int]:
    if not text:
        return frozenset(range(7))
    found: set[int] = set()
    for part in text.lower().split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e[:3] not in DAYS for e in ends):
            raise ValueError(f"unknown day(s) {part!r}: use Mon..Sun, e.g. Mon-Fri or Sat,Sun")
        a, b = DAYS.index(ends[0][:3]), DAYS.index(ends[-1][:3])
        found.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(found)


def _clock(text: str) -> time:
    hh, mm = (int(x) for x in text.split(":"))
    if hh == 24 and mm == 0:
        return time.max
    return time(hh, mm)


@dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]
    start: time
    end: time
    rate: float | None

    def covers(self, t: datetime) -> bool:
        now = t.time()
        if self.start <= self.end:
            return t.weekday() in self.days and self.start <= now < self.end
        if now >= self.start:  # the evening part of a window crossing midnight
            return t.weekday() in self.days
        return (t - timedelta(days=1)).weekday() in self.days and now < self.end


@dataclass(frozen=True, slots=True)
class RateSchedule:
    default: float | None
    windows: tuple[Window, ...] = ()
    tz: ZoneInfo | None = None

    @classmethod
    def parse(cls, default: str | int | None, entries: list[str] | tuple[str, ...] = (),
              tz: str | None = None) -> RateSchedule:
        windows = []
        for entry in entries:
            m = _ENTRY.match(entry)
            if not m:
                raise ValueError(f"bad bandwidth window {entry!r}: use '[Mon-Fri] 08:00-18:00 5M'")
            windows.append(Window(_days(m["days"]), _clock(m["start"]), _clock(m["end"]), parse_rate(m["rate"])))
        return cls(parse_rate(default), tuple(windows), ZoneInfo(tz) if tz else None)

    def rate_at(self, t: datetime) -> float | None:
        local = t.astimezone(self.tz) if self.tz else t.astimezone()
        for window in self.windows:
            if window.covers(local):
                return window.rate
        return self.default

    @property
    def is_unlimited(self) -> bool:
        return self.default is None and all(w.rate is None for w in self.windows)
