"""The directory target on a sick or tampered disk: listings fail closed, symlinks are never
followed, system directories are refused ("never lose a backup", items 2, 3, 4 and 18).

Directory faults are real: :class:`tests.support.faultfs.FaultFS` mounts a FUSE mirror whose
``readdir``/``opendir``/``getattr``/... answer ``EIO``, ``EACCES`` or ``ESTALE`` on request, so
the target sees exactly what it would see on a dying USB disk or a restarted NFS server.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from btrsync.catalog.repository import Repository
from btrsync.cli.main import main
from btrsync.crypto.keys import generate_key_file, load_key_file
from btrsync.errors import TargetMissingError, UsageError
from btrsync.ops.clean import clean
from btrsync.targets.errors import NotFound, PermissionDenied, TargetError
from btrsync.targets.local import LocalTarget
from btrsync.targets.registry import open_target
from btrsync.targets.safety import SymlinkInTarget
from btrsync.targets.url import parse_url
from tests.support.faultfs import FaultFS
from tests.targets.conftest import files_below as _files

# Objects of a small repository: backup A is committed (its manifest does not authenticate,
# which makes it "damaged": clean must keep its data all the same), B is an interrupted push.
OBJECTS = {
    "backups/A/manifest": b"manifest of A",
    "data/A/000000": b"segment 0 of A",
    "data/A/000000.idx": b"index 0 of A",
    "data/A/000001": b"segment 1 of A",
    "data/B/000000": b"orphaned segment of B",
}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    generate_key_file(path)
    return path


def _repository(root: Path, key_file: Path) -> Repository:
    """A repository at ``root`` holding ``OBJECTS``."""
    repo = Repository.open(LocalTarget(root), load_key_file(key_file), create=True)
    for key, data in OBJECTS.items():
        repo.target.put(key, [data])
    return repo


# -- listings fail closed (item 2) ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "pattern", "error"),
    [
        ("readdir", "data/A", errno.EIO),
        ("opendir", "data/A", errno.EACCES),
        ("getattr", "data/A/000001", errno.ESTALE),
        ("readdir", "data", errno.EIO),
        ("getattr", "data", errno.EIO),
    ],
)
def test_a_directory_that_cannot_be_read_fails_the_listing(
    faultfs: FaultFS, key_file: Path, op: str, pattern: str, error: int
) -> None:
    """EIO/EACCES/ESTALE anywhere in the walk raises a TargetError naming the path and the
    error, never NotFound and never a listing with holes."""
    target = _repository(faultfs.mountpoint, key_file).target
    faultfs.fail(op, pattern, error)
    with pytest.raises(TargetError) as caught:
        list(target.list("data/"))
    assert not isinstance(caught.value, NotFound)
    assert os.strerror(error) in str(caught.value)
    assert pattern.split("/")[-1] in str(caught.value)
    assert faultfs.hits(), "the fault was never injected: the test did not test anything"


def test_clean_deletes_nothing_when_the_catalog_cannot_be_listed(faultfs: FaultFS, key_file: Path) -> None:
    """EIO on backups/ once made every segment look orphaned: clean deleted all of them.  Now
    clean raises and every file is still there; without the fault it removes only B's."""
    repo = _repository(faultfs.mountpoint, key_file)
    before = _files(faultfs.backing)
    faultfs.fail("readdir", "backups", errno.EIO)
    with pytest.raises(TargetError, match="Input/output error"):
        clean(repo)
    assert _files(faultfs.backing) == before

    faultfs.clear()
    result = clean(repo)
    assert [i.key for i in result.items if i.action == "removed"] == ["data/B/000000"]
    assert _files(faultfs.backing) == [f for f in before if not f.startswith("data/B")]


def test_clean_deletes_nothing_when_a_data_directory_cannot_be_read(faultfs: FaultFS, key_file: Path) -> None:
    """An unreadable data/<id>/ stops clean before its first deletion."""
    repo = _repository(faultfs.mountpoint, key_file)
    before = _files(faultfs.backing)
    faultfs.fail("readdir", "data/A", errno.EIO)
    with pytest.raises(TargetError, match="data/A"):
        clean(repo)
    assert _files(faultfs.backing) == before


