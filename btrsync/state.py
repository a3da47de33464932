"""Local state (``state_dir``, default /var/lib/btrsync): what this host knows of each target.

Per target URL, ``targets/<hash of url>.json`` records:

- ``repo_id``: the repository found there the first time; a different repository at the same URL
  is refused (exit 10, naming both ids), so a disk swapped for another, or a prefix replaced
  under us, is noticed before anything is written or deleted;
- ``held``: the snapshot uuids the target held at the last push or list (snapshot listing and
  deletion protect the parent of the next incremental without contacting the target);
- ``seen``: the backups *this host* pushed that it has seen there, and ``vanished``: those that
  disappeared without a prune by this host (a rollback of the target, or someone deleting
  backups): reported by ``list`` and ``push`` until ``btrsync state acknowledge``.

The state is a cache and a memory, never the truth about a target: the manifests are.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from btrsync.catalog.manifest import Manifest
from btrsync.errors import BtrsyncError, DamageError, TargetMissingError

DEFAULT_STATE_DIR = Path("/var/lib/btrsync")


@dataclass(slots=True)
class TargetState:
    url: str
    repo_id: str | None = None
    held: dict[str, dict[str, Any]] = field(default_factory=dict)  # uuid -> {id, snapshot, subvolume}
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # backup id -> {snapshot, subvolume}
    vanished: dict[str, dict[str, Any]] = field(default_factory=dict)  # backup id -> {snapshot, noticed}
    updated: str = ""
    verification: dict[str, Any] = field(default_factory=dict)  # the last verify's summary
    drill: dict[str, Any] = field(default_factory=dict)  # the last restore drill's summary
    repo_format: int = 0  # the highest repository format seen there (a lower one is a downgrade)

    @property
    def subvolumes(self) -> set[str]:
        """Subvolumes this target receives (it holds at least one backup of each)."""
        return {str(h.get("subvolume")) for h in self.held.values()}

    def as_doc(self) -> dict[str, Any]:
        return {"url": self.url, "repo_id": self.repo_id, "held": self.held, "seen": self.seen,
                "vanished": self.vanished, "updated": self.updated, "verification": self.verification,
                "drill": self.drill, "repo_format": self.repo_format}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> TargetState:
        return cls(str(doc["url"]), doc.get("repo_id"), dict(doc.get("held", {})), dict(doc.get("seen", {})),
                   dict(doc.get("vanished", {})), str(doc.get("updated", "")),
                   dict(doc.get("verification", {})), dict(doc.get("drill", {})), int(doc.get("repo_format", 0)))


class State:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _target_file(self, url: str) -> Path:
        return self.root / "targets" / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".json")

    def target(self, url: str) -> TargetState | None:
        path = self._target_file(url)
        try:
            return TargetState.from_doc(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged cache entry is rebuilt by the next list or push

    def bind(self, url: str, repo_id: str, repo_format: int = 0) -> None:
        """Remember the repository at ``url``; refuse another one there (exit 10), and a format
        lower than this host saw there (exit 4): a format-1 marker carries no MAC, so a target
        could otherwise pass off an old or foreign repository written with the same key as this one."""
        known = self.target(url)
        if known is not None and known.repo_id and known.repo_id != repo_id:
            raise TargetMissingError(
                f"{url} now holds btrsync repository {repo_id}, but this host knows repository "
                f"{known.repo_id} there (another disk, or the location was replaced); if that is "
                f"intended, run 'btrsync state forget {url}' first")
        if known is not None and known.repo_id == repo_id and repo_format < known.repo_format:
            raise DamageError(
                f"{url} now presents repository {repo_id} as format {repo_format}, but this host saw it as "
                f"format {known.repo_format}: a repository is never downgraded, so its marker was replaced "
                f"(restored from an old copy, or forged); refusing to use it. If you restored an old copy on "
                f"purpose, run 'btrsync state forget {url}' first")
        if known is None or known.repo_id != repo_id or repo_format > known.repo_format:
            known = known or TargetState(url)
            known.repo_id = repo_id
            known.repo_format = max(known.repo_format, repo_format)
            self._write(known)

    def record_target(self, url: str, manifests: Iterable[Manifest], *, repo_id: str | None = None,
                      deleted: Iterable[str] = (), complete: bool = True) -> list[str]:
        """Remember what ``url`` holds now; returns the ids of this host's backups that vanished.

        ``deleted`` are backups this host removed on purpose (prune).  ``complete=False`` (a
        catalog with damaged manifests) updates what is held but decides nothing about vanishing.
        """
        manifests = list(manifests)
        st = self.target(url) or TargetState(url)
        st.repo_id = repo_id or st.repo_id
        st.held = {m.snapshot_uuid: {"id": m.backup_id, "snapshot": m.snapshot, "subvolume": m.subvolume}
                   for m in manifests}
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        present = {m.backup_id for m in manifests}
        gone = set(deleted)
        if complete:
            for bid, info in st.seen.items():
                if bid not in present and bid not in gone and bid not in st.vanished:
                    st.vanished[bid] = {**info, "noticed": now}
            st.seen = {}
        for bid in present | gone:
            st.vanished.pop(bid, None)
        host = socket.gethostname()
        st.seen.update({m.backup_id: {"snapshot": m.snapshot, "subvolume": m.subvolume}
                        for m in manifests if m.host == host})
        for bid in gone:
            st.seen.pop(bid, None)
        st.updated = now
        self._write(st)
        return sorted(st.vanished)

    def record_verification(self, url: str, summary: dict[str, Any]) -> None:
        """Remember the last verification (and restore drill) of ``url`` for status and metrics."""
        st = self.target(url) or TargetState(url)
        st.verification = summary
        if summary.get("drill"):
            st.drill = {**summary["drill"], "time": summary.get("started")}
        self._write(st)

    def acknowledge(self, url: str) -> list[str]:
        """Stop reporting vanished backups of ``url``; returns the ids acknowledged."""
        st = self.target(url)
        if st is None or not st.vanished:
            return []
        ids = sorted(st.vanished)
        st.vanished = {}
        self._write(st)
        return ids

    def forget(self, urls: Iterable[str] = (), repo_id: str | None = None) -> list[str]:
        """Forget targets by URL or repository id; returns the URLs forgotten."""
        forgotten = []
        wanted = set(urls)
        for st in self.all_targets():
            if st.url in wanted or (repo_id is not None and st.repo_id == repo_id):
                self._target_file(st.url).unlink(missing_ok=True)
                forgotten.append(st.url)
        return forgotten

    def all_targets(self, *, strict: bool = False) -> list[TargetState]:
        """What this host knows of each target; an entry that cannot be read is skipped (a cache:
        the next list or push rebuilds it), or with ``strict`` an error that names it."""
        directory = self.root / "targets"
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob("*.json")):
            try:
                found.append(TargetState.from_doc(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if strict:
                    raise BtrsyncError(
                        f"cannot read what this host knows of a target ({path}: {exc}): the snapshots that "
                        "target still needs cannot be told, so none is pruned; run 'btrsync list --from URL' "
                        "for each target (it rewrites the entry), or remove the file if the target is gone"
                    ) from None
                continue
        return found

    def targets(self, *, strict: bool = False) -> dict[str, dict[str, Any]]:
        """url -> {uuid: {id, snapshot, subvolume}} for every target seen from this host; with
        ``strict`` (deciding what local snapshots may go) an unreadable entry is an error."""
        return {st.url: st.held for st in self.all_targets(strict=strict)}

    def _write(self, st: TargetState) -> None:
        write_json_atomic(self._target_file(st.url), st.as_doc())


def write_json_atomic(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
