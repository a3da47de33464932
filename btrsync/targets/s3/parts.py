"""Part sizes of S3 uploads: the stores' limits, growth of the part size, re-cutting a stream.

Parts of at least 5 MiB except the last (B2 needs 5,000,000 bytes, AWS and SeaweedFS 5 MiB, so the
larger wins), at most 5 GB each and 10,000 per object; the part size grows as an upload goes on
(:func:`part_size_for`) so that a stream of unknown length up to 10 TB fits.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator

from btrsync.targets.errors import TargetError

MIN_PART_SIZE = 5 * 1024 * 1024  # AWS and SeaweedFS: 5 MiB; B2: 5,000,000 bytes
MAX_PART_SIZE = 5_000_000_000  # B2 and AWS: 5 GB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 10 * 10**12  # B2's largest file, 10 TB
DEFAULT_PART_SIZE = 16 * 1024 * 1024
GROWTH_START = 5_000  # parts kept at the configured size (5,000 x 16 MiB = 80 GiB)
GROWTH_STEP = 250  # then the part size doubles every this many parts


def part_size_for(number: int, base: int) -> int:
    """The size of part ``number`` (1-based) of an upload that started with ``base``-byte parts.

    Parts keep ``base`` for the first ``GROWTH_START`` parts, then double every ``GROWTH_STEP``
    parts up to ``MAX_PART_SIZE``, so that 10,000 parts hold at least 10 TB for any base from
    ``MIN_PART_SIZE`` up.  S3 and B2 accept parts of unequal size.
    """
    if number <= GROWTH_START:
        return base
    doublings = (number - GROWTH_START - 1) // GROWTH_STEP + 1
    return min(MAX_PART_SIZE, base << doublings)


def max_object_size(base: int) -> int:
    """The largest object ``MAX_PARTS`` parts grown from ``base`` can hold."""
    return sum(part_size_for(n, base) for n in range(1, MAX_PARTS + 1))


def rechunk(parts: Iterable[bytes], size_for: Callable[[int], int]) -> Iterator[bytes]:
    """Re-cut a stream of byte strings into parts of ``size_for(1)``, ``size_for(2)``, ... bytes.

    The last part may be shorter; an empty stream yields one empty part, so there is always at
    least one.  See :func:`marked_parts`, which this is without the marks.
    """
    return (part for part, _more in marked_parts(parts, size_for))


def marked_parts(parts: Iterable[bytes], size_for: Callable[[int], int]) -> Iterator[tuple[bytes, bool]]:
    """:func:`rechunk`'s parts, each with whether more data follows it.

    Each input is copied once, into the part being filled (a ``bytearray``), and is not referenced
    after that: a part is never held twice (pieces and their join).
    To mark a full part, the next non-empty input piece is pulled before the part is yielded (one
    piece of look-ahead), never a next part: a put can hand its first part to an upload before
    it fills the second.
    """
    views = (view for view in (memoryview(p).cast("B") for p in parts) if view)
    number = 1
    want = size_for(number)
    buf, have = bytearray(want), 0
    view = next(views, None)
    while view is not None:
        take = view[: want - have]
        buf[have : have + len(take)] = take
        have += len(take)
        view = view[len(take) :] or next(views, None)
        if have == want:
            more = view is not None
            yield buf, more  # type: ignore[misc]  # a bytearray: botocore sends it as it is
            if not more:
                return
            number += 1
            want = size_for(number)
            buf, have = bytearray(want), 0
    del buf[have:]  # the short last part (have > 0), or the one empty part of an empty stream
    yield buf, False  # type: ignore[misc]


def drain(head: builtins.list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """Yield the parts in ``head`` (dropping each reference as it goes), then those of ``rest``."""
    while head:
        yield head.pop(0)
    yield from rest



def check_part_number(number: int, size: int, what: str) -> None:
    if number > MAX_PARTS:
        raise TargetError(f"{what}: the object exceeds {MAX_PARTS} parts after {size} bytes; raise part_size")
