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


# -- where the key file comes from: never echo key material given as its path ------------------
PASTED_KEY = base64.b64encode(bytes(range(100, 132))).decode()


def _no_echo(capsys, argv: list[str]) -> str:
    from btrsync.cli.main import main

    assert main(argv) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert PASTED_KEY not in text and PASTED_KEY[:16] not in text and PASTED_KEY[-16:] not in text
    assert "not a path" in text and "not printed" in text
    return text


def test_key_material_given_as_key_file_is_refused_and_not_echoed(tmp_path: Path, capsys) -> None:
    (tmp_path / "t").mkdir()
    _no_echo(capsys, ["--key-file", PASTED_KEY, "list", "--from", f"file://{tmp_path}/t"])
    _no_echo(capsys, ["--debug", "--key-file", PASTED_KEY, "list", "--from", f"file://{tmp_path}/t"])
    _no_echo(capsys, ["--key-file", bytes(range(32)).hex(), "list", "--from", "file:///tmp/x"])


def test_key_material_in_the_environment_or_configuration_is_not_echoed(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    (tmp_path / "t").mkdir()
    monkeypatch.setenv("BTRSYNC_KEY_FILE", PASTED_KEY)
    _no_echo(capsys, ["list", "--from", f"file://{tmp_path}/t"])
    monkeypatch.delenv("BTRSYNC_KEY_FILE")
    config = tmp_path / "config.toml"
    config.write_text(f'key_file = "{PASTED_KEY}"\n')
    _no_echo(capsys, ["--config", str(config), "list", "--from", f"file://{tmp_path}/t"])


def test_generate_creates_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        generate_key_file(tmp_path / "k")
    finally:
        os.umask(old)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600


def test_generate_fsyncs_the_file_and_its_directory(tmp_path: Path, monkeypatch) -> None:
    import stat

    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_mode)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    generate_key_file(tmp_path / "k")
    assert any(stat.S_ISREG(m) for m in synced) and any(stat.S_ISDIR(m) for m in synced)


def test_generate_never_follows_or_replaces_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "k"
    link.symlink_to(target)  # dangling: O_CREAT alone would create 'elsewhere'
    with pytest.raises(KeyFileError, match="never overwrites"):
        generate_key_file(link)
    assert not target.exists() and link.is_symlink()


def test_generate_refuses_key_material_as_the_file_name(tmp_path: Path, monkeypatch, capsys) -> None:
    from btrsync.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["key", "generate", PASTED_KEY]) == 2
    out = capsys.readouterr()
    assert PASTED_KEY not in out.out + out.err and "not a path" in out.err
    assert list(tmp_path.iterdir()) == []


def test_a_key_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    generate_key_file(real)
    (tmp_path / "k").symlink_to(real)
    with pytest.raises(KeyFileError, match="symbolic link"):
        load_key_file(tmp_path / "k")


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    generate_key_file(path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(path)


def test_a_32_character_password_is_not_taken_for_a_raw_key(tmp_path: Path) -> None:
    """32 bytes were taken as a raw key: a 32-character password saved without a newline became a
    key of password strength, silently."""
    path = tmp_path / "k"
    path.write_bytes(b"correct horse battery staple 123")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="printable characters: a password"):
        load_key_file(path)
