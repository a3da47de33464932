"""What the rsync-over-ssh target promises beyond the shared conformance suite.

These run against the session's throwaway sshd on 127.0.0.1 (see ``factories_ssh.py``).  The
"remote" root is a local directory, so the tests look at the remote files directly.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from btrsync.errors import ConfigError, TargetMissingError, UsageError
from btrsync.targets.base import Target
from btrsync.targets.errors import (
    InvalidKey,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    TargetError,
    TransientTargetError,
)
from btrsync.targets.local import LocalTarget
from btrsync.targets.retry import RetryPolicy
from btrsync.targets.ssh.connection import SshConfig, SshConnection
from btrsync.targets.ssh.errors import remote_error, rsync_error, ssh_error
from btrsync.targets.ssh.parsers import TransferStats
from btrsync.targets.ssh.scripts import PARTIAL_DIR
from btrsync.targets.ssh.settings import remote_root
from btrsync.targets.ssh.target import SshTarget
from btrsync.targets.url import parse_url
from tests.support.sshd import SshServer, free_port
from tests.targets.factories_ssh import open_ssh_target, ssh_server


@pytest.fixture
def server(request: pytest.FixtureRequest) -> SshServer:
    return ssh_server(request)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "remote"
    path.mkdir()
    return path


@pytest.fixture
def target(server: SshServer, root: Path, tmp_path: Path) -> Iterator[SshTarget]:
    t = open_ssh_target(server, root, tmp_path)
    yield t
    t.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _children(name: str) -> list[psutil.Process]:
    """Processes this test process started (directly or not) with the given name.

    The test's own sshd is a descendant too: its per-connection processes exit on their own
    schedule, so one listed here may be gone by the time its name is read.
    """
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name() == name:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


# -- atomicity and resume -------------------------------------------------------------------------
def test_failed_producer_leaves_nothing_on_either_side(
    target: SshTarget, root: Path, tmp_path: Path
) -> None:
    """A parts iterator that dies before the transfer leaves no remote file and no spool file."""

    def parts() -> Iterator[bytes]:
        yield b"x" * 1000
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        target.put("a/b/obj", parts())
    assert _files(root) == []
    assert list((tmp_path / "spool").iterdir()) == []
    assert target.list_temporaries() == []


def _drop_connection_once_uploaded(directory: Path, name: str, threshold: int) -> None:
    """Wait until rsync's temporary file for ``name`` holds ``threshold`` bytes, then kill the
    ssh process under rsync (a dropped network link; the master connection is not our child)."""
    _wait_for(
        lambda: any(p.stat().st_size >= threshold for p in directory.glob(f".{name}.tmp-upload.*"))
    )
    for ssh in _children("ssh"):
        ssh.send_signal(signal.SIGKILL)


def _transfers(caplog: pytest.LogCaptureFixture) -> list[TransferStats]:
    return [r.transfer for r in caplog.records if hasattr(r, "transfer")]


def test_interrupted_transfer_is_hidden_kept_and_resumed(
    server: SshServer, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dropped connection leaves an invisible partial upload; the next put sends only the rest."""
    data = os.urandom(16 << 20)
    slow = open_ssh_target(server, root, tmp_path, rsync_options=["--bwlimit=4096"], max_attempts=1)
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            slow.put("seg/000001", [data])
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever put raised
            errors.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    _drop_connection_once_uploaded(root / "seg", "000001", 4 << 20)
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], TransientTargetError), errors

    assert list(slow.list()) == []
    with pytest.raises(NotFound):
        slow.stat("seg/000001")
    [leftover] = slow.leftovers()
    assert (leftover.kind, leftover.key, leftover.handle) == (
        "partial upload",
        "seg/000001",
        f"seg/{PARTIAL_DIR}/000001.tmp-upload",
    )
    assert leftover.size >= 4 << 20
    slow.close()

    with (
        open_ssh_target(server, root, tmp_path) as fast,
        caplog.at_level(logging.DEBUG, "btrsync.targets.ssh"),
    ):
        fast.put("seg/000001", [data])
        [stats] = _transfers(caplog)
        assert stats.matched >= leftover.size - (256 << 10)
        assert stats.literal <= len(data) - leftover.size + (256 << 10)
        assert hashlib.sha256(fast.read("seg/000001")).digest() == hashlib.sha256(data).digest()
        assert fast.list_temporaries() == []
    assert _files(root) == ["seg", "seg/000001"]


