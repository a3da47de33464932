"""Backup windows and target schedules.

A window is a list of ``[DAYS] HH:MM-HH:MM`` entries (``Mon-Fri 22:00-06:00``, ``Sat-Sun
00:00-24:00``), parsed by the same code as bandwidth windows (``pipeline/schedule.py``): a window
crossing midnight belongs to the day it starts on.  An empty list is "any time".  Times are the
host's local time unless a timezone is named.

A target's ``every`` decides whether a run pushes to it: ``hourly``/``daily``/``weekly``/
``monthly`` mean "unless it already got a backup in this calendar period" (so a timer's random
delay never skips a day), a duration (``6h``) means "unless the last success is more recent";
a run up to a tenth of the duration (at most an hour) early still counts as due.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from btrsync.config.timespan import timespan
from btrsync.pipeline.schedule import RateSchedule, Window

PERIODS = ("hourly", "daily", "weekly", "monthly")


def _zone(tz: str | None) -> ZoneInfo | None:
    if not tz:
        return None
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {tz!r} (an IANA name such as 'Europe/Berlin')") from None


@dataclass(frozen=True, slots=True)
class BackupWindow:
    entries: tuple[str, ...] = ()
    windows: tuple[Window, ...] = ()
    tz: ZoneInfo | None = None

    @classmethod
    def parse(cls, entries: Iterable[str], tz: str | None = None) -> BackupWindow:
        entries = tuple(entries)
        zone = _zone(tz)
        windows = []
        for entry in entries:
            try:  # a bandwidth window without a rate is a backup window
                parsed = RateSchedule.parse(None, [f"{entry} unlimited"]).windows
            except ValueError:
                raise ValueError(f"bad window {entry!r}: use '[Mon-Fri] 22:00-06:00'") from None
            if any(w.start == w.end for w in parsed):  # covers no minute: the job would never run
                raise ValueError(f"window {entry!r} never opens (it ends when it starts): "
                                 "write 00:00-24:00 for a whole day")
            windows.extend(parsed)
        return cls(entries, tuple(windows), zone)

    @property
    def always(self) -> bool:
        return not self.windows

    def local(self, t: datetime) -> datetime:
        return t.astimezone(self.tz) if self.tz else t.astimezone()

    def is_open(self, t: datetime) -> bool:
        if self.always:
            return True
        local = self.local(t)
        return any(w.covers(local) for w in self.windows)

    def next_open(self, t: datetime) -> datetime | None:
        """The next minute at which the window is open (within 8 days), ``None`` if never."""
        start = t.replace(second=0, microsecond=0)
        for minutes in range(1, 8 * 24 * 60 + 1):
            candidate = start + timedelta(minutes=minutes)
            if self.is_open(candidate):
                return candidate
        return None

    def describe(self) -> str:
        where = self.tz.key if self.tz else "local time"
        return "any time" if self.always else f"{', '.join(self.entries)} ({where})"

    def closed_reason(self, t: datetime) -> str:
        nxt = self.next_open(t)
        opens = f"; it opens {self.local(nxt).strftime('%a %Y-%m-%d %H:%M %Z')}" if nxt else ""
        return f"outside the backup window {self.describe()}{opens}"


@dataclass(frozen=True, slots=True)
class TargetEvery:
    text: str
    period: str | None = None
    interval: timedelta | None = None

    @classmethod
    def parse(cls, text: str) -> TargetEvery:
        word = text.strip().lower()
        if word in PERIODS:
            return cls(text, period=word)
        try:
            return cls(text, interval=timespan(word))
        except ValueError:
            raise ValueError(f"{text!r} is neither {', '.join(PERIODS)} nor a duration such as 6h") from None

    def is_due(self, last_success: datetime | None, now: datetime, tz: ZoneInfo | None) -> tuple[bool, str]:
        if last_success is None:
            return True, "never pushed"
        if last_success > now:  # the clock was ahead then (or is behind now): never "not due" until then
            return True, f"last success recorded {_ago(last_success - now)} in the future (a clock jump?)"
        if self.interval is not None:
            slack = min(self.interval / 10, timedelta(hours=1))
            due = now - last_success >= self.interval - slack
            return due, (f"last success {_ago(now - last_success)} ago, every {self.text}")
        a, b = _period_start(last_success, self.period, tz), _period_start(now, self.period, tz)
        return a < b, f"last success {_ago(now - last_success)} ago, {self.period}"


def _period_start(t: datetime, period: str | None, tz: ZoneInfo | None) -> datetime:
    local = t.astimezone(tz) if tz else t.astimezone()
    if period == "hourly":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
