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
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from btrsync.errors import KeyFileError

KEY_BYTES = 32


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
    """Write a new random key to ``path`` with mode 0600; refuse to overwrite anything."""
    key = MasterKey(os.urandom(KEY_BYTES))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; btrsync never overwrites a key file") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key.secret) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def load_key_file(path: Path) -> MasterKey:
    """Read a key file; fail closed on anything unexpected (size, format, world-readable)."""
    try:
        st = os.stat(path)
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist (create one with 'btrsync key generate')") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise KeyFileError(f"key file {path} is readable or writable by others; run 'chmod 600 {path}'")
    return MasterKey(_decode(data, path))


def _decode(data: bytes, path: Path) -> bytes:
    if len(data) == KEY_BYTES:
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
