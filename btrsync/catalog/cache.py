"""A local cache of a repository's manifest headers, so ``list``, planning and ``prune`` read only
what is new on the target.

``state_dir/catalog/<repo_id>.sqlite`` maps a manifest's object key to the version the target
listed it with (size plus the target's change token: an S3 ETag, a file's mtime) and to its sealed
bytes as read.  A listing that shows the same key with the same size and token is served from the
cache, and the sealed bytes are authenticated again on every load (so a cache edited on disk is
damage, never trust).  Anything else is read from the target and stored.  Entries whose key is no
longer listed are dropped.

The cache is never the truth for deletion: ``prune`` re-reads from the target the manifest of
every backup it deletes and of every backup it keeps as a parent (``Repository.catalog(...,
fresh=ids)``).  A cache that cannot be opened is rebuilt; ``--refresh`` rebuilds it on purpose.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from btrsync.targets.base import ObjectInfo

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    version TEXT NOT NULL,
    sealed BLOB NOT NULL
)
"""


def _version(obj: ObjectInfo) -> str | None:
    return getattr(obj, "version", None)


class CatalogCache:
    """Sealed manifest bytes by object key and listed version; one SQLite file per repository."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._rows: dict[str, tuple[int, str, bytes]] | None = None
        self._new: dict[str, tuple[int, str, bytes]] = {}
        self._deleted: set[str] = set()
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_repository(cls, state_dir: Path, repo_id: str) -> CatalogCache:
        return cls(Path(state_dir) / "catalog" / f"{repo_id}.sqlite")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute(SCHEMA)
        return conn

    def _load(self) -> dict[str, tuple[int, str, bytes]]:
        if self._rows is None:
            try:
                with closing(self._connect()) as conn:
                    self._rows = {k: (s, v, bytes(b)) for k, s, v, b in
                                  conn.execute("SELECT key, size, version, sealed FROM manifests")}
            except sqlite3.Error as exc:
                log.warning("catalog cache %s unreadable (%s): rebuilding it", self.path, exc)
                self.clear()
                self._rows = {}
        return self._rows

    def get(self, obj: ObjectInfo) -> bytes | None:
        """The cached sealed bytes of ``obj`` if the target lists it unchanged, else ``None``."""
        version = _version(obj)
        row = self._load().get(obj.key)
        if version is None or row is None or row[0] != obj.size or row[1] != version:
            self.misses += 1
            return None
        self.hits += 1
        return row[2]

    def put(self, obj: ObjectInfo, sealed: bytes) -> None:
        version = _version(obj)
        if version is not None and len(sealed) == obj.size:
            self._new[obj.key] = (obj.size, version, sealed)

    def remember(self, obj: ObjectInfo, sealed: bytes) -> None:
        """Store now what this host wrote as ``obj`` (a commit), where the target told its version."""
        self.put(obj, sealed)
        self._store(sorted(self._deleted))

    def forget(self, key: str) -> None:
        self._new.pop(key, None)
        if self._rows is not None:
            self._rows.pop(key, None)
        self._deleted.add(key)

    def save(self, listed: Iterable[str]) -> None:
        """Store new entries; drop entries whose keys the target no longer lists."""
        listed = set(listed)
        self._store(sorted({k for k in self._load() if k not in listed} | self._deleted))

    def _store(self, gone: list[str]) -> None:
        rows = self._load()
        if not self._new and not gone:
            return
        try:
            with closing(self._connect()) as conn, conn:
                conn.executemany("DELETE FROM manifests WHERE key = ?", [(k,) for k in gone])
                conn.executemany("INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?)",
                                 [(k, s, v, b) for k, (s, v, b) in self._new.items()])
        except sqlite3.Error as exc:
            log.warning("could not update the catalog cache %s: %s", self.path, exc)
            return
        for k in gone:
            rows.pop(k, None)
        rows.update(self._new)
        self._new, self._deleted = {}, set()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self._rows, self._new, self._deleted = None, {}, set()
