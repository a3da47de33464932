"""Writing and reading a backup's file index on the target.

Object: ``data/<backup-id>/files-<NNNNNN>``, parts 0, 1, ... of one zstd stream of JSON lines,
each part at most ``PART_SIZE`` compressed bytes, sealed on its own (magic ``BSF1``, info
``"btrsync files v1"``, the repository id and the part's object key as AAD, flag bit 1 on the
last part, so a dropped tail is found).  Lines: a header ``{"file_index": 1, "backup_id",
"snapshot_uuid", "parent_uuid", "attempt"}``, one record per command (``records.py``), a trailer
``{"end": true, "records", "commands", "stream_bytes"}``.  Reading checks the header against the
manifest (backup, snapshot, the chunk table's attempt token) and the trailer against the stream
size: an index written for another attempt or cut short is damage.

The writer spools the compressed lines to an unnamed temporary file (memory stays bounded at
any stream size) and uploads the parts after the stream has been checked, before the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Iterator
from typing import Any

import zstandard

from btrsync.catalog import layout
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.reads import FILES_PART_LIMIT, read_whole
from btrsync.crypto.frames import FLAG_LAST
from btrsync.errors import DamageError, UsageError
from btrsync.fileindex import records
from btrsync.fileindex.root import RootTracker
from btrsync.fileindex.tree import Inode
from btrsync.targets.errors import NotFound

PART_SIZE = 4 * 1024 * 1024
FORMAT = 1


class NoFileIndex(UsageError):
    """The backup has no file index (pushed before indexes existed): ``btrsync index`` writes it."""



class IndexWriter:
    """Feed every parser event (``add``), then ``finish`` and ``upload``; memory stays bounded."""

    def __init__(self, backup_id: str, snapshot_uuid: str, parent_uuid: str | None, attempt: str, *,
                 root: Inode | None = None) -> None:
        """``root``: the top directory before this stream (``fileindex/root.py``): ``new_root()``
        for a full, the parent's recorded one for an incremental, None when not known."""
        self.backup_id = backup_id
        self.records = 0
        self.root = RootTracker(root)
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by upload/close
        self._z = zstandard.ZstdCompressor(level=3).stream_writer(self._file, closefd=False)
        self._lines: list[bytes] = []
        self._line({"file_index": FORMAT, "backup_id": backup_id, "snapshot_uuid": snapshot_uuid,
                    "parent_uuid": parent_uuid, "attempt": attempt})

    def _line(self, doc: Any) -> None:
        self._z.write(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n")

    def add(self, ev: Any) -> None:
        self.root.add_many((ev,))
        self._lines.append(records.encode(ev))
        self.records += 1
        if len(self._lines) >= 1024:
            self._flush()

    def add_many(self, events: list[Any]) -> None:
        """``add`` for each of ``events`` (a parser's batch), encoded at once."""
        self._flush()
        self.root.add_many(events)
        self._z.write(records.encode_many(events))
        self.records += len(events)

    def _flush(self) -> None:
        self._z.write(b"".join(self._lines))
        self._lines.clear()

    def finish(self, *, stream_bytes: int, commands: int) -> None:
        self._flush()
        self._line({"end": True, "records": self.records, "commands": commands, "stream_bytes": stream_bytes})
        self._z.flush(zstandard.FLUSH_FRAME)
        self._z.close()

    def upload(self, repo: Any) -> dict[str, Any]:
        """Seal and put the parts; returns what the manifest records (``files``)."""
        size = self._file.seek(0, io.SEEK_END)
        self._file.seek(0)
        parts = max(1, -(-size // PART_SIZE))
        digest = hashlib.sha256()
        stored = 0
        for part in range(parts):
            payload = self._file.read(PART_SIZE)
            digest.update(payload)
            key = layout.files_key(self.backup_id, part)
            frame = repo.binding.seal_files(key, payload, last=part == parts - 1)
            repo.target.put_bytes(key, frame)
            stored += len(frame)
        self._file.close()
        root = self.root.record()
        return {"format": FORMAT, "parts": parts, "records": self.records, "stored_bytes": stored,
                "sha256": digest.hexdigest(), **({"root": root} if root is not None else {})}

    def close(self) -> None:
        self._file.close()


def read_compressed(repo: Any, manifest: Manifest) -> tuple[bytes, int]:
    """The index's compressed bytes (all parts, authenticated) and the stored bytes read."""
    pieces: list[bytes] = []
    stored = 0
    part = 0
    expected = (manifest.files or {}).get("parts")
    while True:
        key = layout.files_key(manifest.backup_id, part)
        try:
            frame = read_whole(repo.target, key, FILES_PART_LIMIT, "file index part")
        except NotFound:
            if part == 0 and not manifest.files:
                raise NoFileIndex(f"backup {manifest.backup_id} has no file index (pushed before btrsync "
                                  f"kept one): run 'btrsync index {manifest.backup_id} --from URL' once") from None
            raise DamageError(f"file index part {key} of backup {manifest.backup_id} is missing") from None
        stored += len(frame)
        opened = repo.binding.open_files(key, frame)
        pieces.append(opened.payload)
        part += 1
        if opened.flags & FLAG_LAST:
            break
    if expected is not None and part != expected:
        raise DamageError(f"the file index of backup {manifest.backup_id} has {part} parts, the manifest "
                          f"records {expected}")
    data = b"".join(pieces)
    want = (manifest.files or {}).get("sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise DamageError(f"the file index of backup {manifest.backup_id} is not the one its manifest pins")
    return data, stored


_BLOCK = 1 << 20  # decompressed bytes decoded at once: one JSON array of a block's lines


def _blocks(reader: Any) -> Iterator[bytes]:
    """The decompressed index in blocks of whole lines (each ends with its newline)."""
    rest = b""
    while True:
        block = reader.read(_BLOCK)
        if not block:
            if rest:
                yield rest
            return
        block = rest + block
        cut = block.rfind(b"\n") + 1
        rest = block[cut:]
        if cut:
            yield block[:cut]


def iter_records(data: bytes, manifest: Manifest) -> Iterator[list[Any]]:
    """The records of a compressed index, header and trailer checked against ``manifest``.

    The lines of a block are decoded by one ``json.loads`` of them joined into an array (a
    record's line is a JSON list and holds no raw newline), not one call per record."""
    where = f"the file index of backup {manifest.backup_id}"
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))  # type: ignore[arg-type]
    count = 0
    header: Any = None
    trailer: Any = None
    try:
        for block in _blocks(reader):
            if trailer is not None:
                raise DamageError(f"{where} has lines after its end")
            if header is None:
                first, _, block = block.partition(b"\n")
                header = json.loads(first)
                if (not isinstance(header, dict) or header.get("file_index") != FORMAT
                        or header.get("backup_id") != manifest.backup_id
                        or header.get("snapshot_uuid") != manifest.snapshot_uuid
                        or header.get("parent_uuid") != manifest.parent_uuid
                        or (manifest.format >= 2 and header.get("attempt") != manifest.table.get("attempt"))):
                    raise DamageError(f"{where} belongs to another backup or attempt")
                if not block:
                    continue
            end = block.find(b"\n{") + 1 if not block.startswith(b"{") else 0
            if end or block.startswith(b"{"):
                block, last = block[:end], block[end:]
                if last.count(b"\n") > 1:
                    raise DamageError(f"{where} has lines after its end")
                trailer = json.loads(last)
                if not isinstance(trailer, dict):
                    raise ValueError("its last line is not a trailer")
            if block:
                recs = json.loads(b"[" + block[:-1].replace(b"\n", b",") + b"]")
                if len(recs) != block.count(b"\n"):
                    raise ValueError(f"a line after record {count} holds other than one record")
                for rec in recs:
                    if not (type(rec) is list and len(rec) == 5 and type(rec[0]) is str  # noqa: E721
                            and type(rec[4]) is dict):  # noqa: E721
                        raise ValueError(f"record {count} is not a file index record")
                    count += 1
                    yield rec
            if trailer is not None and (trailer.get("end") is not True or trailer.get("records") != count
                                        or trailer.get("stream_bytes") != manifest.stream_bytes):
                raise DamageError(f"{where} does not describe the stored stream (trailer {trailer})")
    except (ValueError, zstandard.ZstdError) as exc:
        raise DamageError(f"{where} is not a valid file index: {exc}") from None
    if header is None:
        raise DamageError(f"{where} is not a valid file index: it is empty")
    if trailer is None:
        raise DamageError(f"{where} ends without its trailer")


def records_mentioning(data: bytes, manifest: Manifest, needle: bytes) -> Iterator[list[Any]]:
    """The records whose line holds ``needle``, of a compressed index (a pre-scan: only those
    lines are decoded; the header, the trailer and every other line are checked by the
    ``iter_records`` that must follow)."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))  # type: ignore[arg-type]
    try:
        for block in _blocks(reader):
            at = block.find(needle)
            while at >= 0:
                start = block.rfind(b"\n", 0, at) + 1
                end = block.find(b"\n", at) + 1 or len(block)
                if block.startswith(b"[", start):
                    yield records.decode(block[start:end])
                at = block.find(needle, end)
    except (ValueError, zstandard.ZstdError) as exc:
        raise DamageError(f"the file index of backup {manifest.backup_id} is not a valid file index: {exc}") from None


def has_index(repo: Any, manifest: Manifest) -> bool:
    try:
        repo.target.stat(layout.files_key(manifest.backup_id, 0))
    except NotFound:
        return False
    return True
