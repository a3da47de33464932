"""Snapshot names: ``<subvol-name>.<YYYYMMDDTHHMMSSZ>`` in UTC, ``_N`` appended on collision."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from btrsync.errors import UsageError

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_NAME_RE = re.compile(r"^(?P<base>.+)\.(?P<stamp>\d{8}T\d{6}Z)(?:_(?P<n>\d+))?$")


@dataclass(frozen=True, slots=True, order=True)
class SnapshotName:
    time: datetime
    serial: int
    base: str

    @property
    def name(self) -> str:
        suffix = f"_{self.serial}" if self.serial else ""
        return f"{self.base}.{self.time.strftime(STAMP_FORMAT)}{suffix}"


def parse_name(name: str) -> SnapshotName | None:
    """The parts of a btrsync snapshot name, or ``None`` for anything else (left untouched)."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    try:
        t = datetime.strptime(m["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return SnapshotName(t, int(m["n"] or 0), m["base"])


def format_stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime(STAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 time for ``--timestamp``/``--now``; naive times are taken as UTC."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            t = datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise UsageError(f"invalid time {text!r}: use ISO 8601, e.g. 2026-11-26T03:00:00Z") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).replace(microsecond=0)