def test_put_retries_a_dropped_transfer_from_its_spool_file(
    server: SshServer, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The parts stream is read once; a transient failure is retried from the spool, resuming."""
    data = os.urandom(8 << 20)
    consumed = []

    def parts() -> Iterator[bytes]:
        for i in range(0, len(data), 1 << 20):
            consumed.append(i)
            yield data[i : i + (1 << 20)]

    with (
        open_ssh_target(server, root, tmp_path, rsync_options=["--bwlimit=4096"]) as t,
        caplog.at_level(logging.DEBUG, "btrsync.targets.ssh"),
    ):
        t.policy = RetryPolicy(attempts=3, sleep=lambda _: None)
        thread = threading.Thread(target=t.put, args=("seg/000002", parts()))
        thread.start()
        _drop_connection_once_uploaded(root / "seg", "000002", 2 << 20)
        thread.join(30)
        assert t.read("seg/000002") == data
        [stats] = _transfers(caplog)
    assert len(consumed) == 8  # the stream was not replayed
    assert stats.matched >= (2 << 20) - (256 << 10)
    assert list((tmp_path / "spool").iterdir()) == []


def test_remove_temporary_cleans_partials_and_empty_dirs(target: SshTarget, root: Path) -> None:
    """clean removes a leftover and the directories it leaves empty, and nothing else."""
    (root / "d" / PARTIAL_DIR).mkdir(parents=True)
    (root / "d" / PARTIAL_DIR / "k.tmp-upload").write_bytes(b"part")
    (root / "e").mkdir()
    (root / "e" / ".k.tmp-upload.Ab12Cd").write_bytes(b"tmp")
    (root / "e" / "k").write_bytes(b"object")
    assert list(target.list()) == [target.stat("e/k")]
    assert [t.path for t in target.list_temporaries()] == [
        f"d/{PARTIAL_DIR}/k.tmp-upload",
        "e/.k.tmp-upload.Ab12Cd",
    ]
    assert [(lo.kind, lo.key) for lo in target.leftovers()] == [
        ("partial upload", "d/k"),
        ("partial upload", "e/k"),
    ]
    target.remove_leftover(target.leftovers()[0])
    for temporary in target.list_temporaries():
        target.remove_temporary(temporary.path)
    assert _files(root) == ["e", "e/k"]
    with pytest.raises(NotFound):
        target.remove_temporary("e/.k.tmp-upload.Ab12Cd")


@pytest.mark.parametrize(
    "path", ["e/k", "../x.tmp-1", "/abs/x.tmp-1", "a/../b.tmp-1", "x.tmp-1/obj"]
)
def test_remove_temporary_refuses_other_paths(target: SshTarget, path: str) -> None:
    """Only names with the temp marker inside the root can be removed this way."""
    with pytest.raises(InvalidKey):
        target.remove_temporary(path)


def test_full_remote_disk_is_quota_exceeded(server: SshServer, tmp_path: Path) -> None:
    """ENOSPC on the remote becomes QuotaExceeded, and no object appears."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:  # not root: only CI (root) must run this
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with open_ssh_target(server, small, tmp_path) as t:
            with pytest.raises(QuotaExceeded):
                t.put("big", [os.urandom(2 << 20)])
            assert list(t.list()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


# -- connection and errors ------------------------------------------------------------------------
def test_master_connection_is_reused(server: SshServer, root: Path, tmp_path: Path) -> None:
    """Many operations, one ssh authentication: everything runs over the master connection."""
    before = server.accepted_logins()
    with open_ssh_target(server, root, tmp_path) as t:
        t.probe()
        for i in range(3):
            t.put(f"m/{i}", [b"data"])
        t.stat("m/0")
        assert t.read("m/1", offset=1) == b"ata"
        assert len(list(t.list("m/"))) == 3
        t.delete("m/2")
        assert t.free_space()
        control_dir = os.path.dirname(t.conn.control_path)
    _wait_for(lambda: server.accepted_logins() > before, timeout=5)
    assert server.accepted_logins() == before + 1
    assert not os.path.exists(control_dir)  # close() stopped the master and removed its socket


def test_forgotten_target_stops_its_master_when_collected(
    server: SshServer, root: Path, tmp_path: Path
) -> None:
    """Without close(), garbage collection still ends the master and removes private dirs."""
    t = SshTarget.from_url(parse_url(server.url(root)), server.settings())
    t.put("k", [b"x"])
    control_dir, spool_dir = os.path.dirname(t.conn.control_path), t._private_spool
    assert spool_dir and os.path.isdir(control_dir) and os.path.isdir(spool_dir)
    del t
    gc.collect()
    assert not os.path.exists(control_dir) and not os.path.exists(spool_dir)


def test_unknown_host_key_is_refused(server: SshServer, root: Path, tmp_path: Path) -> None:
    """With strict checking (the default) an unknown host key is refused, never accepted."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with open_ssh_target(server, root, tmp_path, known_hosts_file=str(empty)) as t:
        with pytest.raises(PermissionDenied, match="known_hosts"):
            t.probe()
        with pytest.raises(PermissionDenied):
            t.put("k", [b"x"])
    assert empty.read_text() == ""
    assert _files(root) == []


def test_unauthorized_key_is_permission_denied(
    server: SshServer, root: Path, tmp_path: Path
) -> None:
    """A key the server does not know fails with PermissionDenied and a hint about identity_file."""
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with (
        open_ssh_target(server, root, tmp_path, identity_file=str(other)) as t,
        pytest.raises(PermissionDenied, match="identity_file"),
    ):
        t.probe()


def test_unreachable_host_is_transient(server: SshServer, root: Path, tmp_path: Path) -> None:
    """Nothing listening: a TransientTargetError that names the host and port."""
    port = free_port()
    url = f"ssh://root@127.0.0.1:{port}{root}"
    settings = {**server.settings(), "connect_timeout": 5}
    with (
        SshTarget.from_url(parse_url(url), settings) as t,
        pytest.raises(TransientTargetError, match=f"127.0.0.1:{port}"),
    ):
        t.probe()


def test_missing_remote_root_is_target_missing(server: SshServer, tmp_path: Path) -> None:
    """probe and put refuse a missing root (an unmounted disk) instead of creating it."""
    missing = tmp_path / "not-mounted" / "backups"
    with open_ssh_target(server, missing, tmp_path) as t:
        with pytest.raises(TargetMissingError, match="does not exist on root@127.0.0.1"):
            t.probe()
        with pytest.raises(TargetMissingError):
            t.put("k", [b"x"])
        assert list(t.list()) == []
    assert not missing.parent.exists()


def test_free_space_is_a_positive_int(target: SshTarget, root: Path) -> None:
    """free_space reports the remote filesystem's available bytes."""
    free = target.free_space()
    assert isinstance(free, int) and free > 0
    local = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
    assert abs(free - local) < 1 << 30


def test_odd_paths_are_passed_literally(server: SshServer, tmp_path: Path) -> None:
    """Roots and key paths with blanks, quotes, '%' and shell syntax are used verbatim."""
    odd = tmp_path / 'it\'s a "dir" $(echo x) `true`; &x' / "sub dir"
    odd.mkdir(parents=True)
    keys = tmp_path / "keys 100% %h"
    keys.mkdir()
    for name in ("identity_file", "known_hosts_file", "ssh_config"):
        source = Path(str(server.settings()[name]))
        (keys / source.name).write_bytes(source.read_bytes())
        (keys / source.name).chmod(0o600)
    files = {
        n: str(keys / Path(str(server.settings()[n])).name)
        for n in ("identity_file", "known_hosts_file", "ssh_config")
    }
    with open_ssh_target(server, odd, tmp_path, **files) as t:
        t.probe()
        t.put("a/b", [b"hello"])
        assert (odd / "a" / "b").read_bytes() == b"hello"
        assert t.read("a/b", offset=1, length=3) == b"ell"
        assert [o.key for o in t.list()] == ["a/b"]
        assert t.free_space()
        t.delete("a/b")
    assert _files(odd) == []


def test_layout_is_the_directory_targets(target: SshTarget, root: Path) -> None:
    """The directory target reads what the ssh target wrote, and the other way round."""
    local = LocalTarget(root)
    target.put("backups/x/manifest", [b"m1"])
    local.put("data/x/000000", [b"chunk"])
    assert (root / "backups" / "x" / "manifest").read_bytes() == b"m1"
    assert list(target.list()) == list(local.list())
    assert target.read("data/x/000000") == b"chunk"
    assert oct((root / "backups" / "x" / "manifest").stat().st_mode & 0o777) == oct(0o600)
    target.delete("backups/x/manifest")
    assert not (root / "backups").exists()


def test_abandoned_read_ends_its_ssh_process(target: SshTarget) -> None:
    """Closing a get() generator early kills its ssh process; memory stays one block."""
    target.put("big", [os.urandom(3 << 20)])
    stream = target.get("big")
    first = next(stream)
    assert len(first) <= 1 << 20
    stream.close()
    assert _children("ssh") == []


def test_get_of_a_directory_is_not_found(target: SshTarget) -> None:
    """A key that names a directory of other objects is not an object."""
    target.put("dir/obj", [b"x"])
    with pytest.raises(NotFound):
        target.stat("dir")
    with pytest.raises(NotFound):
        target.read("dir")


# -- configuration (no server needed) -------------------------------------------------------------
def test_url_user_and_port_win_over_settings() -> None:
    """ssh://user@host:port beats the user and port settings; settings fill in the rest."""
    t = SshTarget.from_url(parse_url("ssh://alice@nas:2222/srv/b"), {"user": "bob", "port": 22})
    assert (t.conn.config.user, t.conn.config.port, t.root) == ("alice", 2222, "/srv/b")
    t = SshTarget.from_url(parse_url("ssh://nas/srv/b/"), {"user": "bob", "port": 2200, "url": "x"})
    assert (t.conn.config.user, t.conn.config.port, t.root) == ("bob", 2200, "/srv/b")
    assert t.display_url == "ssh://bob@nas:2200/srv/b"
    t = SshTarget.from_url(parse_url("ssh://nas/~/b"), {"identity-file": "~/k", "max-attempts": 2})
    assert t.conn.config.identity_file == os.path.expanduser("~/k")
    assert (t.root, t.policy.attempts, t.display_url) == ("b", 2, "ssh://nas/~/b")


def test_ssh_argv_never_prompts_and_checks_host_keys(tmp_path: Path) -> None:
    """BatchMode, strict host key checking and keepalives come first, before user options."""
    conn = SshConnection(
        SshConfig("nas", ssh_options=("StrictHostKeyChecking=no", "Compression=yes"))
    )
    argv = conn.ssh_argv()
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert options.index("BatchMode=yes") < options.index("StrictHostKeyChecking=no")
    assert options.index("StrictHostKeyChecking=yes") < options.index("StrictHostKeyChecking=no")
    assert "ControlMaster=no" in options and any(
        o.startswith("ServerAliveInterval=") for o in options
    )
    conn.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"strict_host_key_checking": "maybe"},
        {"port": "22"},
        {"ssh_options": "-v"},
        {"identity_file": 3},
        {"rsync_options": ["--rsync-path=sudo rsync"]},
        {"rsync_options": ["-e", "ssh -v"]},
    ],
)
def test_bad_settings_are_config_errors(settings: dict[str, object]) -> None:
    """Wrong setting types and reserved rsync options are reported before anything connects."""
    with pytest.raises(ConfigError):
        SshTarget.from_url(parse_url("ssh://nas/srv"), settings)


