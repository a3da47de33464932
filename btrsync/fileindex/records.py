"""One record per send-stream command, without file data: what the file index stores.

A record is a JSON list ``[cmd, offset, size, path, attrs]``: the command's name, its byte
offset and size in the backup's stream (header included), its path and its other attributes.
WRITE/ENCODED_WRITE keep ``data_offset``/``data_len`` (where the data lies in the stream) but
never the data; timespecs are ``[sec, nsec]``, xattr values hex. Names keep undecodable bytes
as surrogates (JSON escapes them), so every path round-trips.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Iterable
from typing import Any

_SKIP = frozenset({"data", "verity_salt_data", "verity_sig_data"})
_BINARY = frozenset({"set_xattr", "enable_verity"})  # commands with bytes attributes
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps builds one per call


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# CPython's C encoder made once (JSONEncoder.encode builds one per call, most of a record's cost):
# the same output as ``_ENCODE`` (ASCII escapes, "," and ":" separators, no key sorting)
_C_ENCODER = (json.encoder.c_make_encoder(None, _refuse, json.encoder.encode_basestring_ascii, None, ":", ",",
                                          False, False, True)
              if json.encoder.c_make_encoder is not None else None)


def encode(ev: Any) -> bytes:
    """The record of one parser event, as a JSON line (hot: once per command during a push)."""
    if ev.cmd not in _BINARY:
        try:  # ints, strings and timespec tuples (JSON lists) only: the attributes as they are
            return _ENCODE([ev.cmd, ev.offset, ev.size, ev.path, ev.attrs]).encode() + b"\n"
        except TypeError:
            pass
    attrs: dict[str, Any] = {}
    for name, value in ev.attrs.items():
        if name in _SKIP:
            continue
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).hex()
        elif isinstance(value, tuple | list):
            value = list(value)
        elif not isinstance(value, int | str):
            value = str(value)
        attrs[name] = value
    return _ENCODE([ev.cmd, ev.offset, ev.size, ev.path, attrs]).encode() + b"\n"


def decode(line: bytes) -> list[Any]:
    rec = json.loads(line)
    if not (isinstance(rec, list) and len(rec) == 5 and isinstance(rec[0], str) and isinstance(rec[4], dict)):
        raise ValueError("not a file index record")
    return rec


def encode_many(events: Iterable[Any]) -> bytes:
    """The records of ``events``, as ``encode`` writes them, one line each (the push's hot path:
    a batch per chunk of the stream)."""
    if _C_ENCODER is None:
        return b"".join(encode(ev) for ev in events)
    enc = _C_ENCODER
    lines: list[str] = []
    for ev in events:
        if ev.cmd not in _BINARY:
            try:
                lines.append(enc([ev.cmd, ev.offset, ev.size, ev.path, ev.attrs], 0)[0])
                continue
            except TypeError:
                pass
        lines.append(encode(ev)[:-1].decode())
    lines.append("")
    return "\n".join(lines).encode() if len(lines) > 1 else b""
