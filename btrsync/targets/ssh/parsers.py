"""Parsing what the remote snippets and rsync answer: listings, leftovers, sizes, times, stats.

Every parser takes hostile input calmly: a record it cannot read is skipped or refused, never
guessed at.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from btrsync.targets.base import TEMP_MARKER, ObjectInfo, from_timestamp, validate_key
from btrsync.targets.errors import InvalidKey, TargetError
from btrsync.targets.ssh.scripts import PARTIAL_DIR, SYMLINK_TEXT, UPLOAD_SUFFIX

_RSYNC_TEMP_RE = re.compile(rf"^\.(.+){re.escape(UPLOAD_SUFFIX)}\.[A-Za-z0-9]{{6}}$")  # rsync's own
_STAT_RE = re.compile(r"^(Literal data|Matched data|Total bytes sent): ([0-9]+)", re.MULTILINE)
_SYMLINK_RE = re.compile(rf"{re.escape(SYMLINK_TEXT)}: (.*)")


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What rsync reported for one upload (logged at DEBUG as ``extra={"transfer": stats}``)."""

    key: str
    size: int
    literal: int  # bytes sent as data
    matched: int  # bytes rebuilt on the remote from an earlier partial upload
    sent: int  # bytes on the wire from this side, protocol included


@dataclass(frozen=True, slots=True)
class TemporaryUpload:
    """A leftover of an interrupted upload; ``path`` is relative to the target root."""

    path: str
    size: int
    mtime: float



def intended_key(path: str) -> str:
    """The object key a temporary file was meant to become (``a/.tmp-rsync-partial/k.tmp-upload``,
    ``a/.k.tmp-upload.XyZ123`` and ``a/k.tmp-upload`` all belong to ``a/k``)."""
    directory, name = posixpath.split(path)
    if posixpath.basename(directory) == PARTIAL_DIR:
        directory = posixpath.dirname(directory)
    match = _RSYNC_TEMP_RE.match(name)
    stem = match.group(1) if match else name.split(TEMP_MARKER)[0]
    return posixpath.join(directory, stem)


def leftover_kind(path: str) -> str:
    if f"/{PARTIAL_DIR}/" in f"/{path}" or _RSYNC_TEMP_RE.match(posixpath.basename(path)):
        return "partial upload"
    return "temporary file"



def parse_int(out: bytes, where: str) -> int:
    text = out.decode(errors="replace").strip()
    if not is_count(text):
        raise TargetError(f"unexpected answer from the remote host for {where}: {text[:80]!r}")
    return int(text)


def parse_listing(out: bytes) -> Iterator[tuple[str, str, ObjectInfo | None]]:
    """``(kind, path, info)`` per NUL-terminated record of :meth:`RemoteScripts.listing`:
    ``f`` files (``info`` is ``None`` for a name that is not a valid key) and ``l`` symlinks."""
    for record in out.decode(errors="replace").split("\0"):
        kind, _, rest = record.partition("\t")
        if kind == "l":
            yield "l", rest.removeprefix("./"), None
        elif kind == "f":
            # size and version come last, so a name with a tab cannot shift them
            path, size, version = rest.rsplit("\t", 2) if rest.count("\t") >= 2 else (rest, "", "")
            key = path.removeprefix("./")
            try:
                validate_key(key)
            except InvalidKey:
                yield "f", key, None
                continue
            if not is_count(size):
                yield "f", key, None
                continue
            yield "f", key, ObjectInfo(key, int(size), version or None, parse_mtime(version.partition(":")[2]))


_COUNT = re.compile(r"[0-9]{1,20}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?")


def is_count(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes ``²`` and other digits ``int`` refuses)."""
    return _COUNT.fullmatch(text) is not None


def parse_mtime(text: str) -> datetime | None:
    """Seconds since the epoch (``%Y``, or find's ``%T@`` with a fraction); ``None`` otherwise."""
    try:
        return from_timestamp(float(text)) if _TIMESTAMP.fullmatch(text) else None
    except (ValueError, OverflowError, OSError):
        return None


def symlink_path(stderr: str) -> str:
    """The path a remote snippet named after ``SYMLINK_TEXT``."""
    match = _SYMLINK_RE.search(stderr)
    return match.group(1).strip() if match else "(a path in the target)"


def parse_temporaries(out: bytes) -> Iterator[TemporaryUpload]:
    """NUL-terminated ``path<TAB>size<TAB>mtime`` records; odd names that cannot be parsed are
    skipped."""
    for line in out.decode(errors="replace").split("\0"):
        fields = line.rsplit("\t", 2)
        if len(fields) == 3 and is_count(fields[1]) and _TIMESTAMP.fullmatch(fields[2]):
            yield TemporaryUpload(fields[0], int(fields[1]), float(fields[2]))


def parse_stats(key: str, size: int, output: str) -> TransferStats:
    values = {name: int(value) for name, value in _STAT_RE.findall(output)}
    return TransferStats(
        key,
        size,
        values.get("Literal data", -1),
        values.get("Matched data", -1),
        values.get("Total bytes sent", -1),
    )
