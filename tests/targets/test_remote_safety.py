"""The ssh and S3 targets on sick or tampered storage: listings fail closed, the ssh target never
follows a symlink on the remote, and rsync honours the push's rate ("never lose a backup",
items 2, 3 and 19).

The ssh tests run against the session's throwaway sshd on 127.0.0.1 (``factories_ssh.py``); the
"remote" root is a local directory, here often a :class:`~tests.support.faultfs.FaultFS` mount,
so a remote ``find`` meets real ``EIO``s.  The S3 tests go through the B2-rules proxy, which
fails a chosen page of a real ``ListObjectsV2`` pagination against SeaweedFS.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from btrsync.errors import TargetMissingError
from btrsync.targets.errors import NotFound, PermissionDenied, TargetError, TransientTargetError
from btrsync.targets.registry import open_target
from btrsync.targets.retry import RetryingTarget
from btrsync.targets.safety import SymlinkInTarget
from btrsync.targets.ssh.target import SshTarget
from tests.support.b2proxy import B2RulesProxy
from tests.support.faultfs import FaultFS
from tests.support.sshd import SshServer
from tests.targets.conftest import files_below as _files
from tests.targets.factories_s3 import fresh_b2_proxy, no_sleep_policy, seaweed_target, unique_prefix
from tests.targets.factories_ssh import open_ssh_target, ssh_server, ssh_settings

OBJECTS = {
    "backups/A/manifest": b"manifest of A",
    "data/A/000000": b"segment 0 of A",
    "data/A/000001": b"segment 1 of A",
    "data/B/000000": b"orphaned segment of B",
}


@pytest.fixture
def server(request: pytest.FixtureRequest) -> SshServer:
    return ssh_server(request)


def _populate(root: Path) -> None:
    for key, data in OBJECTS.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)


@pytest.fixture
def sick(server: SshServer, faultfs: FaultFS, tmp_path: Path) -> Iterator[SshTarget]:
    """An ssh target whose remote root is the fault-injecting mount, holding ``OBJECTS``."""
    _populate(faultfs.backing)
    target = open_ssh_target(server, faultfs.mountpoint, tmp_path)
    try:
        yield target
    finally:
        target.close()


# -- the ssh target's listings fail closed (item 2) ---------------------------------------------
@pytest.mark.parametrize(
    ("op", "pattern", "error"),
    [
        ("readdir", "data/A", errno.EIO),
        ("opendir", "data/B", errno.EACCES),
        ("getattr", "data/A/000001", errno.ESTALE),
        ("getattr", "data", errno.EIO),  # the base of the listing
        ("access", "", errno.EIO),  # cd into the root itself fails
    ],
)
def test_a_remote_find_error_fails_the_listing(
    sick: SshTarget, faultfs: FaultFS, op: str, pattern: str, error: int
) -> None:
    """Whatever find (or the shell before it) cannot read raises; never NotFound, never a
    shorter listing.  An unreadable root or base once listed as empty."""
    assert [o.key for o in sick.list("data/")] == sorted(k for k in OBJECTS if k.startswith("data/"))
    faultfs.fail(op, pattern, error)
    with pytest.raises(TargetError) as caught:
        list(sick.list("data/"))
    assert not isinstance(caught.value, NotFound)
    assert (
        os.strerror(error) in str(caught.value) or pattern == "" or isinstance(caught.value, PermissionDenied)
    )
    assert faultfs.hits()


def test_remote_temporaries_fail_closed(sick: SshTarget, faultfs: FaultFS) -> None:
    """The listing clean uses for the ssh target's leftovers is complete or raises."""
    (faultfs.backing / "data" / "A" / "000002.tmp-upload").write_bytes(b"half")
    assert [lo.key for lo in sick.leftovers()] == ["data/A/000002"]
    faultfs.fail("readdir", "data/A", errno.EIO)
    with pytest.raises(TargetError, match="Input/output error") as caught:
        sick.leftovers()
    assert not isinstance(caught.value, NotFound)


@pytest.mark.parametrize("verb", ["stat", "read", "delete"])
def test_a_remote_io_error_is_not_a_missing_object(sick: SshTarget, faultfs: FaultFS, verb: str) -> None:
    """``[ -f FILE ]`` is false on EIO: that made an unreadable manifest NotFound, which a
    catalog skips as "deleted meanwhile", orphaning the backup's data."""
    faultfs.fail("getattr", "backups/A/manifest", errno.EIO)
    with pytest.raises(TargetError) as caught:
        getattr(sick, verb)("backups/A/manifest")
    assert not isinstance(caught.value, NotFound)
    assert (faultfs.backing / "backups" / "A" / "manifest").exists()


# -- the ssh target never follows a symlink (item 3) --------------------------------------------
@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    for name in ("000000", "000001"):
        (path / name).write_bytes(b"precious " + name.encode())
    return path


