"""Upload leases: a push announces, on the target, which backup it is writing.

``locks/<backup-id>.lease`` is plain JSON ``{host, pid, boot_id, parent_id, started, refreshed}`` written when
a push of that backup starts, refreshed at least every ``REFRESH`` while segments are stored, and
deleted when the push ends.  ``clean`` and ``prune`` leave a backup alone while its lease is live:
refreshed less than ``STALE`` ago, or held by a process of this host that still runs.  A lease of
a dead process on this host is stale at once, so a killed push never needs a manual unlock.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from btrsync.targets.base import Target
from btrsync.targets.errors import NotFound

REFRESH = timedelta(minutes=5)
STALE = timedelta(minutes=30)


def lease_key(backup_id: str) -> str:
    return f"locks/{backup_id}.lease"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    backup_id: str
    host: str
    pid: int
    boot_id: str
    refreshed: datetime
    parent_id: str | None = None

    def is_live(self, now: datetime) -> bool:
        if self.host == socket.gethostname() and self.boot_id == boot_id():
            return pid_alive(self.pid)
        return now - self.refreshed < STALE


class Lease:
    """Held by one push of one backup; ``refresh`` is cheap to call often."""

    def __init__(self, target: Target, backup_id: str, parent_id: str | None = None) -> None:
        self.target = target
        self.backup_id = backup_id
        self.parent_id = parent_id
        self.started = datetime.now(UTC)
        self._last = 0.0

    def __enter__(self) -> Lease:
        self._write()
        return self

    def refresh(self) -> None:
        if time.monotonic() - self._last >= REFRESH.total_seconds():
            self._write()

    def _write(self) -> None:
        doc = {"backup_id": self.backup_id, "parent_id": self.parent_id,
               "host": socket.gethostname(), "pid": os.getpid(),
               "boot_id": boot_id(), "started": self.started.isoformat(),
               "refreshed": datetime.now(UTC).isoformat()}
        self.target.put_bytes(lease_key(self.backup_id), json.dumps(doc).encode())
        self._last = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        try:
            self.target.delete(lease_key(self.backup_id))
        except NotFound:
            pass


def read_leases(target: Target) -> list[LeaseInfo]:
    found = []
    for obj in target.list("locks/"):
        try:
            doc = json.loads(target.read(obj.key))
            found.append(LeaseInfo(str(doc["backup_id"]), str(doc["host"]), int(doc["pid"]),
                                   str(doc.get("boot_id", "")), datetime.fromisoformat(doc["refreshed"]),
                                   doc.get("parent_id")))
        except (NotFound, ValueError, KeyError, TypeError):
            continue
    return found


def live_leases(target: Target, now: datetime | None = None) -> list[LeaseInfo]:
    now = now or datetime.now(UTC)
    return [lease for lease in read_leases(target) if lease.is_live(now)]


def live_backup_ids(target: Target, now: datetime | None = None) -> set[str]:
    return {lease.backup_id for lease in live_leases(target, now)}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
