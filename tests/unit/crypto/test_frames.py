"""Frames: round trips, tamper evidence, context binding, nonce (salt) freshness."""

from __future__ import annotations

import os

import pytest

from btrsync.crypto import frames
from btrsync.crypto.keys import MasterKey
from btrsync.errors import DamageError

KEY = MasterKey(bytes(range(32)))


def test_chunk_round_trips_and_is_bound_to_its_position() -> None:
    """A chunk opens only under the backup id and sequence number it was sealed for."""
    frame = frames.seal_chunk(KEY, "b-1", 7, b"payload", frames.FLAG_ZSTD)
    opened = frames.open_chunk(KEY, "b-1", 7, frame)
    assert opened.payload == b"payload" and opened.flags == frames.FLAG_ZSTD
    for bid, seq in [("b-1", 8), ("b-2", 7)]:
        with pytest.raises(DamageError, match="failed authentication"):
            frames.open_chunk(KEY, bid, seq, frame)


@pytest.mark.parametrize("position", [0, 4, 5, 9, 30, -1])
def test_any_flipped_byte_is_detected(position: int) -> None:
    """Header, salt, ciphertext and tag are all covered by authentication."""
    frame = bytearray(frames.seal_chunk(KEY, "b", 0, os.urandom(100), 0))
    frame[position] ^= 0x01
    with pytest.raises(DamageError):
        frames.open_chunk(KEY, "b", 0, bytes(frame))


def test_truncated_frame_is_detected() -> None:
    frame = frames.seal_chunk(KEY, "b", 0, b"x" * 100, 0)
    for cut in (0, 10, frames.OVERHEAD - 1, len(frame) - 1):
        with pytest.raises(DamageError):
            frames.open_chunk(KEY, "b", 0, frame[:cut])


def test_wrong_key_fails_closed() -> None:
    frame = frames.seal_chunk(KEY, "b", 0, b"secret", 0)
    with pytest.raises(DamageError, match="another key"):
        frames.open_chunk(MasterKey(os.urandom(32)), "b", 0, frame)


def test_every_seal_draws_a_fresh_salt() -> None:
    """Resealing the same chunk (a retry or resume) never reuses a derived key and nonce."""
    salts = {frames.HEADER.unpack_from(frames.seal_chunk(KEY, "b", 0, b"same", 0))[2] for _ in range(200)}
    assert len(salts) == 200


def test_manifest_is_bound_to_its_object_key() -> None:
    sealed = frames.seal_manifest(KEY, "backups/a/manifest", b"{}")
    assert frames.open_manifest(KEY, "backups/a/manifest", sealed) == b"{}"
    with pytest.raises(DamageError):
        frames.open_manifest(KEY, "backups/b/manifest", sealed)
