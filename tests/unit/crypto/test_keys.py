"""Key files: generation, formats accepted, and fail-closed loading."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from btrsync.crypto.keys import MasterKey, generate_key_file, load_key_file
from btrsync.errors import KeyFileError


def test_generate_writes_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k"
    key = generate_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_key_file(path) == key
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="never overwrites"):
        generate_key_file(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("encode", [lambda k: k, lambda k: k.hex().encode() + b"\n",
                                    lambda k: base64.b64encode(k) + b"\n"])
def test_raw_hex_and_base64_keys_load(tmp_path: Path, encode) -> None:
    secret = os.urandom(32)
    path = tmp_path / "k"
    path.write_bytes(encode(secret))
    path.chmod(0o400)
    assert load_key_file(path).secret == secret


@pytest.mark.parametrize("content", [b"", b"short", b"A" * 43 + b"\n", b"x" * 31, b"x" * 33])
def test_malformed_key_files_are_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="256-bit"):
        load_key_file(path)


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    generate_key_file(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(path)


def test_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="btrsync key generate"):
        load_key_file(tmp_path / "absent")


def test_key_never_appears_in_repr() -> None:
    secret = bytes(range(32))
    key = MasterKey(secret)
    assert secret.hex() not in repr(key) and str(list(secret)) not in repr(key)
    assert len(key.key_id) == 16 and key.key_id != MasterKey(os.urandom(32)).key_id
