"""The stored versions of one key in a versioned bucket (B2's default), and which of them to delete
so that an object goes only as far as it was read: the version read and the older ones, never one
another writer stored after the read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

#: the id S3 gives a version stored while versioning is off or suspended: every write replaces
#: it, so it names no particular write
NULL_VERSION = "null"


@dataclass(frozen=True, slots=True)
class Version:
    id: str
    marker: bool  # a delete marker (B2: a hide marker), not stored bytes
    modified: datetime | None


def names_a_write(version_id: str | None) -> bool:
    """Whether ``version_id`` names one write of the object (a versioned bucket), and so can be
    deleted without touching a later one."""
    return bool(version_id) and version_id != NULL_VERSION


def read_and_older(versions: list[Version], read: str) -> list[str] | None:
    """The ids that remove the version ``read`` and every older one of the key, never a newer one;
    ``None`` when ``read`` is not among ``versions``.

    ``versions``: as ``ListObjectVersions`` gives them for the key, stored versions newest first;
    delete markers are listed apart, so one goes only when it is older than ``read`` by the
    store's clock (a marker of the same second is left: a marker holds no bytes)."""
    stored = [v for v in versions if not v.marker]
    ids = [v.id for v in stored]
    if read not in ids:
        return None
    at = ids.index(read)
    cut = stored[at].modified
    older_markers = [v.id for v in versions
                     if v.marker and cut is not None and v.modified is not None and v.modified < cut]
    return ids[at:] + older_markers


@dataclass(frozen=True, slots=True)
class Removal:
    """How to remove an object as far as it was read (``S3Target.discard_if``)."""

    read: str = ""  # the version read: deleted last
    older: list[str] = field(default_factory=list)  # deleted first, at once
    newest: bool = False  # the listing shows no stored version newer than the one read
    plain: bool = False  # no versions: one DeleteObject of the key
    thorough: bool = False  # versions the listing cannot place against the one read: every one goes


def removal_of(versions: list[Version] | None, read: str | None) -> Removal:
    """What removes the version ``read`` (a version id from the GET, or none) and the older ones,
    given the key's ``versions`` as listed (``None``: no listing)."""
    if not names_a_write(read):
        if versions is not None and any(names_a_write(v.id) for v in versions):
            return Removal(thorough=True)  # (a bucket whose versioning was suspended after use)
        return Removal(plain=True)
    assert read is not None
    doomed = read_and_older(versions or [], read)
    if doomed is None:  # not listed (no listing, or one taken before the write): that one only
        return Removal(read=read)
    stored = [v.id for v in versions or [] if not v.marker]
    return Removal(read=read, older=doomed[1:], newest=stored[0] == read)
