"""A btrsync repository on a target: explicit initialisation, key check, the catalog of manifests,
commit and removal.

A repository exists only where ``btrsync init`` created one (the marker ``btrsync-repo.json``):
every other command opens an existing repository and fails with exit 10 where there is none, so
an unmounted disk or a mistyped URL is an error, never a fresh repository on the wrong disk.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime

from btrsync.catalog import layout
from btrsync.catalog.cache import CatalogCache
from btrsync.catalog.chains import BrokenChain, broken_chains
from btrsync.catalog.manifest import ChunkRecord, Manifest
from btrsync.catalog.reads import MANIFEST_LIMIT, read_whole
from btrsync.crypto import frames
from btrsync.crypto.keys import MasterKey
from btrsync.errors import BtrsyncError, DamageError, TargetMissingError, UsageError, WrongKeyError
from btrsync.snapshots.naming import parse_name
from btrsync.targets.base import ObjectInfo, Target
from btrsync.targets.errors import NotFound, ObjectLocked, PermissionDenied, RangeError
from btrsync.targets.together import together

log = logging.getLogger(__name__)

MARKER_MAX_BYTES = 4096
MARKER_INFO = b"btrsync marker v2"


@dataclass(frozen=True, slots=True)
class RepoInfo:
    format: int
    repo_id: str
    key_id: str
    created: str
    mac: str = ""  # format 2: HMAC of the other fields under the key (see marker_mac)

    def fields(self) -> dict[str, object]:
        return {"btrsync": "repository", "format": self.format, "repo_id": self.repo_id,
                "key_id": self.key_id, "created": self.created}


@dataclass(frozen=True, slots=True)
class DamagedManifest:
    """A manifest that exists but cannot be trusted (authentication, format or identity)."""

    backup_id: str
    key: str
    error: str

    @property
    def snapshot(self) -> str:
        """The snapshot name its id carries (``<snapshot>-<uuid8>``)."""
        return self.backup_id.rsplit("-", 1)[0]

    def matches(self, spec: str) -> bool:
        """Whether BACKUP ``spec`` (an id or a snapshot name) names this backup."""
        return spec in (self.backup_id, self.snapshot)

    @property
    def subvolume(self) -> str | None:
        """The subvolume its id names (``<subvol>.<stamp>-<uuid8>``), ``None`` if it names none."""
        parsed = parse_name(self.snapshot)
        return parsed.base if parsed else None

    @property
    def snapshot_time(self) -> datetime | None:
        """The snapshot time its id names, ``None`` if it names none."""
        parsed = parse_name(self.snapshot)
        return parsed.time if parsed else None

    def advice(self, target: str) -> str:
        return (f"manifest {self.key} on {target} is damaged ({self.error}); restore it from a copy, "
                f"or move it aside (rename it to {self.key}.damaged: its data then counts as orphaned "
                "and 'btrsync clean' removes it)")


@dataclass(slots=True)
class Catalog:
    """The committed backups of a repository: those that authenticate, and those that do not."""

    manifests: list[Manifest] = field(default_factory=list)  # oldest snapshot first
    damaged: list[DamagedManifest] = field(default_factory=list)
    _broken: dict[str, BrokenChain] | None = field(default=None, repr=False)

    @property
    def broken(self) -> dict[str, BrokenChain]:
        """Backups whose chain cannot be followed to a full (missing, damaged or wrong parent)."""
        if self._broken is None:
            self._broken = broken_chains(self.manifests, {d.backup_id for d in self.damaged})
        return self._broken

    @property
    def restorable(self) -> list[Manifest]:
        return [m for m in self.manifests if m.backup_id not in self.broken]

    @property
    def ids(self) -> set[str]:
        return {m.backup_id for m in self.manifests} | {d.backup_id for d in self.damaged}

    def damaged_subvolumes(self) -> set[str | None]:
        """Subvolumes with a damaged manifest (``None``: one whose subvolume cannot be told)."""
        return {d.subvolume for d in self.damaged}


class Repository:
    """The catalog of one target, opened with the key; every read is authenticated."""

    def __init__(self, target: Target, key: MasterKey, info: RepoInfo) -> None:
        self.target = target
        self.key = key
        self.info = info
        self.binding = frames.Binding(key, info.repo_id if info.format >= 2 else None)
        self.cache: CatalogCache | None = None  # set by the command line: see catalog/cache.py
        self._listed: list[ObjectInfo] | BaseException | None = None  # ``open(listing=True)``: see there
        # objects of a chain read ahead at once, by key, until their link is done
        # (segment_index.chain_read_ahead)
        self.read_ahead: dict[str, bytes] = {}

    @property
    def repo_id(self) -> str:
        return self.info.repo_id

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, target: Target, key: MasterKey, *, create: bool = False, listing: bool = False) -> Repository:
        """Open the repository at ``target``.

        Raises ``TargetMissingError`` (exit 10) when there is none and ``WrongKeyError`` (exit 12)
        when the key is not the repository's, before anything is written.  ``create`` initialises
        a missing one: for tests and the demo only; the command line creates repositories with
        ``btrsync init`` alone.  ``listing``: list the manifests at once with the marker's read,
        for a caller whose next step is ``catalog(ahead=True)`` (a push plans on it): one round
        trip less.  That listing serves one such call only (its error, if any, is raised there);
        any other ``catalog()`` lists anew.
        """
        if listing:
            info, listed = together(target, lambda: read_marker(target), lambda: _listing_or_error(target))
        else:
            info, listed = read_marker(target), None
        if info is None:
            if not create:
                raise TargetMissingError(
                    f"{target.display_url} holds no btrsync repository: if this is the right place "
                    f"(is the disk mounted?), create one with 'btrsync init --to {target.display_url}'"
                )
            return cls.init(target, key)
        check_marker(info, key, target)
        repo = cls(target, key, info)
        repo._listed = listed
        return repo

    @classmethod
    def init(cls, target: Target, key: MasterKey) -> Repository:
        """Create a repository at an empty location (``btrsync init``)."""
        existing = read_marker(target)
        if existing is not None:
            raise RepositoryExistsError(f"{target.display_url} already holds btrsync repository "
                                        f"{existing.repo_id} (key id {existing.key_id}); nothing changed")
        leftovers = target.first_files(3)  # any file: list() skips names that are no keys
        if leftovers:
            raise TargetMissingError(
                f"{target.display_url} is not empty and holds no btrsync repository "
                f"(found {', '.join(leftovers)}); use an empty location"
            )
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        info = RepoInfo(layout.FORMAT_VERSION, secrets.token_hex(8), key.key_id, now)
        info = RepoInfo(info.format, info.repo_id, info.key_id, info.created, marker_mac(key, info))
        doc = {**info.fields(), "mac": info.mac}
        target.put_bytes(layout.REPO_MARKER, json.dumps(doc, indent=2).encode() + b"\n")
        log.info("repository created target=%s repo_id=%s", target.display_url, info.repo_id)
        return cls(target, key, info)

    def require_writable(self) -> None:
        """Format 1 repositories are read-only: their objects are not bound to the repository."""
        if self.info.format < layout.FORMAT_VERSION:
            raise UsageError(
                f"{self.target.display_url} is a format {self.info.format} repository: it can be listed, "
                f"verified and restored from, but not written; create a new repository elsewhere with "
                f"'btrsync init' and push there (docs/restore.md, 'Older repositories')")

    # -- manifests ---------------------------------------------------------------------------
    def backup_ids(self) -> list[str]:
        ids = (layout.backup_id_of_manifest_key(o.key) for o in self.target.list("backups/"))
        return sorted(i for i in ids if i)

    def load_manifest(self, backup_id: str, sealed: bytes | None = None) -> Manifest:
        """A manifest, read from the target (or given as ``sealed`` bytes), authenticated."""
        key = layout.manifest_key(backup_id)
        payload = self.binding.open_manifest(
            key, read_whole(self.target, key, MANIFEST_LIMIT, "manifest") if sealed is None else sealed)
        manifest = Manifest.from_json(payload, key)
        if manifest.backup_id != backup_id:
            raise DamageError(f"{key} describes backup {manifest.backup_id}, not {backup_id}")
        if manifest.format != self.info.format:
            raise DamageError(f"{key} has format {manifest.format} in a format {self.info.format} repository")
        return manifest

    def catalog(self, *, ahead: bool = False) -> Catalog:
        """Every committed backup; one that fails to load is reported, not fatal to the others.

        With a cache, a manifest the target lists unchanged is not downloaded again (its sealed
        bytes are still authenticated); the listing itself is always fresh: taken now, or, with
        ``ahead``, the one ``open(listing=True)`` took beside the marker, for callers that only
        plan or read on it (push, list, receive, restore, verify).  ``prune`` and ``clean``
        never pass it: a backup committed elsewhere after that listing would look absent, its
        parent prunable, its data orphaned.
        """
        catalog = Catalog()
        listed = [o for o in self._manifest_listing(ahead) if layout.backup_id_of_manifest_key(o.key)]
        for obj in listed:
            backup_id = layout.backup_id_of_manifest_key(obj.key)
            assert backup_id is not None
            try:
                catalog.manifests.append(self._cached_manifest(backup_id, obj))
            except NotFound:
                continue  # deleted between listing and reading
            except DamageError as exc:
                catalog.damaged.append(DamagedManifest(backup_id, obj.key, str(exc)))
                log.debug("%s", catalog.damaged[-1].advice(self.target.display_url))  # callers report it
        if self.cache is not None:
            self.cache.save(o.key for o in listed)
        catalog.manifests.sort(key=lambda m: (m.snapshot_time, m.snapshot, m.backup_id))
        return catalog

    def drop_listing_ahead(self) -> None:
        """Forget the listing ``open(listing=True)`` took (a caller that waited since, for a lock)."""
        self._listed = None

    def _manifest_listing(self, ahead: bool) -> list[ObjectInfo]:
        """What ``open(listing=True)`` listed, once and only for ``ahead``; else a listing now."""
        listed, self._listed = self._listed, None
        if not ahead or listed is None:
            return list(self.target.list("backups/"))
        if isinstance(listed, BaseException):
            raise listed
        return listed

    def _cached_manifest(self, backup_id: str, obj: ObjectInfo) -> Manifest:
        cached = self.cache.get(obj) if self.cache is not None else None
        if cached is not None:
            try:
                return self.load_manifest(backup_id, cached)
            except DamageError:  # the cached copy, not necessarily the target's: read it again
                assert self.cache is not None
                self.cache.forget(obj.key)
        sealed = read_whole(self.target, obj.key, MANIFEST_LIMIT, "manifest")
        manifest = self.load_manifest(backup_id, sealed)
        if self.cache is not None:
            self.cache.put(obj, sealed)
        return manifest

    def reread(self, manifests: list[Manifest]) -> None:
        """Read these manifests again from the target, past any cache; ``DamageError`` unless each
        is still there and unchanged (what ``prune`` does before it trusts a decision)."""
        for m in manifests:
            try:
                fresh = self.load_manifest(m.backup_id)
            except NotFound:
                raise DamageError(f"backup {m.backup_id} vanished from {self.target.display_url} while "
                                  "deciding; nothing was deleted, run the command again") from None
            if fresh != m:
                raise DamageError(f"the manifest of {m.backup_id} on {self.target.display_url} changed "
                                  "while deciding; nothing was deleted, run the command again")

    def manifests(self) -> list[Manifest]:
        """Every committed backup, oldest snapshot first; any damaged manifest raises."""
        catalog = self.catalog()
        if catalog.damaged:
            raise DamageError(catalog.damaged[0].advice(self.target.display_url))
        return catalog.manifests

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest: the commit point of a backup (all segments must be durable)."""
        key = layout.manifest_key(manifest.backup_id)
        sealed = self.binding.seal_manifest(key, manifest.to_json())
        stored = self.target.put_bytes(key, sealed)
        if self.cache is not None:  # the next listing shows it as written: no need to read it back
            try:
                self.cache.remember(stored, sealed)
            except OSError as exc:  # committed: a cache that cannot be written only costs a read later
                log.warning("could not add backup %s to the catalog cache %s: %s", manifest.backup_id,
                            self.cache.path, exc)

    # -- data --------------------------------------------------------------------------------
    def data_keys(self, backup_id: str) -> list[str]:
        return list(self.data_sizes(backup_id))

    def data_sizes(self, backup_id: str) -> dict[str, int]:
        """The size of each data object (segment, index, file index) of ``backup_id`` (one listing)."""
        return {o.key: o.size for o in self.target.list(layout.data_prefix(backup_id))}

    def committed_and_left(self, backup_id: str) -> tuple[bool, dict[str, int]]:
        """Under ``backup_id``'s upload lease, before sending it (a push or a copy): whether it is
        committed already (one stat, not a listing of every manifest) and what earlier attempts
        left of its data (``data_sizes``, for ``find_resume_point``), the two reads at once."""
        committed, left = together(self.target, lambda: self.has_manifest(backup_id),
                                   lambda: self.data_sizes(backup_id))
        return committed, left

    def read_frame(self, backup_id: str, index: int, rec: ChunkRecord) -> bytes:
        """The stored frame of chunk ``index``; a missing or short segment is damage.  From a
        segment read ahead whole when there is one (``segment_index.chain_read_ahead``)."""
        key = layout.segment_key(backup_id, rec.segment)
        ahead = self.read_ahead.get(key)
        if ahead is not None and rec.offset + rec.stored_size <= len(ahead):
            return ahead[rec.offset:rec.offset + rec.stored_size]
        try:
            return self.target.read(key, offset=rec.offset, length=rec.stored_size)
        except (NotFound, RangeError):
            raise DamageError(f"chunk {index} of backup {backup_id}: segment {key} is missing "
                              f"or shorter than recorded on {self.target.display_url}") from None

    def has_manifest(self, backup_id: str) -> bool:
        """Whether ``backup_id`` is committed here now (one stat, not a listing of every manifest)."""
        try:
            self.target.stat(layout.manifest_key(backup_id))
        except NotFound:
            return False
        return True

    def upload_gap(self, manifest: Manifest) -> str | None:
        """Right before a commit, one listing: what is wrong with the uploaded objects of
        ``manifest`` (a segment or index missing, or segments not holding exactly its stored
        bytes), or None.  A clean or prune elsewhere that took an upload for orphans, or a lost
        object, must fail the push or copy instead of committing a backup that cannot be restored."""
        bid = manifest.backup_id
        found = self.data_sizes(bid)
        names = [k for s in range(manifest.segments) for k in (layout.segment_key(bid, s), layout.index_key(bid, s))]
        missing = [k for k in names if k not in found]
        stored = sum(found.get(layout.segment_key(bid, s), 0) for s in range(manifest.segments))
        if missing:
            return f"{len(missing)} of its objects are missing ({', '.join(missing[:3])})"
        if stored != manifest.stored_bytes:
            return f"its segments hold {stored} bytes, not the {manifest.stored_bytes} written"
        return None

    def discard_uncommitted(self, backup_id: str, before_delete: DeleteHook | None = None) -> int:
        """Delete data of a backup that has no manifest (leftovers of an interrupted push).  What
        the store refuses to delete stays (see :meth:`delete_leftovers`)."""
        keys = self.data_keys(backup_id)
        return len(keys) - len(self.delete_leftovers(keys, before_delete))

    def delete_leftovers(self, keys: Iterable[str], before_delete: DeleteHook | None = None) -> list[str]:
        """Delete what an interrupted upload left; returns the keys the store refused to delete.

        A push host's key may lack delete rights, and objects may be under S3 Object Lock
        (docs/immutable.md): such a refusal is one warning, not a failure.  What stays is harmless:
        the next attempt overwrites those keys, or carries another attempt token than they (no
        resume trusts them), or they are the same stream's and each chunk is checked against the
        stream before it is kept; a clean with a delete-capable key removes them."""
        refused: list[str] = []
        reason = ""
        for key in keys:
            try:
                self._delete(key, before_delete)
            except (PermissionDenied, ObjectLocked) as exc:
                refused.append(key)
                reason = reason or str(exc)
        if refused:
            log.warning("%d objects of an interrupted upload on %s were not deleted (%s); they are overwritten or "
                        "left for 'btrsync clean' where the key may delete", len(refused), self.target.display_url,
                        reason)
        return refused

    def delete_backup(self, backup_id: str, before_delete: DeleteHook | None = None) -> None:
        """Manifest first (the backup stops existing), then its data: a crash leaves only orphans."""
        self._delete(layout.manifest_key(backup_id), before_delete)
        for key in self.data_keys(backup_id):
            self._delete(key, before_delete)

    def _delete(self, key: str, before_delete: DeleteHook | None) -> None:
        with before_delete(key) if before_delete is not None else nullcontext():
            self.target.delete(key)

    def orphaned_data(self) -> list[ObjectInfo]:
        """Data objects of backups without a manifest (interrupted pushes, crashed prunes)."""
        committed = set(self.backup_ids())
        return [obj for obj in self.target.list("data/")
                if (bid := layout.backup_id_of_data_key(obj.key)) and bid not in committed]


