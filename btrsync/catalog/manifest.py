"""The per-backup manifest: what a backup is, what it depends on, and where every chunk is.

A manifest is JSON inside an authenticated, encrypted frame (``crypto.frames.seal_manifest``), bound
to its own object key.  It is written after every segment is durable; its presence is what makes a
backup exist.
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
    chunks: tuple[ChunkRecord, ...]
    stream_bytes: int
    stored_bytes: int
    segments: int
    started: datetime
    finished: datetime
    tool: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def is_full(self) -> bool:
        return self.parent_id is None

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["chunks"] = [c.to_list() for c in self.chunks]
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
            doc["chunks"] = tuple(ChunkRecord.from_list(r) for r in doc["chunks"])
            for name in ("snapshot_time", "started", "finished"):
                doc[name] = datetime.fromisoformat(doc[name])
            manifest = cls(**doc)
        except DamageError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise DamageError(f"{where} is not a valid manifest: {exc}") from None
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
            "chunks": len(self.chunks),
            "pushed": _iso(self.finished),
        }


def _single_component(name: object) -> bool:
    return (isinstance(name, str) and 0 < len(name.encode()) <= 255 and name not in (".", "..")
            and "/" not in name and "\0" not in name)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")