def test_remote_root_forms() -> None:
    """Absolute paths, home-relative /~/ paths; the bare root is refused."""
    assert remote_root("/srv/backups/") == "/srv/backups"
    assert remote_root("/~/backups") == "backups"
    for bad in ("/", "", "/~/", "/~"):
        with pytest.raises(UsageError):
            remote_root(bad)


def test_hosts_that_look_like_options_are_refused() -> None:
    """A host beginning with '-' could smuggle ssh options in; it is rejected."""
    with pytest.raises(TargetError):
        SshConnection(SshConfig("-oProxyCommand=touch x"))


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("Host key verification failed.\r\n", PermissionDenied),
        ("root@h: Permission denied (publickey).\r\n", PermissionDenied),
        ("ssh: connect to host h port 22: Connection refused\r\n", TransientTargetError),
        (
            "ssh: Could not resolve hostname nope: Name or service not known\r\n",
            TransientTargetError,
        ),
    ],
)
def test_ssh_failures_are_classified(stderr: str, kind: type[TargetError]) -> None:
    """ssh's exit-255 messages map to permanent or transient errors."""
    assert type(ssh_error(stderr, "h")) is kind


@pytest.mark.parametrize(
    ("returncode", "stderr", "kind"),
    [
        (11, 'rsync: [receiver] write failed on "x": No space left on device (28)', QuotaExceeded),
        (23, 'rsync: [receiver] mkstemp "x" failed: Permission denied (13)', PermissionDenied),
        (
            12,
            "rsync: connection unexpectedly closed (0 bytes received so far) [sender]",
            TransientTargetError,
        ),
        (
            12,
            "Host key verification failed.\r\nrsync: connection unexpectedly closed",
            PermissionDenied,
        ),
        (12, "bash: line 1: rsync: command not found", TargetError),
        (-9, "", TransientTargetError),
        (2, "rsync: protocol incompatibility", TargetError),
    ],
)
def test_rsync_failures_are_classified(
    returncode: int, stderr: str, kind: type[TargetError]
) -> None:
    """rsync exit codes and messages map to the target error types."""
    assert type(rsync_error(returncode, stderr, "k", "h")) is kind


