"""Turn raw send-stream chunks into stored frames, and back.

Sealing a chunk: xxh3-128 of the raw bytes, zstd (kept only if smaller), AES-256-GCM frame bound to
(repository, backup id, chunk number), xxh3-128 of the stored frame.  Each worker thread has its own
``ZstdCompressor``/``ZstdDecompressor``: one instance is never used by two threads at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import xxhash
import zstandard

from btrsync.crypto import frames
from btrsync.errors import ChunkDamageError, DamageError


@dataclass(frozen=True, slots=True)
class SealedChunk:
    seq: int
    frame: bytes
    raw_size: int
    raw_xxh3: str
    stored_xxh3: str


def xxh3(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class ChunkSealer:
    """A picklable-free callable for ``ordered_map``: ``(seq, raw) -> SealedChunk``."""

    def __init__(self, binding: frames.Binding, backup_id: str, zstd_level: int) -> None:
        self.binding = binding
        self.backup_id = backup_id
        self.zstd_level = zstd_level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        comp = getattr(self._local, "compressor", None)
        if comp is None:
            comp = self._local.compressor = zstandard.ZstdCompressor(level=self.zstd_level)
        return comp

    def __call__(self, item: tuple[int, bytes]) -> SealedChunk:
        seq, raw = item
        flags, payload = 0, raw
        if self.zstd_level > 0:
            packed = self._compressor().compress(raw)
            if len(packed) < len(raw):
                flags, payload = frames.FLAG_ZSTD, packed
        frame = self.binding.seal_chunk(self.backup_id, seq, payload, flags)
        return SealedChunk(seq, frame, len(raw), xxh3(raw), xxh3(frame))


class ChunkOpener:
    """The inverse of ``ChunkSealer``, checking both hashes and the tag before returning bytes."""

    def __init__(self, binding: frames.Binding, backup_id: str) -> None:
        self.binding = binding
        self.backup_id = backup_id
        self._local = threading.local()

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        dec = getattr(self._local, "decompressor", None)
        if dec is None:
            dec = self._local.decompressor = zstandard.ZstdDecompressor()
        return dec

    def open(self, seq: int, frame: bytes, *, stored_xxh3: str, raw_size: int, raw_xxh3: str) -> bytes:
        """The raw chunk; ``ChunkDamageError`` (its ``kind`` naming the check) when anything is off."""
        where = f"chunk {seq} of backup {self.backup_id}"
        if xxh3(frame) != stored_xxh3:
            raise ChunkDamageError(f"{where}: stored bytes do not match their recorded xxh3-128 hash", "hash")
        try:
            opened = self.binding.open_chunk(self.backup_id, seq, frame)
        except DamageError as exc:  # truncated or not a frame (data), or the GCM tag (tag)
            raise ChunkDamageError(str(exc), "tag" if "failed authentication" in str(exc) else "data") from None
        raw = opened.payload
        if opened.flags & frames.FLAG_ZSTD:
            try:
                raw = self._decompressor().decompress(raw, max_output_size=raw_size)
            except zstandard.ZstdError as exc:
                raise ChunkDamageError(f"{where}: cannot decompress: {exc}", "data") from None
        if len(raw) != raw_size or xxh3(raw) != raw_xxh3:
            raise ChunkDamageError(f"{where}: restored bytes do not match the recorded size and hash", "hash")
        return raw
