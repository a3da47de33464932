"""The secret-file reader behind key files and S3/B2 credentials files, through both callers.

Real files in tmp_path.  The ownership tests need root (they chown to uid 65534, "nobody").
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from btrsync.crypto.keys import MasterKey, load_key_file
from btrsync.errors import BtrsyncError
from btrsync.targets.s3.credentials import S3Credentials, read_credentials_file

SECRET = "K004" + "sEcReT9" * 4  # an application key: must never appear in a message
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def _key_content() -> bytes:
    return base64.b64encode(os.urandom(32)) + b"\n"


def _credentials_content() -> bytes:
    return f"key_id=0041234\napplication_key={SECRET}\n".encode()


READERS: dict[str, tuple[Callable[[Path], object], Callable[[], bytes]]] = {
    "key": (load_key_file, _key_content),
    "credentials": (read_credentials_file, _credentials_content),
}


# what each reader returns for a file holding ``data`` as its content function writes it
EXPECTED: dict[Callable[[Path], object], Callable[[bytes], object]] = {
    load_key_file: lambda data: MasterKey(base64.b64decode(data.strip(), validate=True)),
    read_credentials_file: lambda data: S3Credentials("0041234", SECRET),
}


def _read_exactly(read: Callable[[Path], object], path: Path, data: bytes, mode: int) -> None:
    """``read`` returns what ``data`` holds, and leaves the file as it was."""
    got = read(path)
    assert type(got) is type(EXPECTED[read](data)) and got == EXPECTED[read](data)
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o7777 == mode


@pytest.fixture(params=sorted(READERS))
def reader(request: pytest.FixtureRequest) -> tuple[Callable[[Path], object], Callable[[], bytes]]:
    return READERS[request.param]


def _write(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def _refused(read: Callable[[Path], object], path: Path | str, match: str) -> str:
    with pytest.raises(BtrsyncError, match=match) as info:
        read(path)  # type: ignore[arg-type]
    assert int(info.value.exit_code) == 2
    text = str(info.value)
    assert SECRET not in text
    return text


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the run) if the block takes longer than ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _bytes_read_by_this_process() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# -- accepted ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_regular_files_are_read(tmp_path: Path, reader, mode: int) -> None:
    read, content = reader
    data = content()
    path = _write(tmp_path / "secret", data, mode)
    _read_exactly(read, path, data, mode)


@as_root
def test_files_of_root_are_read_when_running_as_root(tmp_path: Path, reader) -> None:
    read, content = reader
    data = content()
    path = _write(tmp_path / "secret", data)
    os.chown(path, 0, 0)
    _read_exactly(read, path, data, 0o600)


def _setfacl(path: Path, spec: str) -> None:
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl is not installed")
    done = subprocess.run(["setfacl", "-m", spec, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no POSIX ACLs here: {done.stderr.strip()}")


def test_systemd_style_acl_for_the_caller_is_accepted(tmp_path: Path, reader) -> None:
    """systemd's LoadCredential= for a User= service: root's 0400 file plus an ACL for that user.

    ``ls -l`` shows ``-r--r-----+``: the group bits are the ACL mask, no group has access.
    """
    read, content = reader
    data = content()
    path = _write(tmp_path / "secret", data, 0o400)
    _setfacl(path, f"u:{os.geteuid()}:r")
    assert path.stat().st_mode & 0o777 == 0o440
    _read_exactly(read, path, data, 0o440)


@pytest.mark.parametrize("spec", [f"u:{NOBODY}:r", f"g:{NOBODY}:r", "g::r"])
def test_acls_giving_anyone_else_access_are_refused(tmp_path: Path, reader, spec: str) -> None:
    read, content = reader
    path = _write(tmp_path / "secret", content(), 0o400)
    _setfacl(path, spec)
    assert path.stat().st_mode & 0o070
    _refused(read, path, "chmod 600")


# -- refused -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o620, 0o602, 0o610])
def test_any_group_or_other_permission_is_refused(tmp_path: Path, reader, mode: int) -> None:
    read, content = reader
    path = _write(tmp_path / "secret", content(), mode)
    text = _refused(read, path, "chmod 600")
    assert f"{mode:04o}" in text and str(path) in text


def test_a_symlink_is_refused_and_the_real_file_named_as_the_fix(tmp_path: Path, reader) -> None:
    read, content = reader
    real = _write(tmp_path / "real", content())
    link = tmp_path / "link"
    link.symlink_to(real)
    _refused(read, link, "symbolic link.*real file")


@as_root
def test_a_file_owned_by_another_user_is_refused_naming_the_owner(tmp_path: Path, reader) -> None:
    read, content = reader
    path = _write(tmp_path / "secret", content())
    os.chown(path, NOBODY, NOBODY)
    _refused(read, path, f"owned by uid {NOBODY}")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path, reader) -> None:
    read, _ = reader
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with _deadline(5):
        _refused(read, fifo, "not a regular file.*FIFO")


def test_a_directory_is_refused(tmp_path: Path, reader) -> None:
    read, _ = reader
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    _refused(read, directory, "not a regular file.*directory")


def test_a_large_file_is_refused_without_being_read(tmp_path: Path, reader) -> None:
    read, content = reader
    path = _write(tmp_path / "big", content() + b"#" * (1 << 20))
    before = _bytes_read_by_this_process()
    _refused(read, path, "too large")
    assert _bytes_read_by_this_process() - before < 64 * 1024


# -- secrets where the path belongs ------------------------------------------------------------
KEY = base64.b64encode(bytes(range(32))).decode()
PASTED = [
    KEY,  # what 'btrsync key generate' writes
    KEY.rstrip("="),  # unpadded
    bytes(range(32)).hex(),  # 64 hex digits
    base64.urlsafe_b64encode(bytes(range(200, 232))).decode(),
    SECRET,  # a B2 application key
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # an AWS secret access key, slashes and all
    "/" + "Kx9" * 13,  # a token that starts with a slash
    f"key_id=0041234\napplication_key={SECRET}",  # a whole file pasted
    f"application_key={SECRET}",
]


@pytest.mark.parametrize("pasted", PASTED)
def test_secret_material_given_as_the_path_is_never_echoed(tmp_path: Path, reader, pasted: str) -> None:
    read, _ = reader
    text = _refused(read, pasted, "not a path.*not printed")
    assert pasted not in text and pasted[:16] not in text and pasted[-16:] not in text


@pytest.mark.parametrize(
    "name",
    ["/run/credentials/btrsync.service/key", "/etc/btrsync/b2.key", "./Kx9Kx9Kx9Kx9Kx9Kx9Kx9", "backup.key",
     "keys/laptop", "/root/backup key (old)"],
)
def test_ordinary_paths_are_named_in_messages(reader, name: str) -> None:
    read, _ = reader
    _refused(read, name, "does not exist")
    with pytest.raises(BtrsyncError) as info:
        read(name)  # type: ignore[arg-type]
    assert name in str(info.value)


def test_looks_like_secret_keeps_real_paths_printable() -> None:
    from btrsync.secretfile import looks_like_secret

    assert not looks_like_secret("/etc/" + "Kx9" * 15)  # under an existing directory: a path
    assert not looks_like_secret("/root/.config/btrsync/" + KEY.rstrip("="))
    assert looks_like_secret(KEY) and looks_like_secret(" " + KEY + "\n")
    assert looks_like_secret("/nonexistent-top/" + "Kx9" * 10)
