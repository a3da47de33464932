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

The state is a cache and a memory, never the truth about a target: the manifests are.  But the
remembered repository id guards against another repository at a known URL, so an entry that
cannot be read is never taken for "nothing known": it is kept aside
(``<hash>.json.damaged-<UTC time>``) and every command that relies on it fails (exit 10, naming
the file) until ``btrsync state forget URL`` after a check.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
DAMAGED = ".damaged-"  # a state file that could not be read, kept aside as NAME.damaged-<UTC time>

log = logging.getLogger(__name__)


def set_aside(path: Path) -> Path:
    """Rename a damaged state file to ``NAME.damaged-<UTC time>`` (never over another one) and
    return its new path; FileNotFoundError when another process moved it first, another OSError
    when it cannot be moved (a read-only state directory)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        aside = path.with_name(f"{path.name}{DAMAGED}{stamp}" + (f".{n}" if n else ""))
        try:
            os.link(path, aside)  # never replaces an earlier one kept aside
        except FileExistsError:
            continue
        path.unlink(missing_ok=True)
        return aside
    raise FileExistsError(f"{path}: too many damaged copies kept aside")


def kept_aside(path: Path) -> list[Path]:
    """The damaged copies of ``path`` kept aside, oldest first."""
    try:
        return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + DAMAGED))
    except (FileNotFoundError, NotADirectoryError):
        return []


class DamagedStateError(TargetMissingError):
    """What this host remembers of a target cannot be read: the repository id that guards the URL
    against another repository is unknown, so the target is refused (exit 10) until the operator
    checks it and runs ``btrsync state forget URL``."""

    def __init__(self, url: str, path: Path, why: str | None) -> None:
        cause = f" ({why})" if why else ""
        super().__init__(
            f"what this host remembers of {url} is damaged{cause} and was kept aside as {path}: without "
            f"it, the repository id that must be found at {url} is unknown, so {url} is refused rather "
            f"than trusting whatever repository is there now. Check that {url} holds the repository you "
            f"expect (the damaged file may still show its repo_id; compare it with the repo_id in "
            f"btrsync-repo.json at {url}), then run 'btrsync state forget {url}' to accept it")
        self.url, self.path = url, path


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

    def target(self, url: str, *, strict: bool = True) -> TargetState | None:
        """What this host knows of ``url``; None when nothing.  An entry that cannot be parsed is
        kept aside and, like one kept aside before, raises ``DamagedStateError`` (exit 10): the
        repository id it held must not be replaced by whatever repository is found there now.
        ``strict=False`` (reports: status, metrics) returns None for it instead, moving nothing."""
        path = self._target_file(url)
        try:
            text = path.read_text()
        except FileNotFoundError:
            aside = kept_aside(path)
            if aside and strict:
                raise DamagedStateError(url, aside[-1], None) from None
            return None
        try:
            doc = json.loads(text)
            st = TargetState.from_doc(doc)
            if st.url != url or not isinstance(st.repo_id, (str, type(None))):
                raise ValueError(f"it names {st.url!r}, not {url!r}" if st.url != url else "a bad repo_id")
            return st
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if not strict:
                return None
            why = f"{type(exc).__name__}: {exc}"
            try:
                moved = set_aside(path)
            except FileNotFoundError:  # another process kept it aside first
                raise DamagedStateError(url, (kept_aside(path) or [path])[-1], why) from None
            except OSError as failed:
                log.warning("could not keep the damaged state file %s aside: %s", path, failed)
                raise DamagedStateError(url, path, why) from None
            log.warning("the state of %s in %s could not be read (%s); kept aside as %s", url, path, why, moved)
            raise DamagedStateError(url, moved, why) from None

    def damaged(self, url: str) -> list[Path]:
        """The damaged state of ``url``: kept-aside copies, and the entry itself if it does not parse."""
        path = self._target_file(url)
        found = kept_aside(path)
        try:
            TargetState.from_doc(json.loads(path.read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            found.append(path)
        return found

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
                      deleted: Iterable[str] = (), complete: bool = True,
                      anchors: tuple[str, Iterable[Any]] | None = None) -> list[str]:
        """Remember what ``url`` holds now; returns the ids of this host's backups that vanished.

        ``deleted`` are backups this host removed on purpose (prune).  ``complete=False`` (a
        catalog with damaged manifests) updates what is held but decides nothing about vanishing.
        ``anchors`` = (subvolume, its anchors from planner/tree.py) replaces that subvolume's
        anchors (local snapshots later pushes build on: ``snapshot prune`` keeps them); the other
        anchors of backups still held are kept.
        """
        manifests = list(manifests)
        st = self.target(url) or TargetState(url)
        st.repo_id = repo_id or st.repo_id
        before = {uuid: info["anchor"] for uuid, info in st.held.items() if isinstance(info.get("anchor"), dict)
                  and (anchors is None or info.get("subvolume") != anchors[0])}
        if anchors is not None:
            before.update({a.snapshot_uuid: {"reason": a.reason, "until": a.until.isoformat()} for a in anchors[1]})
        st.held = {m.snapshot_uuid: {"id": m.backup_id, "snapshot": m.snapshot, "subvolume": m.subvolume}
                   for m in manifests}
        for uuid, anchor in before.items():
            if uuid in st.held:
                st.held[uuid]["anchor"] = anchor
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
        # a failed verification replaces the summary but not when the last one passed: metrics
        # and status must not fall back to an older success (or to none)
        st.verification = {**summary, "last_success": last_success(summary, "started")
                           or last_success(st.verification, "started")}
        if summary.get("drill"):
            drill = {**summary["drill"], "time": summary.get("started")}
            st.drill = {**drill, "last_success": last_success(drill, "time") or last_success(st.drill, "time")}
        self._write(st)

    def damaged_backups(self, url: str) -> dict[str, str]:
        """Backup ids of ``url`` its last verification found damaged or affected, with why: no
        new backup is sent on them (they are listed until a verification finds them intact)."""
        st = self.target(url, strict=False)
        summary = st.verification if st is not None else {}
        ids = summary.get("damaged_ids") if isinstance(summary, dict) else None
        if not isinstance(ids, list):
            return {}
        return {str(i): f"found damaged or affected by the verification of {summary.get('started', '?')}"
                for i in ids}

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
        """Forget targets by URL or repository id, damaged entries and their copies kept aside
        included; returns the URLs forgotten."""
        forgotten = []
        wanted = set(urls)
        if repo_id is not None:
            wanted |= {st.url for st in self.all_targets() if st.repo_id == repo_id}
        for url in sorted(wanted):
            path = self._target_file(url)
            files = [p for p in (path, *kept_aside(path)) if p.exists()]
            for p in files:
                p.unlink(missing_ok=True)
            if files:
                forgotten.append(url)
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
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                if strict:
                    raise BtrsyncError(
                        f"cannot read what this host knows of a target ({path}: {exc}): the snapshots that "
                        "target still needs cannot be told, so none is pruned; run 'btrsync list --from URL' "
                        "for each target (it keeps the file aside and says what to do), or remove the file "
                        "if the target is gone"
                    ) from None
                log.warning("cannot read what this host knows of a target (%s: %s); skipped", path, exc)
        aside = sorted(directory.glob(f"*.json{DAMAGED}*"))
        if aside and strict:
            raise BtrsyncError(
                f"what this host knew of a target was damaged and is kept aside as {aside[0]}: the snapshots "
                "that target still needs cannot be told, so none is pruned; once checked, run 'btrsync state "
                "forget URL' for that target (the commands using it name the URL), or remove the file")
        for path in aside:
            log.warning("a damaged state entry is kept aside as %s: 'btrsync state forget URL' of its target "
                        "once checked", path)
        return found

    def targets(self, *, strict: bool = False) -> dict[str, dict[str, Any]]:
        """url -> {uuid: {id, snapshot, subvolume}} for every target seen from this host; with
        ``strict`` (deciding what local snapshots may go) an unreadable entry is an error."""
        return {st.url: st.held for st in self.all_targets(strict=strict)}

    def _write(self, st: TargetState) -> None:
        write_json_atomic(self._target_file(st.url), st.as_doc())


def anchors_in_force(held_by: dict[str, Any], uuid: str, now: datetime | None = None) -> list[str]:
    """Why later pushes need the snapshot ``uuid`` as a parent: the reasons of the tree's
    anchors (``held[uuid].anchor``) the last push to each target recorded, still in force at
    ``now``.  ``held_by``: url -> held, as ``State.targets`` gives it."""
    now = now or datetime.now(UTC)
    reasons = []
    for held in held_by.values():
        entry = held.get(uuid) if isinstance(held, dict) else None
        anchor = entry.get("anchor") if isinstance(entry, dict) else None
        if not isinstance(anchor, dict):
            continue
        try:
            until = datetime.fromisoformat(str(anchor.get("until")))
        except ValueError:
            continue  # unreadable: lapsed; the newest-common rule still holds
        if until.tzinfo is not None and until > now:
            reasons.append(str(anchor.get("reason")))
    return reasons


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


def last_success(summary: dict[str, Any] | None, when: str) -> Any:
    """The time of the last success a verification or drill summary knows: its own (``when``) if
    it passed, else the one it carries (summaries written before they carried one: none)."""
    if not summary:
        return None
    return summary.get(when) if summary.get("ok") else summary.get("last_success")
