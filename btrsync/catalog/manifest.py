"""The per-backup manifest: what a backup is, what it depends on, and how its chunks are found.

A manifest is JSON inside an authenticated, encrypted frame (``crypto.frames.Binding``), bound to
its repository and its own object key.  It is written after every segment is durable; its
presence is what makes a backup exist.  In format 2 it is a small header: the chunk records live
in the segment indexes (one per segment, written as each segment becomes durable), and the header
pins them by count, the attempt that wrote them and a digest over the indexes, so neither commit
nor restore ever holds the whole table.  Format 1 manifests carry every chunk record themselves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from btrsync.catalog.layout import FORMAT_VERSION, READABLE_FORMATS
from btrsync.errors import DamageError


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk: where its frame is stored and the xxh3-128 of stored and raw bytes."""

    segment: int
    offset: int
    stored_size: int
    raw_size: int
    stored_xxh3: str
    raw_xxh3: str

    def to_list(self) -> list[Any]:
        return [self.segment, self.offset, self.stored_size, self.raw_size, self.stored_xxh3, self.raw_xxh3]

    @classmethod
    def from_list(cls, row: list[Any]) -> ChunkRecord:
        seg, off, stored, raw, sx, rx = row
        return cls(int(seg), int(off), int(stored), int(raw), str(sx), str(rx))


@dataclass(frozen=True, slots=True)
class Manifest:
    backup_id: str
    host: str
    subvolume: str
    source_path: str
    snapshot: str
    snapshot_time: datetime
    snapshot_uuid: str
    parent_uuid: str | None
    parent_id: str | None
    depth: int
    send: dict[str, Any]
    compression: dict[str, Any]
    encryption: dict[str, Any]
    chunk_size: int
    stream_bytes: int
    stored_bytes: int
    segments: int
    started: datetime
    finished: datetime
    tool: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    # format 2: the chunk table lives in the segment indexes; the header pins it
    chunk_count: int = 0
    table: dict[str, Any] = field(default_factory=dict)  # {"attempt": token, "digest": sha256 hex}
    # format 1: every chunk record, in the manifest itself
    chunks: tuple[ChunkRecord, ...] = ()
    # from the send-stream parser at push time (empty/None for backups pushed before it existed):
    changes: dict[str, int] = field(default_factory=dict)  # created, deleted, renamed, data_bytes ...
    tree: dict[str, Any] | None = None  # full backups: {entries, bytes, sha256} of the tree sent
    # the file index written with the backup (None: pushed before it existed, see ``btrsync index``):
    # {format, parts, records, stored_bytes, sha256 of the compressed index}
    files: dict[str, Any] | None = None

    @property
    def is_full(self) -> bool:
        return self.parent_id is None

    @property
    def n_chunks(self) -> int:
        return self.chunk_count if self.format >= 2 else len(self.chunks)

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["chunks"] = [c.to_list() for c in self.chunks]
        if self.format >= 2:
            del doc["chunks"]
            if self.files is None:
                del doc["files"]  # manifests from before the file index stay byte-identical
        else:
            del doc["chunk_count"], doc["table"], doc["changes"], doc["tree"], doc["files"]
        for name in ("snapshot_time", "started", "finished"):
            doc[name] = _iso(getattr(self, name))
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") not in READABLE_FORMATS:
                raise DamageError(f"{where} has format {doc.get('format')!r}; this btrsync reads "
                                  f"{', '.join(map(str, READABLE_FORMATS))}")
            doc["chunks"] = tuple(ChunkRecord.from_list(r) for r in doc.get("chunks", ()))
            for name in ("snapshot_time", "started", "finished"):
                doc[name] = datetime.fromisoformat(doc[name])
            manifest = cls(**doc)
        except DamageError:
            raise
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise DamageError(f"{where} is not a valid manifest: {str(exc)[:200]}") from None
        manifest.validate(where)
        return manifest

    def validate(self, where: str) -> None:
        """Fields that name things on a restore machine must be safe there (hostile input)."""
        if not _single_component(self.snapshot):
            raise DamageError(f"{where} names snapshot {self.snapshot!r}, which is not a single path "
                              "component: refusing to use it")
        if self.depth < 0 or (self.parent_id is None) != (self.depth == 0) or self.backup_id == self.parent_id:
            raise DamageError(f"{where} has an inconsistent chain link (depth {self.depth}, "
                              f"parent {self.parent_id})")
        if self.snapshot_time.tzinfo is None:
            raise DamageError(f"{where} has a snapshot time without a timezone")
        if self.format >= 2 and (self.chunk_count < 0 or self.segments < 0 or not isinstance(self.table, dict)
                                 or not {"attempt", "digest"} <= set(self.table)):
            raise DamageError(f"{where} does not pin its chunk table (format {self.format})")

    def summary(self) -> dict[str, Any]:
        """The fields ``btrsync list --json`` prints."""
        return {
            "id": self.backup_id,
            "subvolume": self.subvolume,
            "snapshot": self.snapshot,
            "created": _iso(self.snapshot_time),
            "host": self.host,
            "uuid": self.snapshot_uuid,
            "parent": self.parent_id,
            "parent_uuid": self.parent_uuid,
            "depth": self.depth,
            "kind": "full" if self.is_full else "incremental",
            "stream_bytes": self.stream_bytes,
            "stored_bytes": self.stored_bytes,
            "chunks": self.n_chunks,
            "changes": self.changes,
            "tree": self.tree,
            "pushed": _iso(self.finished),
        }


def _single_component(name: object) -> bool:
    return (isinstance(name, str) and 0 < len(name.encode()) <= 255 and name not in (".", "..")
            and "/" not in name and "\0" not in name)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")
