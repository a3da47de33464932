"""Turn raw send-stream chunks into stored frames, and back.

Sealing a chunk: xxh3-128 of the raw bytes, zstd (kept only if smaller), AES-256-GCM frame bound to
(repository, backup id, chunk number), xxh3-128 of the stored frame.

A chunk larger than ``PROBE_FROM`` is probed first: ``PROBE_SLICES`` slices of ``PROBE_SLICE``
bytes spread over it are compressed together at level 1; when that saves less than
``PROBE_MIN_SAVING`` the chunk is stored raw without running zstd at the configured level over it
(random data, already-compressed files).  Whether a frame is compressed is its ``FLAG_ZSTD`` bit,
in the frame's header and so inside the authenticated data: a reader never guesses, and a
flipped bit fails authentication.  Each worker thread has its own
``ZstdCompressor``/``ZstdDecompressor``: one instance is never used by two threads at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

PROBE_FROM = 256 * 1024  # smaller chunks are compressed outright: the probe would cost as much
PROBE_SLICE = 16 * 1024
PROBE_SLICES = 4
PROBE_MIN_SAVING = 0.03  # store raw when level 1 saves less than this on the sample

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

    def _prober(self) -> zstandard.ZstdCompressor:
        comp = getattr(self._local, "prober", None)
        if comp is None:
            comp = self._local.prober = zstandard.ZstdCompressor(level=1)
        return comp

    def compressible(self, raw: bytes) -> bool:
        """False when a level-1 sample of ``raw`` saves less than ``PROBE_MIN_SAVING``."""
        if len(raw) < PROBE_FROM:
            return True
        step = (len(raw) - PROBE_SLICE) // (PROBE_SLICES - 1)
        view = memoryview(raw)
        sample = b"".join(view[i * step:i * step + PROBE_SLICE] for i in range(PROBE_SLICES))
        return len(self._prober().compress(sample)) < len(sample) * (1 - PROBE_MIN_SAVING)

    def __call__(self, item: tuple[int, bytes]) -> SealedChunk:
        seq, raw = item
        flags, payload = 0, raw
        if self.zstd_level > 0 and self.compressible(raw):
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