# wraps each deletion of an object key (the audit log records intent and outcome)
DeleteHook = Callable[[str], AbstractContextManager[None]]


class RepositoryExistsError(BtrsyncError):
    """``btrsync init`` found a repository already there."""


def marker_mac(key: MasterKey, info: RepoInfo) -> str:
    """HMAC-SHA256 of the marker's fields under a key derived from the master key."""
    mac_key = key.derive(MARKER_INFO, b"")
    body = json.dumps(info.fields(), sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(mac_key, body, hashlib.sha256).hexdigest()


REPO_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _listing_or_error(target: Target) -> list[ObjectInfo] | BaseException:
    """The manifests' listing, or why it failed (raised by the ``catalog()`` that uses it: a
    location without a repository is reported as such first)."""
    try:
        return list(target.list("backups/"))
    except (BtrsyncError, OSError) as exc:
        return exc


def read_marker(target: Target) -> RepoInfo | None:
    """The repository marker's fields (unauthenticated yet), ``None`` if there is no marker."""
    def marker() -> bytes | None:
        try:  # one GET, bounded while it reads (no HEAD first: every command pays each round trip)
            return read_whole(target, layout.REPO_MARKER, MARKER_MAX_BYTES, "repository marker")
        except NotFound:
            return None

    # the check of the location and the marker's GET at once; the check's error (a missing bucket
    # or root, a denied key) comes first, as when it ran alone
    _, data = together(target, target.probe, marker)
    if data is None:
        return None
    try:
        doc = json.loads(data)
        info = RepoInfo(int(doc["format"]), str(doc["repo_id"]), str(doc["key_id"]), str(doc["created"]),
                        str(doc.get("mac", "")))
    except (ValueError, KeyError, TypeError, RecursionError):
        raise DamageError(f"{layout.REPO_MARKER} on {target.display_url} is damaged") from None
    if not REPO_ID.fullmatch(info.repo_id):  # it names local paths (ledger, listing cache); format 1 has no MAC
        raise DamageError(f"{layout.REPO_MARKER} on {target.display_url} holds {info.repo_id[:80]!r} as its "
                          "repository id, which is not one (damaged or forged): refusing to use this repository")
    if info.format not in layout.READABLE_FORMATS:
        raise DamageError(
            f"{target.display_url} uses repository format {info.format}; this btrsync reads "
            f"formats {', '.join(map(str, layout.READABLE_FORMATS))} (upgrade btrsync)"
        )
    return info


def check_marker(info: RepoInfo, key: MasterKey, target: Target) -> None:
    """Wrong key (exit 12) before anything else; then, in format 2, the marker's own MAC."""
    if info.key_id != key.key_id:
        raise WrongKeyError(
            f"wrong key for {target.display_url}: the key file has id {key.key_id}, "
            f"the repository was written with key id {info.key_id}"
        )
    if info.format >= 2 and not hmac.compare_digest(info.mac.encode(errors="surrogateescape"),
                                                    marker_mac(key, info).encode()):
        raise DamageError(f"{layout.REPO_MARKER} on {target.display_url} failed authentication "
                          "(edited or forged): refusing to use this repository")
