"""S3 Object Lock: which objects are locked, until when, and the checks that fail closed.

With ``object_lock = "governance"`` or ``"compliance"`` every object of a backup (``data/<id>/...``
and ``backups/<id>/manifest``) is written with ``ObjectLockMode`` and ``ObjectLockRetainUntilDate``.
The date is the one the retention policy keeps the backup until (``hold``: the push says it per
backup from the tree planner's "kept until"; a parent is extended to its longest-lived child's),
plus ``object_lock_margin``, and never before the store's *now* plus the margin: a backup whose date
is not known when it is written (a linear chain, no policy) is locked for the margin, and prune
(run where the policy is known) extends it.  Retention is only ever extended, never shortened.
Leases (``locks/``) and the repository marker are not locked: a push removes its lease.

Dates are computed from the store's clock (``Target.clock``, the ``Date`` header), not the
host's: a host whose clock is more than ``MAX_SKEW`` off the store's is refused, since its
snapshot times (from which the policy's dates come) are then wrong too (docs/immutable.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from btrsync.errors import ConfigError
from btrsync.targets.errors import TargetError
from btrsync.targets.settings import OBJECT_LOCK_MODES

MODES = OBJECT_LOCK_MODES
DEFAULT_MARGIN = timedelta(days=7)
MAX_SKEW = timedelta(minutes=15)  # S3 itself refuses requests signed further off (RequestTimeTooSkewed)
# a backup the policy keeps forever is locked this far ahead; every prune extends it again
FOREVER_HORIZON = timedelta(days=366)
LOCKED_PREFIXES = ("data/", "backups/")


def check_mode(value: object) -> str | None:
    """``object_lock``: ``governance``, ``compliance`` or unset; ``ConfigError`` for anything else."""
    if value in (None, "", False):
        return None
    if not isinstance(value, str) or value.lower() not in MODES:
        raise ConfigError(f"S3 object_lock must be \"governance\" or \"compliance\", not {value!r} "
                          "(see docs/immutable.md)")
    return value.lower()


def backup_of(key: str) -> str | None:
    """The backup id whose object ``key`` is (``data/<id>/...``, ``backups/<id>/manifest``), or
    ``None`` for a key that is not locked (leases, the repository marker)."""
    if not key.startswith(LOCKED_PREFIXES):
        return None
    parts = key.split("/")
    return parts[1] if len(parts) >= 3 and parts[1] else None


@dataclass(frozen=True, slots=True)
class Retention:
    """An object's lock as the store reports it."""

    mode: str  # governance or compliance (lower case)
    until: datetime  # aware UTC

    def describe(self) -> str:
        return f"{self.mode} lock until {self.until:%Y-%m-%d %H:%MZ}"


class LockClock:
    """The store's time, as the host's clock plus the skew measured once against ``store_clock``.

    ``host_clock`` is injectable (tests skew it); a skew beyond ``MAX_SKEW`` raises
    ``TargetError`` (fail closed: no lock is computed from a clock that far off)."""

    def __init__(self, store_clock: Callable[[], datetime | None], where: str,
                 host_clock: Callable[[], datetime] | None = None) -> None:
        self._store_clock = store_clock
        self.host_clock = host_clock or (lambda: datetime.now(UTC))
        self._where = where
        self._skew: timedelta | None = None
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            if self._skew is None:
                before = self.host_clock()
                store = self._store_clock()
                if store is None:
                    raise TargetError(f"{self._where} gives no time (no Date header): Object Lock dates are "
                                      "computed from the store's clock, so nothing is written locked")
                skew = store - before
                if abs(skew) > MAX_SKEW:
                    raise TargetError(
                        f"this host's clock is {_span(skew)} {'behind' if skew > timedelta(0) else 'ahead of'} "
                        f"{self._where}'s: with object_lock set, btrsync refuses to write, since the retention "
                        "dates follow from the snapshot times this clock gave (fix the time, e.g. with NTP, "
                        "then run again)")
                self._skew = skew
            return self.host_clock() + self._skew


class Holds:
    """Backup id -> the date its objects must be kept until (without the margin); thread-safe."""

    def __init__(self) -> None:
        self._until: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def set(self, backup_id: str, until: datetime) -> None:
        with self._lock:
            self._until[backup_id] = until

    def get(self, backup_id: str) -> datetime | None:
        with self._lock:
            return self._until.get(backup_id)


def lock_until(kept_until: datetime | None, now: datetime, margin: timedelta) -> datetime:
    """The retain-until date for a backup the policy keeps until ``kept_until`` (``None``: not
    known yet), the store's time being ``now``: never before ``now + margin``, at most
    ``FOREVER_HORIZON`` ahead (then extended by each prune), whole seconds (S3 keeps no more)."""
    wanted = now if kept_until is None else max(kept_until, now)
    wanted = min(wanted, now + FOREVER_HORIZON)
    return (wanted + margin).astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)


def _span(delta: timedelta) -> str:
    seconds = abs(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"
