"""Human sizes and rates: ``4M`` = 4 MiB, ``25M`` as a rate = 25 MiB/s (binary units, like rsync)."""

from __future__ import annotations

import re
from datetime import timedelta

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)?\s*(?:/s)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str | int) -> int:
    """``4M``, ``4MiB``, ``512k``, ``1G``, ``1048576`` -> bytes; raises ValueError with the input."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512k, 4M, 1G)")
    return int(float(m.group(1)) * _FACTORS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


_INTERVAL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_INTERVAL_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_interval(text: str) -> timedelta:
    """``90s``, ``30m`` (minutes), ``2h``, ``30d``, ``2w`` -> a timedelta; raises ValueError."""
    m = _INTERVAL_RE.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 2h, 30d, 2w)")
    return timedelta(seconds=float(m.group(1)) * _INTERVAL_SECONDS[m.group(2).lower()])
