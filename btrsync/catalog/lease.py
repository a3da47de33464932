"""Upload leases: a push announces, on the target, which backup it is writing.

``locks/<backup-id>.lease`` is plain JSON ``{backup_id, parent_id, host, pid, boot_id, token,
started, refreshed}``, written before the first byte of a backup and deleted only after its
manifest is committed (or the attempt has failed and cleaned up).  While it is held, a thread
rewrites it every ``REFRESH``, however slow the upload (a throttled push is never mistaken for a
dead one).  ``clean`` and ``prune`` leave a backup alone while its lease is live: refreshed less
than ``STALE`` ago, or held by a process of this host and boot that still runs (so a killed push's
lease is stale at once and never needs a manual unlock).  "Refreshed" is judged on the target's own
clock wherever the target has one (``Target.clock`` against the lease object's ``modified``; all
built-in targets do): a pushing host whose clock is an hour behind (a VM resumed before NTP caught
up) still holds a live lease, and one whose clock runs ahead does not keep a dead push's lease alive.
Only where the target keeps no times is the ``refreshed`` field, the writer's clock, used.  A second push of the same backup, from
this host or another, refuses to start while another holder's lease is live (exit 11).

Leases are input from a shared place: reads are size-capped, times must carry a timezone, and a
time in the future is clamped to now; a lease that does not parse is *invalid*, reported by
``clean`` (which removes it), and never crashes anything.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from btrsync.catalog.layout import lease_key
from btrsync.errors import LockedError
from btrsync.targets.base import Target
from btrsync.targets.errors import NotFound, TargetError

log = logging.getLogger(__name__)

REFRESH = timedelta(minutes=5)
STALE = timedelta(minutes=30)
MAX_LEASE_BYTES = 4096

__all__ = ["REFRESH", "STALE", "Lease", "LeaseInfo", "TargetClock", "boot_id", "lease_key", "live_backup_ids",
           "live_leases", "pid_alive", "read_leases"]


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class TargetClock:
    """The target's time (``Target.clock``), read once and then advanced by this host's monotonic
    clock, so a clean that reads many leases asks the target only once and a jump of the local
    wall clock changes nothing.  ``now()`` is ``None`` when the target keeps no time."""

    def __init__(self, target: Target) -> None:
        try:
            self._base = target.clock()
        except (TargetError, OSError) as exc:
            log.debug("cannot read the clock of %s: %s", target.display_url, exc)
            self._base = None
        self._read_at = time.monotonic()

    def now(self) -> datetime | None:
        if self._base is None:
            return None
        return self._base + timedelta(seconds=time.monotonic() - self._read_at)


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
        if not self.valid:
            return False
        if self.host == socket.gethostname() and self.boot_id == boot_id():
            return pid_alive(self.pid)
        if self.silent_for is not None:
            return self.silent_for < STALE
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
                         min(refreshed, now), None if parent is None else str(parent),
                         str(doc.get("token", "")), key)
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        return LeaseInfo(backup_id, "", 0, "", now, key=key, error=f"{type(exc).__name__}: {exc}")


def read_lease(target: Target, key: str, now: datetime | None = None,
               clock: TargetClock | None = None) -> LeaseInfo | None:
    """The lease at ``key`` (``None`` if there is none), with its age on the target's clock
    (``clock``, read from the target when not given)."""
    now = now or datetime.now(UTC)
    try:
        info = target.stat(key)
        if info.size > MAX_LEASE_BYTES:
            return LeaseInfo(key.removeprefix("locks/").removesuffix(".lease"), "", 0, "", now, key=key,
                             error=f"{info.size} bytes, more than a lease ever holds")
        lease = parse_lease(key, target.read(key), now)
    except NotFound:
        return None
    target_now = (clock or TargetClock(target)).now() if info.modified is not None else None
    if target_now is None or info.modified is None or not lease.valid:
        return lease
    return replace(lease, silent_for=max(target_now - info.modified, timedelta(0)))


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
    """

    def __init__(self, target: Target, backup_id: str, parent_id: str | None = None, *,
                 refresh_every: timedelta = REFRESH) -> None:
        self.target = target
        self.backup_id = backup_id
        self.parent_id = parent_id
        self.key = lease_key(backup_id)
        self.token = secrets.token_hex(8)
        self.started = datetime.now(UTC)
        self.refresh_every = refresh_every
        self.refresh_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        other = read_lease(self.target, self.key)
        if other is not None and other.is_live(datetime.now(UTC)):
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
        while not self._stop.wait(self.refresh_every.total_seconds()):
            try:
                self._write()
                self.refresh_error = None
            except (TargetError, OSError) as exc:  # the next refresh may succeed; STALE is 6 refreshes
                self.refresh_error = str(exc)
                log.warning("could not refresh the upload lease %s: %s", self.key, exc)

    def _write(self) -> None:
        doc = {"backup_id": self.backup_id, "parent_id": self.parent_id, "token": self.token,
               "host": socket.gethostname(), "pid": os.getpid(),
               "boot_id": boot_id(), "started": self.started.isoformat(),
               "refreshed": datetime.now(UTC).isoformat()}
        self.target.put_bytes(self.key, json.dumps(doc).encode())

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():  # (started: see __enter__)
            self._thread.join()
        try:
            current = read_lease(self.target, self.key)
            if current is not None and current.valid and current.token != self.token:
                log.warning("upload lease %s was taken over (%s); leaving it", self.key, current.describe())
                return
            self.target.delete(self.key)
        except NotFound:
            pass
        except (TargetError, OSError) as exc:
            # never an error of its own: the work it guarded is done (a committed backup must not be
            # reported failed) or already failing (its error is the one to report); the lease goes
            # stale on its own, and until then only a push of this same backup waits for it
            log.warning("could not remove the upload lease %s (it goes stale %d minutes after its last "
                        "refresh): %s", self.key, STALE.total_seconds() // 60, exc)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
