"""The 256-bit master key: generation, loading from a file, identification and derivation.

Keys come only from files (systemd credentials, OpNix, a file on a USB stick); never from argv or
the environment.  A key file holds the key as 44 base64 characters and a newline; 32 raw bytes or
64 hex digits are accepted too, so any secrets manager can deliver it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from btrsync.errors import KeyFileError
from btrsync.secretfile import create_secret_file, looks_like_secret, read_secret_file

KEY_BYTES = 32
KEY_FILE_LIMIT = 4096  # a key file is 45 bytes; anything this large is not one
_NOT_A_PATH = (
    "the --key-file argument (or BTRSYNC_KEY_FILE, or key_file in the configuration) is not a path "
    "(it looks like key material: it was not printed; put the key in a file and pass the file's "
    "path)"
)


@dataclass(frozen=True, slots=True)
class MasterKey:
    """The master key; ``repr`` never shows the secret."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise KeyFileError(f"a btrsync key is {KEY_BYTES} bytes, not {len(self.secret)}")

    @property
    def key_id(self) -> str:
        """A public fingerprint of the key: lets a target say "wrong key" without revealing it."""
        return hmac.new(self.secret, b"btrsync key id v1", hashlib.sha256).hexdigest()[:16]

    def derive(self, info: bytes, salt: bytes) -> bytes:
        """A 256-bit subkey for one purpose (``info``) and one random ``salt`` (HKDF-SHA256)."""
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(
            self.secret
        )


def generate_key_file(path: Path) -> MasterKey:
    """Write a new random key to a new file ``path``, mode 0600, fsynced with its directory.

    Refuses to overwrite anything, a symbolic link included, and a ``path`` that looks like key
    material (it is not printed).
    """
    if looks_like_secret(os.fspath(path)):
        raise KeyFileError(
            "the file argument is not a path (it looks like key material: it was not printed; "
            "name the new key file instead, e.g. /root/backup.key)"
        )
    key = MasterKey(os.urandom(KEY_BYTES))
    create_secret_file(path, base64.b64encode(key.secret) + b"\n", what="key file", error=KeyFileError)
    return key


def load_key_file(path: Path) -> MasterKey:
    """Read a key file; fail closed on anything unexpected (see :mod:`btrsync.secretfile`).

    The file must be a regular file (not a link), owned by the caller or root, with no access for
    group or others, and at most 4 KiB.  A ``path`` that looks like key material is refused
    without being printed.
    """
    data = read_secret_file(
        path,
        what="key file",
        limit=KEY_FILE_LIMIT,
        error=KeyFileError,
        not_a_path=_NOT_A_PATH,
        missing_hint=" (create one with 'btrsync key generate FILE')",
    )
    return MasterKey(_decode(data, path))


def _decode(data: bytes, path: Path) -> bytes:
    if len(data) == KEY_BYTES:
        if all(0x20 <= b < 0x7F for b in data):  # random bytes are this only once in ~10^14 keys
            raise KeyFileError(
                f"key file {path} holds 32 printable characters: a password or passphrase, not a "
                "256-bit key; create a key with 'btrsync key generate FILE'")
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            pass
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise KeyFileError(
            f"key file {path} does not hold a 256-bit key (expected 44 base64 characters, "
            "64 hex digits or 32 raw bytes)"
        )
    return raw
