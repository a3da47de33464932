"""A btrsync repository on a target: initialisation, key check, manifests, commit and removal."""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from btrsync.catalog import layout
from btrsync.catalog.manifest import Manifest
from btrsync.crypto import frames
from btrsync.crypto.keys import MasterKey
from btrsync.errors import DamageError, TargetMissingError, WrongKeyError
from btrsync.targets.base import ObjectInfo, Target
from btrsync.targets.errors import NotFound, RangeError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RepoInfo:
    format: int
    repo_id: str
    key_id: str
    created: str


class Repository:
    """The catalog of one target, opened with the key; every read is authenticated."""

    def __init__(self, target: Target, key: MasterKey, info: RepoInfo) -> None:
        self.target = target
        self.key = key
        self.info = info

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, target: Target, key: MasterKey, *, create: bool = False) -> Repository:
        """Open the repository at ``target``; with ``create``, initialise an empty target.

        Raises ``TargetMissingError`` (exit 10) when there is no repository and ``WrongKeyError``
        (exit 12) when the key is not the repository's, before anything is written.
        """
        target.probe()
        try:
            info = _parse_marker(target.read(layout.REPO_MARKER), target)
        except NotFound:
            if not create:
                raise TargetMissingError(
                    f"{target.display_url} holds no btrsync repository (push to it once to create one)"
                ) from None
            info = cls._initialise(target, key)
        if info.key_id != key.key_id:
            raise WrongKeyError(
                f"wrong key for {target.display_url}: the key file has id {key.key_id}, "
                f"the repository was written with key id {info.key_id}"
            )
        return cls(target, key, info)

    @staticmethod
    def _initialise(target: Target, key: MasterKey) -> RepoInfo:
        leftovers = [o.key for o in target.list()][:3]
        if leftovers:
            raise TargetMissingError(
                f"{target.display_url} is not empty and holds no btrsync repository "
                f"(found {', '.join(leftovers)}); use an empty location"
            )
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        info = RepoInfo(layout.FORMAT_VERSION, secrets.token_hex(8), key.key_id, now)
        doc = {"btrsync": "repository", "format": info.format, "repo_id": info.repo_id,
               "key_id": info.key_id, "created": info.created}
        target.put_bytes(layout.REPO_MARKER, json.dumps(doc, indent=2).encode() + b"\n")
        log.info("repository created target=%s repo_id=%s", target.display_url, info.repo_id)
        return info

    # -- manifests ---------------------------------------------------------------------------
    def backup_ids(self) -> list[str]:
        ids = (layout.backup_id_of_manifest_key(o.key) for o in self.target.list("backups/"))
        return sorted(i for i in ids if i)

    def load_manifest(self, backup_id: str) -> Manifest:
        key = layout.manifest_key(backup_id)
        payload = frames.open_manifest(self.key, key, self.target.read(key))
        manifest = Manifest.from_json(payload, key)
        if manifest.backup_id != backup_id:
            raise DamageError(f"{key} describes backup {manifest.backup_id}, not {backup_id}")
        return manifest

    def manifests(self) -> list[Manifest]:
        """Every committed backup, oldest snapshot first."""
        found = [self.load_manifest(i) for i in self.backup_ids()]
        return sorted(found, key=lambda m: (m.snapshot_time, m.snapshot, m.backup_id))

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest: the commit point of a backup (all segments must be durable)."""
        key = layout.manifest_key(manifest.backup_id)
        self.target.put_bytes(key, frames.seal_manifest(self.key, key, manifest.to_json()))

    # -- data --------------------------------------------------------------------------------
    def data_keys(self, backup_id: str) -> list[str]:
        return [o.key for o in self.target.list(layout.data_prefix(backup_id))]

    def read_frame(self, manifest: Manifest, index: int) -> bytes:
        """The stored frame of chunk ``index``; a missing or short segment is damage."""
        rec = manifest.chunks[index]
        key = layout.segment_key(manifest.backup_id, rec.segment)
        try:
            return self.target.read(key, offset=rec.offset, length=rec.stored_size)
        except (NotFound, RangeError):
            raise DamageError(f"chunk {index} of backup {manifest.backup_id}: segment {key} is missing "
                              f"or shorter than recorded on {self.target.display_url}") from None

    def discard_uncommitted(self, backup_id: str) -> int:
        """Delete data of a backup that has no manifest (leftovers of an interrupted push)."""
        keys = self.data_keys(backup_id)
        for key in keys:
            self.target.delete(key)
        return len(keys)

    def delete_backup(self, backup_id: str) -> None:
        """Manifest first (the backup stops existing), then its data: a crash leaves only orphans."""
        self.target.delete(layout.manifest_key(backup_id))
        for key in self.data_keys(backup_id):
            self.target.delete(key)

    def orphaned_data(self) -> list[ObjectInfo]:
        """Data objects of backups without a manifest (interrupted pushes, crashed prunes)."""
        committed = set(self.backup_ids())
        return [obj for obj in self.target.list("data/")
                if (bid := layout.backup_id_of_data_key(obj.key)) and bid not in committed]


def _parse_marker(data: bytes, target: Target) -> RepoInfo:
    try:
        doc = json.loads(data)
        info = RepoInfo(int(doc["format"]), str(doc["repo_id"]), str(doc["key_id"]), str(doc["created"]))
    except (ValueError, KeyError, TypeError):
        raise DamageError(f"{layout.REPO_MARKER} on {target.display_url} is damaged") from None
    if info.format != layout.FORMAT_VERSION:
        raise DamageError(
            f"{target.display_url} uses repository format {info.format}; this btrsync reads "
            f"format {layout.FORMAT_VERSION}"
        )
    return info
