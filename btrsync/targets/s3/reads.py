"""Ranged reads of S3 objects: checking the range a store served, streaming a body in blocks."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from btrsync.targets.base import check_range
from btrsync.targets.errors import TargetError
from btrsync.targets.retry import transient
from btrsync.targets.s3.errors import STREAM_ERRORS

READ_BLOCK = 1 << 20


def aware(when: object) -> datetime | None:
    """A store's timestamp as an aware UTC datetime (botocore parses them; a naive one is UTC)."""
    if not isinstance(when, datetime):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)



def byte_count(key: str, answer: Mapping[str, Any], offset: int, length: int | None) -> int:
    """How many bytes a GET answer for ``offset``/``length`` carries; checks the served range."""
    start, total = 0, int(answer["ContentLength"])
    match = re.match(r"bytes (\d+)-\d+/(\d+)", answer.get("ContentRange") or "")
    if match:
        start, total = int(match.group(1)), int(match.group(2))
    if start != offset:
        raise TargetError(f"get {key}: the server ignored the Range header")
    return check_range(key, total, offset, length) - offset


def stream_body(body: Any, count: int, what: str, *, short_ok: bool = False) -> Iterator[bytes]:
    """Yield ``count`` bytes of a response body in blocks; a broken connection is transient.
    ``short_ok``: ``count`` is only a cap (the answer did not say its length), and the body may end
    before it."""
    got = 0
    try:
        while got < count:
            try:
                block = body.read(min(READ_BLOCK, count - got))
            except STREAM_ERRORS as exc:
                raise transient(
                    f"{what}: connection broke after {got} of {count} bytes ({type(exc).__name__})"
                ) from None
            if not block:
                if short_ok:
                    return
                raise transient(f"{what}: connection closed after {got} of {count} bytes")
            got += len(block)
            yield block
    finally:
        body.close()
