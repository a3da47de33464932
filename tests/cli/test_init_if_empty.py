"""``btrsync init --if-empty``: what a unit runs before each backup (NixOS ``initialize``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from btrsync.cli.main import main
from btrsync.targets.mounts import refuse_unmounted, unmounted_mount_point
from btrsync.errors import TargetMissingError


def init(tmp_path: Path, repo: Path, key: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["--state-dir", str(tmp_path / "state"), "--key-file", str(tmp_path / key), "init", "--to",
                 f"file://{repo}", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def keys(tmp_path: Path) -> None:
    for name in ("key", "other"):
        assert main(["key", "generate", str(tmp_path / name)]) == 0


def test_if_empty_creates_once_and_then_accepts_only_its_own_repository(
        tmp_path: Path, keys: None, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    code, out = init(tmp_path, repo, "key", capsys, "--if-empty", "--json")
    assert code == 0 and json.loads(out)["created"] is True, out
    repo_id = json.loads(out)["repo_id"]
    code, out = init(tmp_path, repo, "key", capsys, "--if-empty", "--json")
    assert code == 0 and json.loads(out) == {**json.loads(out), "created": False, "repo_id": repo_id}, out
    code, out = init(tmp_path, repo, "key", capsys)  # without the flag: as before
    assert code == 10 and "this host knows btrsync repository" in out
    code, out = init(tmp_path, repo, "other", capsys, "--if-empty")
    assert code == 12, out


def test_if_empty_refuses_what_init_refuses(tmp_path: Path, keys: None, capsys: pytest.CaptureFixture[str]) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "photo.jpg").write_bytes(b"x")
    code, out = init(tmp_path, full, "key", capsys, "--if-empty")
    assert code == 10 and "is not empty" in out
    # a repository this host knew at the URL and no longer finds (an unmounted disk): never a new one
    repo = tmp_path / "repo"
    repo.mkdir()
    assert init(tmp_path, repo, "key", capsys, "--if-empty")[0] == 0
    for p in repo.iterdir():
        p.unlink() if p.is_file() else shutil.rmtree(p)
    code, out = init(tmp_path, repo, "key", capsys, "--if-empty")
    assert code == 10 and "is the disk mounted" in out, out


def test_a_directory_under_an_unmounted_fstab_mount_point_is_refused(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text("# <fs> <dir>\nUUID=1 / btrfs defaults 0 0\nLABEL=usb /mnt/usb\\040disk btrfs noauto 0 0\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 0:21 / / rw - btrfs /dev/sda1 rw\n")
    assert unmounted_mount_point("/mnt/usb disk/backups", str(fstab), str(mountinfo)) == "/mnt/usb disk"
    assert unmounted_mount_point("/srv/backups", str(fstab), str(mountinfo)) is None
    with pytest.raises(TargetMissingError, match="which /etc/fstab mounts, but it is not mounted"):
        refuse_unmounted("file:///mnt/usb%20disk/backups", str(fstab), str(mountinfo))
    mountinfo.write_text(mountinfo.read_text() + "40 22 0:40 / /mnt/usb\\040disk rw - btrfs /dev/sdb1 rw\n")
    refuse_unmounted("file:///mnt/usb%20disk/backups", str(fstab), str(mountinfo))
    refuse_unmounted("s3://bucket/x", str(fstab), str(mountinfo))