def test_leftovers_fail_closed(faultfs: FaultFS, key_file: Path) -> None:
    """The listing of temporary files is complete or raises, like list()."""
    target = _repository(faultfs.mountpoint, key_file).target
    (faultfs.backing / "data" / "A" / "000002.tmp-abc").write_bytes(b"half")
    assert [lo.key for lo in target.leftovers()] == ["data/A/000002"]
    faultfs.fail("opendir", "data/A", errno.EACCES)
    with pytest.raises(PermissionDenied, match="Permission denied"):
        target.leftovers()


@pytest.mark.parametrize(("op", "verb"), [("getattr", "stat"), ("open", "read"), ("read", "read")])
def test_an_unreadable_object_is_an_error_not_a_missing_one(
    faultfs: FaultFS, key_file: Path, op: str, verb: str
) -> None:
    """A catalog skips a manifest that is NotFound (deleted meanwhile); an I/O error must not
    look like that, or the backup's data would be orphaned."""
    target = _repository(faultfs.mountpoint, key_file).target
    faultfs.fail(op, "backups/A/manifest", errno.EIO)
    with pytest.raises(TargetError) as caught:
        target.stat("backups/A/manifest") if verb == "stat" else target.read("backups/A/manifest")
    assert not isinstance(caught.value, NotFound)


def test_only_a_missing_prefix_lists_as_empty(tmp_path: Path) -> None:
    """No such directory (or a file where a directory of the prefix would be) is no objects."""
    target = LocalTarget(tmp_path)
    target.put("data/A/000000", [b"x"])
    assert list(target.list("backups/")) == []
    assert list(target.list("data/Z/")) == []
    assert list(target.list("data/A/000000/")) == []
    assert [o.key for o in target.list("data/")] == ["data/A/000000"]


# -- symlinks are never followed (item 3) -------------------------------------------------------
@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files outside the target that a planted symlink points at."""
    path = tmp_path / "outside"
    (path / "x").mkdir(parents=True)
    for name in ("000000", "000001", "x/000000"):
        (path / name).write_bytes(b"precious " + name.encode())
    return path


def _outside_intact(outside: Path) -> None:
    assert _files(outside) == ["000000", "000001", "x/000000"]
    assert (outside / "000001").read_bytes() == b"precious 000001"


def test_a_symlinked_data_directory_is_not_followed(
    tmp_path: Path, key_file: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """data -> /somewhere: the listing skips it with a warning, clean deletes nothing there."""
    root = tmp_path / "target"
    root.mkdir()
    repo = Repository.open(LocalTarget(root), load_key_file(key_file), create=True)
    (root / "data").symlink_to(outside, target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        assert list(repo.target.list("data/")) == []
    assert "symlink in target" in caplog.text and "data" in caplog.text
    clean(repo)
    _outside_intact(outside)
    with pytest.raises(SymlinkInTarget, match="not followed: data"):
        repo.target.delete("data/x/000000")
    with pytest.raises(PermissionDenied):
        repo.target.put("data/x/000009", [b"new"])
    _outside_intact(outside)


def test_a_symlinked_backup_directory_is_not_followed(
    tmp_path: Path, key_file: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """data/<id> -> /somewhere: skipped and reported; delete, put, stat and get refuse it."""
    root = tmp_path / "target"
    root.mkdir()
    repo = _repository(root, key_file)
    (root / "data" / "C").symlink_to(outside, target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        keys = [o.key for o in repo.target.list("data/")]
    assert not any(k.startswith("data/C") for k in keys)
    assert "data/C" in caplog.text
    for verb in (
        lambda: repo.target.delete("data/C/000000"),
        lambda: repo.target.stat("data/C/000000"),
        lambda: repo.target.read("data/C/000000"),
        lambda: repo.target.put("data/C/000002", [b"new"]),
    ):
        with pytest.raises(SymlinkInTarget, match="data/C"):
            verb()
    clean(repo)
    assert repo.target.leftovers() == []
    _outside_intact(outside)
    assert (root / "data" / "C").is_symlink()


def test_a_symlinked_segment_is_not_followed(
    tmp_path: Path, key_file: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """data/<id>/000000 -> /somewhere/file: not listed (so not orphaned data), and never read,
    replaced or deleted through."""
    root = tmp_path / "target"
    root.mkdir()
    repo = _repository(root, key_file)
    (root / "data" / "B" / "000001").symlink_to(outside / "000001")
    with caplog.at_level(logging.WARNING):
        assert "data/B/000001" not in [o.key for o in repo.target.list("data/")]
    assert "data/B/000001" in caplog.text
    for verb in (
        lambda: repo.target.stat("data/B/000001"),
        lambda: repo.target.read("data/B/000001"),
        lambda: repo.target.delete("data/B/000001"),
        lambda: repo.target.put("data/B/000001", [b"new"]),
    ):
        with pytest.raises(SymlinkInTarget, match="data/B/000001"):
            verb()
    clean(repo)
    _outside_intact(outside)
    assert (root / "data" / "B" / "000001").is_symlink()


def test_the_root_itself_may_be_a_symlink(tmp_path: Path) -> None:
    """The operator chose the root; only links *inside* it are refused."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    target = LocalTarget(tmp_path / "link")
    target.put("data/A/000000", [b"x"])
    assert [o.key for o in target.list()] == ["data/A/000000"]
    target.delete("data/A/000000")
    assert _files(real) == []


