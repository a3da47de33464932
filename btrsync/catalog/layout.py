"""Object keys of a btrsync repository on a target (format version 2; 1 is read).

    btrsync-repo.json            plain JSON: format version, repository id, key id, and (format 2)
                                 an HMAC under the key, so the marker itself is authenticated
    data/<backup-id>/<NNNNNN>    segments: concatenated encrypted chunk frames
    data/<backup-id>/<NNNNNN>.idx  encrypted index of a durable segment (what resuming trusts)
    data/<backup-id>/files-<NNNNNN> encrypted parts of the backup's file index (written before the manifest)
    backups/<backup-id>/manifest the encrypted manifest, written last: its presence commits the backup
"""

from __future__ import annotations

import re

REPO_MARKER = "btrsync-repo.json"
FORMAT_VERSION = 2  # what this btrsync writes
READABLE_FORMATS = (1, 2)  # what it reads (format 1: read-only, see Repository.require_writable)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def id_safe(name: str) -> str:
    """``name`` as a backup id carries it (``@home`` -> ``_home``): what a damaged manifest's key
    tells of its subvolume."""
    return _UNSAFE.sub("_", name).strip(".")


def backup_id_for(snapshot_name: str, snapshot_uuid: str) -> str:
    """Readable and unique: the snapshot name plus 8 hex digits of its uuid."""
    safe = id_safe(snapshot_name) or "snapshot"
    return f"{safe}-{snapshot_uuid.replace('-', '')[:8]}"


def manifest_key(backup_id: str) -> str:
    return f"backups/{backup_id}/manifest"


def data_prefix(backup_id: str) -> str:
    return f"data/{backup_id}/"


def segment_key(backup_id: str, segment: int) -> str:
    return f"{data_prefix(backup_id)}{segment:06d}"


def index_key(backup_id: str, segment: int) -> str:
    return f"{segment_key(backup_id, segment)}.idx"


def files_key(backup_id: str, part: int) -> str:
    """A part of the backup's file index (under data/: deleted, kept and orphaned with its data)."""
    return f"{data_prefix(backup_id)}files-{part:06d}"


def lease_key(backup_id: str) -> str:
    return f"locks/{backup_id}.lease"


def backup_id_of_manifest_key(key: str) -> str | None:
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "backups" and parts[2] == "manifest":
        return parts[1]
    return None


def backup_id_of_data_key(key: str) -> str | None:
    parts = key.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "data" else None
