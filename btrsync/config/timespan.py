"""Durations in job settings: ``0``, ``90s``, ``30m`` (minutes, as systemd reads it), ``26h``, ``7d``, ``2w``."""

from __future__ import annotations

from datetime import timedelta

from btrsync.units import parse_interval

MAX_TIMESPAN = timedelta(days=3660)  # ten years: longer is a typo, and overflows date arithmetic


def timespan(text: str | int | float) -> timedelta:
    """A duration of at most ``MAX_TIMESPAN``; a bare number is seconds.  Raises ``ValueError``
    naming the text."""
    try:
        value = _timespan(text)
    except OverflowError:
        value = MAX_TIMESPAN * 2
    if value > MAX_TIMESPAN:
        raise ValueError(f"a duration of at most 10 years, got {text!r}")
    return value


def _timespan(text: str | int | float) -> timedelta:
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"a duration must not be negative: {text!r}")
        return timedelta(seconds=text)
    stripped = text.strip()
    if stripped.replace(".", "", 1).isdigit():
        return timedelta(seconds=float(stripped))
    if stripped == "min":
        raise ValueError(f"not a duration: {text!r}")
    return parse_interval(stripped)


def check_timespan(text: str) -> str:
    timespan(text)
    return text


def systemd_timespan(value: timedelta) -> str:
    """``RandomizedDelaySec=`` form: whole seconds with the unit (``900s``)."""
    return f"{int(value.total_seconds())}s"