def test_remote_command_failures_are_classified() -> None:
    """Remote coreutils messages map to NotFound, QuotaExceeded and PermissionDenied."""
    assert type(remote_error("stat: cannot statx 'x': No such file or directory", "k")) is NotFound
    assert type(remote_error("mv: cannot move: Disk quota exceeded", "k")) is QuotaExceeded
    assert (
        type(remote_error("rm: cannot remove 'x': Read-only file system", "k")) is PermissionDenied
    )


def test_ssh_target_is_a_target() -> None:
    """The ssh target implements the narrow interface."""
    assert issubclass(SshTarget, Target)


def test_numbers_from_the_remote_are_ascii_digits_only() -> None:
    """``str.isdigit`` takes '²' (and other digits ``int`` refuses): a remote answering one crashed
    the caller with ValueError instead of a TargetError or a skipped entry."""
    from btrsync.targets.errors import TargetError
    from btrsync.targets.ssh.parsers import parse_int, parse_listing, parse_temporaries

    with pytest.raises(TargetError):
        parse_int("\u00b2".encode(), "x")
    records = "f\t./backups/a/manifest\t\u00b2\t1:2\0f\t./backups/b/manifest\t12\t3:1700000000.5\0".encode()
    parsed = list(parse_listing(records))
    assert parsed[0][2] is None and parsed[1][2] is not None and parsed[1][2].size == 12
    assert list(parse_temporaries("x.tmp-1\t5\tnan\0y.tmp-2\t\u00b3\t1\0".encode())) == []


def test_a_remote_that_answers_without_end_is_stopped(target: SshTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remote output was read whole into memory: a server answering without end (hostile, or a
    login script gone wrong) exhausted it.  It is stopped at the cap, and ssh does not linger."""
    from btrsync.targets.errors import TargetError
    from btrsync.targets.ssh import connection

    monkeypatch.setattr(connection, "MAX_OUTPUT", 1 << 20)
    with pytest.raises(TargetError, match="answered more than 1048576 bytes"):
        target.conn.run("yes", timeout=60)
    assert _children("ssh") == []
    assert target.conn.run("echo fine", timeout=60).stdout == b"fine\n"
