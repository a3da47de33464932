"""Upload leases: a push announces, on the target, which backup it is writing.

``locks/<backup-id>.lease`` is plain JSON ``{backup_id, parent_id, host, pid, boot_id, token,
started, refreshed}``, written before the first byte of a backup and deleted only after its
manifest is committed (or the attempt has failed and cleaned up).  While it is held, a thread
rewrites it every ``REFRESH``, however slow the upload (a throttled push is never mistaken for a
dead one).  ``clean`` and ``prune`` leave a backup alone while its lease is live: refreshed less
than ``STALE`` ago, or held by a process of this host and boot that still runs (so a killed push's
lease is stale at once and never needs a manual unlock).

Whose clock: a lease is stale only when it has gone ``STALE`` without a rewrite both on the
target's clock (the lease object's ``modified`` against ``Target.clock``; every built-in target
keeps both) and on its writer's (the ``refreshed`` field).  So a pushing host whose clock is an
hour behind (a VM resumed before NTP caught up) still holds a live lease, a store whose stamps or
``Date`` header come from a clock of its own errs to keeping data, and a writer whose time is more
than ``STALE`` ahead of ours is not believed (the target's clock alone decides; without one, the
future time counts as now).  A second push of the same backup, from this host or another,
refuses to start while another holder's lease is live (exit 11).

Leases are input from a shared place: reads are size-capped and times must carry a timezone; a
lease that does not parse is *invalid*, never live and never a crash: ``clean`` keeps it and its
backup's data (it may be another btrsync version's push) and names it for the operator to delete
(one with no data is removed).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from btrsync.catalog.layout import lease_key
from btrsync.catalog.reads import read_whole
from btrsync.errors import DamageError, LockedError
from btrsync.procs import boot_id, pid_alive
from btrsync.targets.base import Target
from btrsync.targets.errors import NotFound, TargetError

log = logging.getLogger(__name__)

REFRESH = timedelta(minutes=5)
STALE = timedelta(minutes=30)
MAX_LEASE_BYTES = 4096
SANE_CLOCK = datetime(2020, 1, 1, tzinfo=UTC)  # a target clock before this is not read as a time
CLOCK_SKEW_WARNING = timedelta(minutes=5)

__all__ = ["REFRESH", "STALE", "Lease", "LeaseInfo", "TargetClock", "lease_key", "live_backup_ids",
           "live_leases", "read_leases"]


def utc_now() -> datetime:
    return datetime.now(UTC)


class TargetClock:
    """The target's time (``Target.clock``), read once and then advanced by this host's monotonic
    clock, so a clean that reads many leases asks the target only once and a jump of the local
    wall clock changes nothing.  ``now()`` is ``None`` when the target keeps no time, or cannot
    tell it now (then leases are judged on their writers' clocks alone, with a warning)."""

    def __init__(self, target: Target) -> None:
        self.where = target.display_url
        self.problem = ""
        try:
            base = target.clock()
        except (TargetError, OSError) as exc:
            base, self.problem = None, str(exc)
        if base is not None and base < SANE_CLOCK:
            base, self.problem = None, f"it says {base.isoformat(timespec='seconds')}"
        self._base = base
        self._read_at = time.monotonic()
        self._warned = False
        skew = None if base is None else base - datetime.now(UTC)
        if skew is not None and abs(skew) > CLOCK_SKEW_WARNING:
            log.warning("the clock of %s is %d min %s this host's: upload leases are judged on the "
                        "target's clock and their writers' (check NTP on both)", self.where,
                        abs(skew).total_seconds() // 60, "ahead of" if skew > timedelta(0) else "behind")

    def now(self) -> datetime | None:
        if self._base is None:
            return None
        return self._base + timedelta(seconds=time.monotonic() - self._read_at)

    def unknown(self) -> None:
        """A lease carries the target's stamp, but the target's time cannot be read (once)."""
        if not self._warned:
            self._warned = True
            log.warning("cannot read the clock of %s (%s): upload leases there are judged on their "
                        "writers' clocks alone; a pushing host whose clock is %d minutes or more behind "
                        "looks dead", self.where, self.problem or "no time kept",
                        STALE.total_seconds() // 60)


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    backup_id: str
    host: str
    pid: int
    boot_id: str
    refreshed: datetime
    parent_id: str | None = None
    token: str = ""
    key: str = ""
    error: str | None = None  # set for an invalid lease: what is wrong with it
    # how long ago the target last wrote the lease object, on the target's clock; None if unknown
    silent_for: timedelta | None = None

    @property
    def valid(self) -> bool:
        return self.error is None

    def is_live(self, now: datetime) -> bool:
        """Live: its process runs (this host and boot), or it was rewritten within ``STALE`` on the
        target's clock or on its writer's.  Stale only when both say so (a store whose stamps or
        ``Date`` come from another clock than its writers think errs to keeping data), except that
        a writer's time more than ``STALE`` ahead of ours proves nothing: then the target decides."""
        if not self.valid:
            return False
        if self.host == socket.gethostname() and self.boot_id == boot_id():
            return pid_alive(self.pid)
        if self.silent_for is not None:
            if self.silent_for < STALE:
                return True
            if self.refreshed > now + STALE:
                return False
        return now - min(self.refreshed, now) < STALE

    def describe(self) -> str:
        if not self.valid:
            return f"invalid lease {self.key}: {self.error}"
        text = (f"host {self.host} pid {self.pid}, refreshed "
                f"{self.refreshed.isoformat(timespec='seconds').replace('+00:00', 'Z')}")
        if self.silent_for is not None:
            text += f" (last written {int(self.silent_for.total_seconds()) // 60} min ago by the target's clock)"
        return text


def parse_lease(key: str, data: bytes, now: datetime) -> LeaseInfo:
    """A lease's fields, validated; an ``error`` instead of an exception for anything bad."""
    backup_id = key.removeprefix("locks/").removesuffix(".lease")
    try:
        doc = json.loads(data)
        refreshed = datetime.fromisoformat(str(doc["refreshed"]))
        if refreshed.tzinfo is None:
            raise ValueError("refreshed time has no timezone")
        if str(doc["backup_id"]) != backup_id:
            raise ValueError(f"names backup {doc['backup_id']!r}")
        parent = doc.get("parent_id")
        return LeaseInfo(backup_id, str(doc["host"]), int(doc["pid"]), str(doc.get("boot_id", "")),
                         refreshed, None if parent is None else str(parent),
                         str(doc.get("token", "")), key)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        return LeaseInfo(backup_id, "", 0, "", now, key=key, error=f"{type(exc).__name__}: {str(exc)[:200]}")


def lease_body(target: Target, key: str, now: datetime | None = None) -> LeaseInfo | None:
    """The lease at ``key`` as its body tells it (``None`` if there is none): holder and token,
    not its age (no stat, no clock: one request)."""
    now = now or datetime.now(UTC)
    try:
        data = read_whole(target, key, MAX_LEASE_BYTES, "upload lease")
    except NotFound:
        return None
    except DamageError as exc:  # more than a lease ever holds: invalid, never a crash
        backup_id = key.removeprefix("locks/").removesuffix(".lease")
        return LeaseInfo(backup_id, "", 0, "", now, key=key, error=str(exc))
    return parse_lease(key, data, now)


def read_lease(target: Target, key: str, now: datetime | None = None,
               clock: TargetClock | None = None) -> LeaseInfo | None:
    """The lease at ``key`` (``None`` if there is none), with its age on the target's clock
    (``clock``, read from the target when not given)."""
    now = now or datetime.now(UTC)
    lease = lease_body(target, key, now)
    if lease is None or not lease.valid:
        return lease
    try:
        # stamped after the read: on NFS the open revalidated the cached attributes, and a lease
        # replaced meanwhile shows the newer stamp (an older body with a newer stamp errs to live)
        modified = target.stat(key).modified
    except NotFound:
        return None
    if modified is None:
        return lease
    clock = clock or TargetClock(target)
    target_now = clock.now()
    if target_now is None:
        clock.unknown()
        return lease
    return replace(lease, silent_for=max(target_now - modified, timedelta(0)))


def read_leases(target: Target, now: datetime | None = None,
                clock: TargetClock | None = None) -> list[LeaseInfo]:
    found = []
    for obj in target.list("locks/"):
        if not obj.key.endswith(".lease"):
            continue
        clock = clock or TargetClock(target)
        lease = read_lease(target, obj.key, now, clock)
        if lease is not None:
            found.append(lease)
    return found


def live_leases(target: Target, now: datetime | None = None) -> list[LeaseInfo]:
    now = now or datetime.now(UTC)
    return [lease for lease in read_leases(target, now) if lease.is_live(now)]


def live_backup_ids(target: Target, now: datetime | None = None) -> set[str]:
    return {lease.backup_id for lease in live_leases(target, now)}


class Lease:
    """Held by one push of one backup, from before its first segment until after its manifest.

    ``with Lease(target, backup_id, parent_id):`` refuses (``LockedError``, exit 11) when another
    holder's lease on the same backup is live; a thread refreshes it every ``refresh_every``.

    ``clock`` is this holder's time (an aware ``datetime``): it stamps ``started`` and ``refreshed``
    and judges another holder's lease.  ``wait(stop, seconds)`` is the refresh thread's timer: it
    returns True as soon as ``stop`` is set, False after ``seconds``.  Both default to the real ones;
    a test passes a fake clock whose ``wait`` advances it, and so runs the real thread without
    waiting out the interval.
    """

    def __init__(self, target: Target, backup_id: str, parent_id: str | None = None, *,
                 refresh_every: timedelta = REFRESH, clock: Callable[[], datetime] = utc_now,
                 wait: Callable[[threading.Event, float], bool] = threading.Event.wait) -> None:
        self.target = target
        self.backup_id = backup_id
        self.parent_id = parent_id
        self.key = lease_key(backup_id)
        self.token = secrets.token_hex(8)
        self.clock, self.wait = clock, wait
        self.started = clock()
        self.refresh_every = refresh_every
        self.refresh_error: str | None = None
        self.lost: str | None = None  # set by the refresh thread: why this lease is no longer ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        other = read_lease(self.target, self.key)
        if other is not None and other.is_live(self.clock()):
            raise LockedError(
                f"backup {self.backup_id} is being uploaded by another btrsync ({other.describe()}) to "
                f"{self.target.display_url}; try again when it has finished")
        try:
            self._write()
            self._thread = threading.Thread(target=self._refresh_loop, name=f"lease {self.backup_id}",
                                            daemon=True)
            self._thread.start()
        except BaseException as exc:  # a signal (btrsync.signals) or a failed write: release it
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def refresh(self) -> None:
        """Kept for callers that want an immediate refresh; the thread refreshes anyway."""
        self._write()

    def _refresh_loop(self) -> None:
        """Rewrite the lease every ``refresh_every`` while it is still this holder's: one that went
        stale (refreshes failed for ``STALE``, a suspended machine) may have been taken over, or
        removed by a clean, meanwhile; rewriting it then would put this holder back over the other
        one.  So each refresh reads it first, and a lease lost stays lost (``lost``): no more
        refreshes, and no commit (``whose``)."""
        while not self.wait(self._stop, self.refresh_every.total_seconds()):
            try:
                lost = self._lost_now()
                if lost is not None:
                    self.lost = lost
                    log.error("the upload lease %s is no longer this push's: %s; it will commit nothing",
                              self.key, lost)
                    return
                self._write()
                self.refresh_error = None
            except (TargetError, OSError) as exc:  # the next refresh may succeed; STALE is 6 refreshes
                self.refresh_error = str(exc)
                log.warning("could not refresh the upload lease %s: %s", self.key, exc)

    def _write(self) -> None:
        doc = {"backup_id": self.backup_id, "parent_id": self.parent_id, "token": self.token,
               "host": socket.gethostname(), "pid": os.getpid(),
               "boot_id": boot_id(), "started": self.started.isoformat(),
               "refreshed": self.clock().isoformat()}
        self.target.put_bytes(self.key, json.dumps(doc).encode())

    def whose(self) -> str | None:
        """None while the lease on the target is this holder's (one read); else why it is not:
        asked right before a commit, beside its other checks.  A lease that went stale (our
        refreshes failed for ``STALE``, a suspended machine) may have been taken over by another
        push or copy of the same backup, or removed by a clean; then both may have written the
        same keys, and nothing of this one's may be committed over the other's."""
        return self.lost or self._lost_now()

    def _lost_now(self) -> str | None:
        current = lease_body(self.target, self.key, self.clock())
        if current is None:
            return "its upload lease is gone (removed by a clean that judged it stale, or released by another holder)"
        if not current.valid:
            return f"its upload lease was replaced by one that does not parse ({current.error})"
        if current.token != self.token:
            return f"its upload lease was taken over by another push or copy of it ({current.describe()})"
        return None

    def _still_ours(self, head: bytes) -> bool:
        """Whether the lease read at release is this holder's, or invalid (then it goes too)."""
        if len(head) > MAX_LEASE_BYTES:
            return True
        current = parse_lease(self.key, head, self.clock())
        if current.valid and current.token != self.token:
            log.warning("upload lease %s was taken over (%s); leaving it", self.key, current.describe())
            return False
        return True

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():  # (started: see __enter__)
            self._thread.join()
        try:
            # gone only while it is still ours (or unreadable): where the store keeps versions,
            # exactly the ones read, so a lease another host took over meanwhile stays
            self.target.discard_if(self.key, self._still_ours, MAX_LEASE_BYTES)
        except (TargetError, OSError) as exc:
            # never an error of its own: the work it guarded is done (a committed backup must not be
            # reported failed) or already failing (its error is the one to report); the lease goes
            # stale on its own, and until then only a push of this same backup waits for it
            log.warning("could not remove the upload lease %s (it goes stale %d minutes after its last "
                        "refresh): %s", self.key, STALE.total_seconds() // 60, exc)
