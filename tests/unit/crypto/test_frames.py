"""Frames: round trips, tamper evidence, context binding, nonce (salt) freshness."""

from __future__ import annotations

import os

import pytest

from btrsync.crypto import frames
from btrsync.crypto.keys import MasterKey
from btrsync.errors import DamageError

KEY = MasterKey(bytes(range(32)))
B = frames.Binding(KEY, "repo-a")


def test_chunk_round_trips_and_is_bound_to_its_position() -> None:
    """A chunk opens only under the backup id and sequence number it was sealed for."""
    frame = B.seal_chunk("b-1", 7, b"payload", frames.FLAG_ZSTD)
    opened = B.open_chunk("b-1", 7, frame)
    assert opened.payload == b"payload" and opened.flags == frames.FLAG_ZSTD
    for bid, seq in [("b-1", 8), ("b-2", 7)]:
        with pytest.raises(DamageError, match="failed authentication"):
            B.open_chunk(bid, seq, frame)


@pytest.mark.parametrize("position", [0, 4, 5, 9, 30, -1])
def test_any_flipped_byte_is_detected(position: int) -> None:
    """Header, salt, ciphertext and tag are all covered by authentication."""
    frame = bytearray(B.seal_chunk("b", 0, os.urandom(100), 0))
    frame[position] ^= 0x01
    with pytest.raises(DamageError):
        B.open_chunk("b", 0, bytes(frame))


def test_truncated_frame_is_detected() -> None:
    frame = B.seal_chunk("b", 0, b"x" * 100, 0)
    for cut in (0, 10, frames.OVERHEAD - 1, len(frame) - 1):
        with pytest.raises(DamageError):
            B.open_chunk("b", 0, frame[:cut])


def test_wrong_key_fails_closed() -> None:
    frame = B.seal_chunk("b", 0, b"secret", 0)
    with pytest.raises(DamageError, match="another key"):
        frames.Binding(MasterKey(os.urandom(32)), "repo-a").open_chunk("b", 0, frame)


def test_every_seal_draws_a_fresh_salt() -> None:
    """Resealing the same chunk (a retry or resume) never reuses a derived key and nonce."""
    salts = {frames.HEADER.unpack_from(B.seal_chunk("b", 0, b"same", 0))[2] for _ in range(200)}
    assert len(salts) == 200


def test_manifest_is_bound_to_its_object_key() -> None:
    sealed = B.seal_manifest("backups/a/manifest", b"{}")
    assert B.open_manifest("backups/a/manifest", sealed) == b"{}"
    with pytest.raises(DamageError):
        B.open_manifest("backups/b/manifest", sealed)


@pytest.mark.parametrize("kind", ["chunk", "manifest", "index"])
def test_format_2_objects_are_bound_to_their_repository(kind: str) -> None:
    """The same key in two repositories (per-host prefixes sharing a key): nothing sealed in one
    opens in the other, nor as a format 1 object."""
    other, v1 = frames.Binding(KEY, "repo-b"), frames.Binding(KEY, None)
    if kind == "chunk":
        frame = B.seal_chunk("b", 3, b"data", 0)
        assert B.open_chunk("b", 3, frame).payload == b"data"
        opens = [lambda b: b.open_chunk("b", 3, frame)]
    elif kind == "manifest":
        frame = B.seal_manifest("backups/x/manifest", b"{}")
        opens = [lambda b: b.open_manifest("backups/x/manifest", frame)]
    else:
        frame = B.seal_index("data/x/000000.idx", b"{}")
        opens = [lambda b: b.open_index("data/x/000000.idx", frame)]
    for binding in (other, v1):
        with pytest.raises(DamageError, match="failed authentication"):
            opens[0](binding)
