"""Parse and check btrfs send streams (versions 1-3) as they pass, chunk by chunk.

::

    from btrsync.sendstream.parser import StreamParser, StreamError, native_available

    p = StreamParser()
    for chunk in chunks:
        for ev in p.feed(chunk):          # ev.cmd, ev.path, ev.attrs, ev.offset, ev.size
            ...
    p.finish()                            # raises unless the stream ended with END

Every command is checked before it is reported: its length (64 KiB with the header in v1, 16 MiB
of attributes from v2 on), its CRC32C, its attributes (known types for the stream's version, no
duplicates, exact sizes of fixed-size values, the attributes btrfs receive needs), and the order
(subvol or snapshot first, END last, nothing after END). File data is not copied: WRITE and
ENCODED_WRITE report ``attrs["data_offset"]`` (in the stream) and ``attrs["data_len"]``.
Errors are :class:`StreamError` (a ``ValueError``) with ``.offset`` and ``.reason``; a parser
that failed stays failed.

``StreamParser`` is the C implementation (``native/sendstream.c``) when it was built, else the
pure-Python one (``_pyparser``); ``BTRSYNC_PURE_PARSER=1`` in the environment forces the latter.
Both give the same events and errors for every input and every chunking.
"""

from __future__ import annotations

import os
from typing import Any

from btrsync.sendstream import _pyparser
from btrsync.sendstream.format import Event, StreamError

try:
    from btrsync.sendstream import _native  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler at install time)
    _native = None

native_available: bool = _native is not None
"""The C parser is built and importable (whether or not ``BTRSYNC_PURE_PARSER`` is set)."""

PyStreamParser = _pyparser.StreamParser
NativeStreamParser: Any = _native.StreamParser if _native is not None else None

if _native is not None and os.environ.get("BTRSYNC_PURE_PARSER", "") in ("", "0"):
    StreamParser: Any = _native.StreamParser
    crc32c = _native.crc32c
    implementation = "native"
else:
    StreamParser = _pyparser.StreamParser
    crc32c = _pyparser.crc32c
    implementation = "python"


def parse(data: Any, chunk_size: int = 4 << 20, parser: Any = None) -> list[Event]:
    """All events of a complete stream in memory (checked to the end), fed in ``chunk_size``
    pieces through ``parser`` (a new ``StreamParser`` by default)."""
    p = parser if parser is not None else StreamParser()
    mv = memoryview(data).cast("B")
    events: list[Event] = []
    for start in range(0, len(mv), chunk_size):
        events += p.feed(mv[start:start + chunk_size])
    p.finish()
    return events


__all__ = ["Event", "NativeStreamParser", "PyStreamParser", "StreamError", "StreamParser", "crc32c",
           "implementation", "native_available", "parse"]
