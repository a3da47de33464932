"""The coverage ledger: when each segment of a repository was last verified intact.

``state_dir/verify/<repo_id>.sqlite`` maps (backup id, segment) to the time its data was last
read and found intact.  ``verify --older-than 30d`` reads only segments not verified for 30 days,
so a nightly slice covers a large repository over a month (borg's ``--max-age``, restic's
``--read-data-subset`` kept across runs).  The ledger only ever *skips* work that was done: it is
never a reason to believe data is intact beyond the time it records, and losing it only costs a
re-read.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._rows: dict[tuple[str, int], float] | None = None

    @classmethod
    def for_repository(cls, state_dir: Path, repo_id: str) -> Ledger:
        return cls(Path(state_dir) / "verify" / f"{repo_id}.sqlite")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute("CREATE TABLE IF NOT EXISTS verified (backup TEXT, segment INTEGER, at REAL, "
                     "PRIMARY KEY (backup, segment))")
        return conn

    def _load(self) -> dict[tuple[str, int], float]:
        if self._rows is None:
            try:
                with closing(self._connect()) as conn:
                    self._rows = {(b, s): at for b, s, at in conn.execute("SELECT backup, segment, at FROM verified")}
            except sqlite3.Error as exc:
                log.warning("verification ledger %s unreadable (%s): starting a new one", self.path, exc)
                self.path.unlink(missing_ok=True)
                self._rows = {}
        return self._rows

    def last_verified(self, backup_id: str, segment: int) -> datetime | None:
        at = self._load().get((backup_id, segment))
        return None if at is None else datetime.fromtimestamp(at, UTC)

    def record(self, items: Iterable[tuple[str, int]], when: datetime) -> None:
        rows = [(b, s, when.timestamp()) for b, s in items]
        if not rows:
            return
        try:
            with closing(self._connect()) as conn, conn:
                conn.executemany("INSERT OR REPLACE INTO verified VALUES (?, ?, ?)", rows)
        except sqlite3.Error as exc:
            log.warning("could not update the verification ledger %s: %s", self.path, exc)
            return
        self._load().update({(b, s): at for b, s, at in rows})

    def forget_missing(self, backup_ids: set[str]) -> None:
        """Drop rows of backups that no longer exist (pruned)."""
        gone = {b for b, _s in self._load() if b not in backup_ids}
        if not gone:
            return
        with closing(self._connect()) as conn, conn:
            conn.executemany("DELETE FROM verified WHERE backup = ?", [(b,) for b in gone])
        self._rows = {k: v for k, v in self._load().items() if k[0] not in gone}
