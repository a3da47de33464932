"""The audit log: every deletion and every prune run as one JSON line, in the state directory
(``audit.log``) and in the system journal (syslog, when ``/dev/log`` exists).

A deletion is logged twice: its intent before anything is removed (``phase: intent``) and its
outcome after (``done`` or ``failed``), so a crash in between still leaves a trace of what was
about to go.  Deletions by prune, clean, a resumed push and ``snapshot delete`` all land here."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from btrsync.fdio import write_all

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, state_dir: Path, *, syslog: bool = True) -> None:
        self.path = Path(state_dir) / "audit.log"
        self._syslog = _syslog_logger() if syslog else None

    def record(self, event: str, **fields: Any) -> None:
        entry = {"time": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "host": socket.gethostname(),
                 "event": event, **fields}
        line = json.dumps(entry, sort_keys=True, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # a record cut short (a full disk, a crash mid-write) must not swallow this one
            end = os.fstat(fd).st_size
            start = b"\n" if end and os.pread(fd, 1, end - 1) != b"\n" else b""
            write_all(fd, start + line.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._syslog is not None:
            self._syslog.info("btrsync-audit %s", line)


    @contextmanager
    def deletion(self, event: str, **fields: Any) -> Iterator[None]:
        """Log the intent, run the deletion inside the ``with``, log its outcome."""
        self.record(event, phase="intent", **fields)
        try:
            yield
        except BaseException as exc:
            self.record(event, phase="failed", error=f"{type(exc).__name__}: {exc}", **fields)
            raise
        self.record(event, phase="done", **fields)

    def object_deletions(self, target: str, reason: str) -> ObjectDeletionHook:
        """A hook for ``Repository`` deletions: one intent/outcome pair per object key."""
        return lambda key: self.deletion("delete-object", target=target, key=key, reason=reason)


ObjectDeletionHook = Callable[[str], AbstractContextManager[None]]


def read_audit(state_dir: Path) -> list[dict[str, Any]]:
    path = Path(state_dir) / "audit.log"
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:  # cut short by a full disk or a crash: kept visible, never fatal
            entries.append({"event": "unreadable", "line": number, "text": line[:200]})
    return entries


def _syslog_logger() -> logging.Logger | None:
    if not os.path.exists("/dev/log"):
        return None
    logger = logging.getLogger("btrsync.audit.syslog")
    if not logger.handlers:
        try:
            handler = logging.handlers.SysLogHandler(address="/dev/log")
        except OSError:
            return None
        handler.ident = "btrsync: "
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
    return logger
