"""Authenticated framing of stored chunks, manifests and segment indexes (formats 1 and 2).

A *frame* is one AES-256-GCM message::

    magic (4) | flags (1) | reserved (3, zero) | salt (16) | ciphertext | tag (16)

The encryption key of every frame is ``HKDF-SHA256(master, salt, info)`` with a fresh random 128-bit
``salt``, and the GCM nonce is fixed: each derived key encrypts exactly one message, so a (key,
nonce) pair can repeat only if two random salts collide (probability about n^2 / 2^129 after n
frames: below 2^-49 after 2^40 frames).  Retries resend the same ciphertext; any re-encryption,
after a crash or a resume, draws a new salt.  The header and a caller-chosen context (backup id and
chunk number, or the manifest's object key) are authenticated as associated data, so frames cannot
be swapped, reordered or moved between backups without detection.

Format 2 prefixes every context with the repository id (``Binding``), so an object sealed in one
repository fails authentication in another written with the same key (two hosts sharing a key
under different prefixes cannot be made to restore each other's data).  Format 1 contexts lack
the prefix; they are still opened, for reading old repositories.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from btrsync.crypto.keys import MasterKey
from btrsync.errors import DamageError

CHUNK_MAGIC = b"BSC1"
MANIFEST_MAGIC = b"BSM1"
INDEX_MAGIC = b"BSI1"
FILES_MAGIC = b"BSF1"
CHUNK_INFO = b"btrsync chunk v1"
MANIFEST_INFO = b"btrsync manifest v1"
INDEX_INFO = b"btrsync index v1"
FILES_INFO = b"btrsync files v1"
SALT_BYTES = 16
TAG_BYTES = 16
HEADER = struct.Struct(">4sB3x16s")
OVERHEAD = HEADER.size + TAG_BYTES
FLAG_ZSTD = 0x01
FLAG_LAST = 0x02  # file index parts: the last part of the object
_NONCE = bytes(12)


@dataclass(frozen=True, slots=True)
class Opened:
    flags: int
    payload: bytes


def seal(key: MasterKey, magic: bytes, info: bytes, flags: int, payload: bytes, context: bytes) -> bytes:
    """Encrypt and authenticate ``payload`` into one frame bound to ``context``."""
    salt = os.urandom(SALT_BYTES)
    header = HEADER.pack(magic, flags, salt)
    aead = AESGCM(key.derive(info, salt))
    return header + aead.encrypt(_NONCE, payload, header + context)


def open_frame(key: MasterKey, magic: bytes, info: bytes, frame: bytes, context: bytes, what: str) -> Opened:
    """Check and decrypt a frame; any tampering, truncation or wrong key raises ``DamageError``."""
    if len(frame) < OVERHEAD:
        raise DamageError(f"{what} is truncated ({len(frame)} bytes)")
    got_magic, flags, salt = HEADER.unpack_from(frame)
    if got_magic != magic:
        raise DamageError(f"{what} is not a btrsync frame (bad magic {got_magic!r})")
    header = frame[: HEADER.size]
    aead = AESGCM(key.derive(info, salt))
    try:
        payload = aead.decrypt(_NONCE, frame[HEADER.size :], header + context)
    except InvalidTag:
        raise DamageError(f"{what} failed authentication (damaged, tampered with, or another key)") from None
    return Opened(flags, payload)


def chunk_context(backup_id: str, seq: int) -> bytes:
    return backup_id.encode() + b"\0" + struct.pack(">Q", seq)


@dataclass(frozen=True, slots=True)
class Binding:
    """The key and the repository every sealed object is bound to (``repo_id=None``: format 1)."""

    key: MasterKey
    repo_id: str | None

    def _context(self, context: bytes) -> bytes:
        return context if self.repo_id is None else b"repo " + self.repo_id.encode() + b"\0" + context

    def seal_chunk(self, backup_id: str, seq: int, payload: bytes, flags: int) -> bytes:
        return seal(self.key, CHUNK_MAGIC, CHUNK_INFO, flags, payload,
                    self._context(chunk_context(backup_id, seq)))

    def open_chunk(self, backup_id: str, seq: int, frame: bytes) -> Opened:
        what = f"chunk {seq} of backup {backup_id}"
        return open_frame(self.key, CHUNK_MAGIC, CHUNK_INFO, frame,
                          self._context(chunk_context(backup_id, seq)), what)

    def seal_manifest(self, object_key: str, payload: bytes) -> bytes:
        return seal(self.key, MANIFEST_MAGIC, MANIFEST_INFO, 0, payload, self._context(object_key.encode()))

    def open_manifest(self, object_key: str, frame: bytes) -> bytes:
        what = f"manifest {object_key}"
        return open_frame(self.key, MANIFEST_MAGIC, MANIFEST_INFO, frame,
                          self._context(object_key.encode()), what).payload

    def seal_index(self, object_key: str, payload: bytes) -> bytes:
        return seal(self.key, INDEX_MAGIC, INDEX_INFO, 0, payload, self._context(object_key.encode()))

    def open_index(self, object_key: str, frame: bytes) -> bytes:
        what = f"segment index {object_key}"
        return open_frame(self.key, INDEX_MAGIC, INDEX_INFO, frame,
                          self._context(object_key.encode()), what).payload

    def seal_files(self, object_key: str, payload: bytes, *, last: bool) -> bytes:
        """A part of a backup's file index (``fileindex/store.py``); ``last`` is authenticated."""
        return seal(self.key, FILES_MAGIC, FILES_INFO, FLAG_LAST if last else 0, payload,
                    self._context(object_key.encode()))

    def open_files(self, object_key: str, frame: bytes) -> Opened:
        return open_frame(self.key, FILES_MAGIC, FILES_INFO, frame, self._context(object_key.encode()),
                          f"file index part {object_key}")