def test_put_never_creates_the_root(tmp_path: Path) -> None:
    """A missing root (an unmounted disk) is TargetMissingError; nothing is created above it."""
    missing = tmp_path / "not-mounted" / "backups"
    with pytest.raises(TargetMissingError):
        LocalTarget(missing).put("data/A/000000", [b"x"])
    assert not missing.parent.exists()


# -- system directories and a root that is a file (items 4 and 18) ------------------------------
def _cli(tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["--state-dir", str(tmp_path / "state"), "--key-file", str(key_file), *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "url",
    [
        "file:///",
        "file:////",
        "file:///etc/",
        "file:///usr",
        "file:///var/lib",
        "file:///tmp",
        "file:///home",
        "file:///root",
        "file:///usr/../etc",
        "file:///lib",
        "ssh://root@127.0.0.1:1/",
        "ssh://nas/etc",
        "ssh://nas/var/lib/",
        "ssh://nas/~/.",
    ],
)
def test_a_system_directory_is_refused_with_exit_2(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """--from file:/// walked the whole root filesystem and ended in a traceback."""
    code, err = _cli(tmp_path, key_file, capsys, "list", "--from", url)
    assert code == 2, err
    assert "Traceback" not in err
    assert "dedicated directory" in err and ("system directory" in err or "home directory" in err)


@pytest.mark.parametrize("path", ["/", "/etc", "/var/lib/", "/tmp"])
def test_local_target_refuses_system_directories(path: str) -> None:
    with pytest.raises(UsageError, match="system directory"):
        LocalTarget(path)


@pytest.mark.parametrize(
    "url",
    [
        "file:///var/backups/btrsync",
        "file:///tmp/x",
        "file:///home/alice/backups",
        "ssh://nas/srv/backups",
        "ssh://nas/~/backups",
        "ssh://nas/var/lib/btrsync-backups",
    ],
)
def test_directories_below_system_directories_are_fine(url: str) -> None:
    parse_url(url)
    if url.startswith("ssh"):
        open_target(url).close()


def test_a_root_that_is_a_file_is_not_a_directory(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file given as the target is not "missing, mkdir -p it": it is not a directory (exit 10)."""
    path = tmp_path / "disk.img"
    path.write_bytes(b"not a directory")
    with pytest.raises(TargetMissingError, match="not a directory") as caught:
        LocalTarget(path).probe()
    assert "mkdir" not in str(caught.value)
    with pytest.raises(TargetMissingError, match="not a directory"):
        LocalTarget(path / "below").probe()
    code, err = _cli(tmp_path, key_file, capsys, "list", "--from", f"file://{path}")
    assert code == 10 and "not a directory" in err and "mkdir" not in err, err