def test_remote_symlinks_are_never_followed(
    server: SshServer, tmp_path: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A symlinked segment and a symlinked backup directory on the remote: listings skip them
    with a warning; stat, get, put and delete through them raise; the files they point at and
    the links themselves survive."""
    root = tmp_path / "remote"
    _populate(root)
    (root / "data" / "C").symlink_to(outside, target_is_directory=True)
    (root / "data" / "B" / "000001").symlink_to(outside / "000001")
    with open_ssh_target(server, root, tmp_path) as target:
        with caplog.at_level(logging.WARNING):
            keys = [o.key for o in target.list("data/")]
        assert keys == ["data/A/000000", "data/A/000001", "data/B/000000"]
        assert "data/C" in caplog.text and "data/B/000001" in caplog.text
        with caplog.at_level(logging.WARNING):
            assert list(target.list("data/C/")) == []
        for key in ("data/C/000000", "data/B/000001"):
            for verb in (target.stat, target.read, target.delete):
                with pytest.raises(SymlinkInTarget, match=key.rsplit("/", 1)[0]):
                    verb(key)
        with pytest.raises(SymlinkInTarget, match="data/C"):
            target.put("data/C/000002", [b"new"])
        assert target.leftovers() == []
    assert _files(outside) == ["000000", "000001"]
    assert (outside / "000001").read_bytes() == b"precious 000001"
    assert (root / "data" / "C").is_symlink() and (root / "data" / "B" / "000001").is_symlink()


# -- rsync honours the push's rate (item 19) ----------------------------------------------------
def test_rsync_gets_the_rate_limit(server: SshServer, tmp_path: Path) -> None:
    """No limit, no --bwlimit; a rate is passed in KiB/s, shared by concurrent transfers, and
    reaches the target through the RetryingTarget that open_target wraps it in."""
    root = tmp_path / "remote"
    root.mkdir()
    wrapped = open_target(server.url(root), ssh_settings(server, tmp_path))
    try:
        assert isinstance(wrapped, RetryingTarget)
        inner = wrapped.inner
        assert isinstance(inner, SshTarget)

        def limits(transfers: int = 1) -> list[str]:
            argv = inner.rsync_argv("/spool", "data/A/000000", 1, transfers)
            return [a for a in argv if a.startswith("--bwlimit")]

        assert limits() == []
        wrapped.set_rate_limit(2 * 1024 * 1024)
        assert limits() == ["--bwlimit=2048"]
        assert limits(transfers=4) == ["--bwlimit=512"]
        rates: list[float | None] = [300 * 1024.0, None]
        wrapped.set_rate_limit(lambda: rates[0])
        assert limits() == ["--bwlimit=300"]
        rates[0] = None  # an unlimited window of a schedule
        assert limits() == []
    finally:
        wrapped.close()


def test_a_limited_transfer_is_slowed_down(server: SshServer, tmp_path: Path) -> None:
    """One coarse real transfer: 768 KiB at 256 KiB/s takes seconds, not milliseconds."""
    root = tmp_path / "remote"
    root.mkdir()
    data = os.urandom(768 * 1024)
    with open_ssh_target(server, root, tmp_path) as target:
        target.put("warm-up", [b"x"])  # the ssh master connection is not part of the measure
        target.set_rate_limit(256 * 1024)
        started = time.monotonic()
        target.put("data/A/000000", [data])
        elapsed = time.monotonic() - started
    assert (root / "data" / "A" / "000000").read_bytes() == data
    assert elapsed > 1.5, f"768 KiB at 256 KiB/s took {elapsed:.2f}s"


# -- S3: a failure in the middle of a pagination (item 2) ---------------------------------------
@pytest.fixture
def two_pages(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, list[str]]:
    """A fresh prefix holding 1,001 objects: one more than SeaweedFS returns per page."""
    prefix = unique_prefix()
    keys = [f"data/A/{i:06d}" for i in range(1001)]
    with seaweed_target(request, tmp_path, prefix=prefix) as direct, ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: direct.put(k, [k.encode()]), keys))
    return prefix, keys


def test_s3_listing_fails_when_a_later_page_fails(
    request: pytest.FixtureRequest, tmp_path: Path, two_pages: tuple[str, list[str]]
) -> None:
    """A 403 on the second page, or 500s past the retry budget, raise; never the first page
    alone."""
    prefix, keys = two_pages
    proxy: B2RulesProxy = fresh_b2_proxy(request)
    with seaweed_target(request, tmp_path, via_proxy=True, prefix=prefix) as target:
        assert [o.key for o in target.list("data/")] == keys
        pages = len(proxy.ops("ListObjectsV2"))
        assert pages >= 2, "the listing was not paginated: the test would test nothing"

        proxy.reset()
        proxy.inject("forbidden", op="ListObjectsV2", after=1)
        with pytest.raises(PermissionDenied):
            list(target.list("data/"))
        assert len(proxy.ops("ListObjectsV2")) == 2

    proxy.reset()
    proxy.inject("internal_error", count=100, op="ListObjectsV2", after=1)
    inner = seaweed_target(request, tmp_path, via_proxy=True, prefix=prefix)
    with (
        RetryingTarget(inner, no_sleep_policy(3)) as retried,
        pytest.raises(TransientTargetError, match="InternalError"),
    ):
        list(retried.list("data/"))
    assert len(proxy.ops("ListObjectsV2")) == 1 + 3  # page 1 and 2, then two retries of page 1


def test_s3_listing_of_a_missing_bucket_is_an_error(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """No bucket is not "no objects": the listing raises (exit 10), never lists as empty."""
    with (
        seaweed_target(request, tmp_path, bucket="no-such-bucket-here") as target,
        pytest.raises(TargetMissingError, match="no-such-bucket-here"),
    ):
        list(target.list("data/"))
