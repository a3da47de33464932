"""The narrow storage interface every target implements.

A target stores immutable objects under flat, ``/``-separated string keys.  Five verbs: ``put``,
``get``, ``stat``, ``list``, ``delete``.  ``put`` is atomic: an object is visible only when complete,
and a failed ``put`` leaves neither an object nor a partial upload behind.  Everything above this
layer (catalog, pipeline, ops) talks to targets only through this interface, and one conformance
suite (``tests/targets/test_conformance.py``) checks every implementation against it.
"""

from __future__ import annotations

import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from btrsync.targets.errors import InvalidKey, NotFound, RangeError

TEMP_MARKER = ".tmp-"
_KEY_RE = re.compile(r"^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    # what changes when the object is replaced (an S3 ETag, a file's mtime and inode), where the
    # target can tell at no extra cost; lets caches notice a rewritten object of the same size
    version: str | None = field(default=None, compare=False)
    # when the target last wrote it, by the target's own clock (see ``Target.clock``); None where
    # the target cannot tell.  Leases are judged by it, so one host's wrong clock misleads nobody.
    modified: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Leftover:
    """Something an interrupted write left on a target that is not an object: a temporary file,
    an unfinished multipart upload.  ``key`` is the object it was meant to become."""

    kind: str
    key: str
    size: int
    handle: object = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a target can do, as data rather than extra methods."""

    max_part_size: int = 64 * 1024 * 1024  # largest part the pipeline may hand to put()
    connections: int = 1  # how many concurrent calls the target handles well
    ranged_get: bool = True


def validate_key(key: str) -> str:
    """Reject keys that are not relative, plain-ASCII, ``/``-separated names (before any I/O)."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):  # (match's $ takes a trailing newline)
        raise InvalidKey(f"invalid object key {key!r}: use letters, digits, '._~-' and '/' separators")
    if any(part in (".", "..") for part in key.split("/")) or TEMP_MARKER in key:
        raise InvalidKey(f"invalid object key {key!r}: '.', '..' and '{TEMP_MARKER}' are reserved")
    return key


def is_valid_key(key: str) -> bool:
    """Whether ``key`` is a key btrsync could have written (listings skip anything else)."""
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True


def validate_prefix(prefix: str) -> str:
    """A list prefix is empty or a valid key optionally ending in ``/``."""
    if prefix:
        validate_key(prefix.rstrip("/"))
    return prefix


class Target(ABC):
    """Stores immutable objects under flat string keys.

    Implementations are safe to call from ``capabilities.connections`` threads at once for
    distinct keys.  Wrappers (retry, throttle, fault injection) implement the same interface.
    """

    capabilities: Capabilities = Capabilities()
    #: URL for messages, with credentials removed.
    display_url: str = ""

    @abstractmethod
    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        """Store the concatenation of ``parts`` under ``key``, replacing any object there.

        Visible only when complete: on any exception (also one raised by the ``parts`` iterator)
        no object and no partial upload remains.
        """

    @abstractmethod
    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield ``length`` bytes of the object from ``offset`` (to the end when ``None``).

        Raises ``NotFound``; a range past the end raises ``RangeError``.
        """

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size of a stored object; raises ``NotFound``."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Complete objects whose key starts with ``prefix``, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object (all its versions where the store keeps versions); raises ``NotFound``."""

    def discard(self, key: str) -> None:
        """Remove an object like ``delete`` if it is there, and say nothing if it is not: for a key
        the caller has just read (the push's own lease), it spares a store whose delete must first
        ask whether the object exists (S3) that question, one round trip."""
        try:
            self.delete(key)
        except NotFound:
            pass

    def discard_if(self, key: str, wanted: Callable[[bytes], bool], limit: int) -> bool:
        """Discard the object at ``key`` if ``wanted(head)`` says so, ``head`` being its first
        ``limit + 1`` bytes (more than ``limit`` tells the caller it is larger); whether it went.

        For an object the caller wrote and must remove only while it is still its own (an upload
        lease another host may have taken over).  Here it is read, then discarded: between the two
        another writer's replacement could go too.  A store that keeps versions does better
        (S3: only the version read and older ones are deleted, never one written after the read)."""
        try:
            head = read_head(self, key, limit)
        except NotFound:
            return False
        if not wanted(head):
            return False
        self.discard(key)
        return True

    def probe(self) -> None:
        """Raise ``TargetMissingError`` if the target location does not exist or is unreachable."""

    def free_space(self) -> int | None:
        """Bytes still free at the target, where the target can tell; ``None`` otherwise."""
        return None

    def first_files(self, limit: int = 3) -> builtins.list[str]:
        """Up to ``limit`` files of any kind at the location, objects or not (``list`` skips names
        that are no keys, temporary files and links): ``init`` wants the location empty."""
        return [o.key for o in self.list()][:limit] + [lo.path for lo in self.leftovers()][:limit]

    def clock(self) -> datetime | None:
        """The target's own time now, on the clock that stamps ``ObjectInfo.modified``; ``None``
        when the target cannot tell (then only the writers' own timestamps are there to judge by)."""
        return None

    def leftovers(self) -> builtins.list[Leftover]:
        """Leftovers of interrupted writes (for ``btrsync clean``); none by default."""
        return []

    def remove_leftover(self, leftover: Leftover) -> None:
        """Remove one leftover reported by ``leftovers``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and processes."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes of ``get`` joined (for small objects such as manifests)."""
        return b"".join(self.get(key, offset=offset, length=length))

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self.put(key, [data])


def read_head(target: Target, key: str, limit: int) -> bytes:
    """The first ``limit + 1`` bytes of ``key`` at most (all of it when it is no larger than
    ``limit``): a caller that wants at most ``limit`` sees when there is more, and nothing more
    is read (what a target serves is input, never trusted).  Raises ``NotFound``."""
    head = bytearray()
    stream = target.get(key)
    try:
        for block in stream:
            head += block
            if len(head) > limit:
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    del head[limit + 1:]
    return bytes(head)


def from_timestamp(seconds: float) -> datetime:
    """An mtime (seconds since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def check_range(key: str, size: int, offset: int, length: int | None) -> int:
    """Validate a read range against an object size; returns the end offset."""
    if offset < 0 or (length is not None and length < 0):
        raise RangeError(f"negative range for {key}: offset={offset} length={length}")
    end = size if length is None else offset + length
    if offset > size or end > size:
        raise RangeError(f"range {offset}..{end} is past the end of {key} ({size} bytes)")
    return end
