"""Real signals to a real ``btrsync`` process: SIGTERM, SIGHUP and SIGINT stop a push or a
receive cleanly (children stopped, temporaries, spools and leases gone, partial subvolume removed),
with exit 128 + signal, and running the same command again succeeds.

The CLI runs as a subprocess (like ``test_resume``).  To land a signal at a chosen point, the test
polls for that point, freezes the process with SIGSTOP, checks the point still holds, queues the
signal(s) and lets the process go on with SIGCONT: the signal is then handled exactly there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from btrsync.btrfs.subvolume import subvolume_info
from btrsync.config.model import load_config
from btrsync.targets.registry import open_target
from tests.integration.conftest import World
from tests.integration.test_remote_targets import remote  # noqa: F401 - fixture: s3, s3 via B2 rules, ssh
from tests.support import tree
from tests.support.loopfs import create_subvolume, snapshot

pytestmark = pytest.mark.btrfs

EXIT = {signal.SIGHUP: 129, signal.SIGINT: 130, signal.SIGTERM: 143}
WORD = {signal.SIGHUP: "hung up", signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


@dataclass
class Outcome:
    code: int
    err: str
    children: list[tuple[psutil.Process, list[str]]]  # children and their argv when the signal was sent


class Child:
    """``btrsync ARGS`` as a real process, with the world's config, state dir and key."""

    def __init__(self, world: World, *args: str) -> None:
        argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
                "--key-file", str(world.key), *args]
        self.errfile = world.config.parent / f"stderr-{time.monotonic_ns()}"
        with open(self.errfile, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.ps = psutil.Process(self.proc.pid)

    def freeze_when(self, point: Callable[[], bool], timeout: float = 60) -> None:
        """SIGSTOP the process at a moment ``point()`` holds (checked again while it is stopped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the command ended (exit {self.proc.returncode}) before the point: {self.stderr()}")
            if point():
                self.proc.send_signal(signal.SIGSTOP)
                self.ps.status()  # let the stop land
                while self.ps.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                    time.sleep(0.001)
                if point():
                    return
                self.proc.send_signal(signal.SIGCONT)
            time.sleep(0.002)
        self.proc.kill()
        pytest.fail("the point was never reached")

    def signal(self, *signals: signal.Signals) -> Outcome:
        """Queue ``signals`` on the frozen process, let it run, wait for it to exit."""
        children = []
        for p in self.ps.children(recursive=True):
            try:
                children.append((p, p.cmdline()))
            except psutil.NoSuchProcess:
                pass
        for sig in signals:
            self.proc.send_signal(sig)
        self.proc.send_signal(signal.SIGCONT)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy = os.path.join(os.path.dirname(sys.executable), "py-spy")  # the bench extra's; where it hangs
            stacks = (subprocess.run([spy, "dump", "--pid", str(self.proc.pid)], capture_output=True,
                                     text=True).stdout if os.path.exists(spy) else "")
            self.proc.kill()
            pytest.fail(f"the command did not exit within 60 s of the signal: {self.stderr()}\n{stacks}")
        return Outcome(code, self.stderr(), children)

    def stderr(self) -> str:
        return self.errfile.read_text(errors="replace")


def _running(children: list[tuple[psutil.Process, list[str]]]) -> list[str]:
    alive = []
    for p, argv in children:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(argv))
        except psutil.NoSuchProcess:
            pass
    return alive


def _btrfs(children: list[tuple[psutil.Process, list[str]]], verb: str) -> list[str]:
    return [" ".join(argv) for _, argv in children
            if len(argv) > 1 and os.path.basename(argv[0]) == "btrfs" and argv[1] == verb]


def _content(world: World, size_mib: int) -> Path:
    """A tree with every kind of file plus ``size_mib`` of random bytes; snapshot it.  On the
    world's directory target, segments of 1 MiB: tens of them, not hundreds, and still several
    before the points below."""
    if world.target_name is None:
        world.set_push(chunk_size="256k", segment_size="1M")
    tree.populate(world.subvol, 5)
    with open(world.subvol / "big.bin", "wb") as f:
        f.write(os.urandom(size_mib << 20))
    return world.snapshot()


def _assert_restored(world: World, snap: Path) -> None:
    restored = world.restore / snap.name
    info = subvolume_info(restored)
    assert info.readonly and info.received_uuid is not None
    assert tree.compare(tree.describe(snap), tree.describe(restored)) == []


def _push_argv(world: World) -> list[str]:
    return ["push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", world.url, "--bwlimit", "4M"]


def _data(world: World) -> list[str]:
    return [f for f in world.data_files() if f.startswith("data/")]


PUSH_POINTS: dict[str, Callable[[World], bool]] = {
    # a segment is being written: its temporary file exists, btrfs send runs
    "segment in flight": lambda w: any(".tmp-" in f for f in _data(w)),
    # two segments are durable and indexed, more are on their way
    "after two segments": lambda w: sum(f.endswith(".idx") for f in _data(w)) >= 2,
}


@pytest.mark.parametrize("point", list(PUSH_POINTS))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.slow
def test_a_signalled_push_cleans_up_and_the_rerun_succeeds(world: World, sig: signal.Signals, point: str) -> None:
    snap = _content(world, 24)
    child = Child(world, *_push_argv(world))
    child.freeze_when(lambda: PUSH_POINTS[point](world))
    out = child.signal(sig)

    assert out.code == EXIT[sig], out.err
    assert f"btrsync: {WORD[sig]} ({sig.name})" in out.err and "run the command again" in out.err
    assert "Traceback" not in out.err
    assert _btrfs(out.children, "send"), "btrfs send was not running when the signal came"
    assert _running(out.children) == []
    files = world.data_files()
    assert [f for f in files if ".tmp-" in f] == []
    assert [f for f in files if f.startswith("locks/")] == []
    assert [f for f in files if f.startswith("backups/")] == []  # nothing committed

    run = world.push("--json")
    assert run.code == 0, run.err
    [backup] = run.json()["backups"]
    assert backup["status"] == "ok"
    assert [f for f in world.data_files() if ".tmp-" in f or f.startswith("locks/")] == []
    assert world.receive("latest").code == 0
    _assert_restored(world, snap)


@pytest.mark.slow
def test_a_second_signal_during_cleanup_does_not_cut_it_short(world: World) -> None:
    """SIGHUP and SIGTERM both pending: the first starts the cleanup, the second is only noted."""
    _content(world, 24)
    child = Child(world, *_push_argv(world))
    child.freeze_when(lambda: PUSH_POINTS["segment in flight"](world))
    out = child.signal(signal.SIGHUP, signal.SIGTERM)  # SIGHUP (1) is handled first

    assert out.code == 129, out.err
    assert "btrsync: hung up (SIGHUP)" in out.err
    assert "still cleaning up" in out.err and "Traceback" not in out.err
    assert _running(out.children) == []
    assert [f for f in world.data_files() if ".tmp-" in f or f.startswith("locks/")] == []
    assert world.push().code == 0


@pytest.mark.slow
def test_a_successful_push_removes_the_temporaries_of_a_killed_one(world: World) -> None:
    """SIGKILL cannot be handled: it leaves a temporary file and a stale lease; the next push of
    the same backup removes both (its own backup's leftovers) once it has committed."""
    snap = _content(world, 24)
    child = Child(world, *_push_argv(world))
    child.freeze_when(lambda: PUSH_POINTS["segment in flight"](world))
    out = child.signal(signal.SIGKILL)
    assert out.code == -signal.SIGKILL
    psutil.wait_procs([p for p, _ in out.children], timeout=30)
    assert [f for f in world.data_files() if ".tmp-" in f], "SIGKILL left no temporary (test premise)"

    run = world.push()
    assert run.code == 0, run.err
    assert [f for f in world.data_files() if ".tmp-" in f or f.startswith("locks/")] == []
    assert world.receive("latest").code == 0
    _assert_restored(world, snap)


# --------------------------------------------------------------------------------------------------
# receive


def _pushed(world: World, size_mib: int = 32) -> Path:
    snap = _content(world, size_mib)
    run = world.push()
    assert run.code == 0, run.err
    return snap


def _partial(world: World, snap: Path) -> Callable[[], bool]:
    """btrfs receive has created the subvolume and written part of the big file."""
    def point() -> bool:
        big = world.restore / snap.name / "big.bin"
        try:
            return big.stat().st_size > 0
        except OSError:
            return False
    return point


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.slow
def test_a_signalled_receive_removes_its_partial_subvolume(world: World, sig: signal.Signals) -> None:
    snap = _pushed(world)
    argv = ["receive", "latest", "--from", world.url, "--into", str(world.restore)]
    child = Child(world, *argv)
    child.freeze_when(_partial(world, snap))
    out = child.signal(sig)

    assert out.code == EXIT[sig], out.err
    assert f"btrsync: {WORD[sig]} ({sig.name})" in out.err and "Traceback" not in out.err
    assert _btrfs(out.children, "receive"), "btrfs receive was not running when the signal came"
    assert _running(out.children) == []
    assert not (world.restore / snap.name).exists()

    run = world.receive("latest")
    assert run.code == 0, run.err
    _assert_restored(world, snap)


def _pause_and_resume_until_done(child: Child, timeout: float = 120) -> int:
    """SIGSTOP and SIGCONT the running command again and again until it exits (Ctrl-Z and ``fg``,
    ``kill -STOP`` and ``-CONT``, a cgroup freeze, a debugger or profiler attaching all do this):
    each stop interrupts the system call it lands in, and a write to a pipe then returns short."""
    deadline = time.monotonic() + timeout
    while child.proc.poll() is None:
        if time.monotonic() > deadline:
            child.proc.kill()
            pytest.fail(f"the command did not finish within {timeout:.0f} s")
        child.proc.send_signal(signal.SIGSTOP)
        with contextlib.suppress(psutil.NoSuchProcess):
            while child.ps.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                time.sleep(0.001)
        child.proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    return child.proc.returncode


@pytest.mark.slow
def test_a_paused_and_resumed_push_and_receive_complete_unharmed(world: World) -> None:
    """A stop interrupts a blocking write to btrfs receive's stdin after part of it went through;
    the rest must still be written (it once was dropped: btrfs receive then failed with "crc32
    mismatch in command", which reads as a damaged backup)."""
    snap = _content(world, 64)
    push = Child(world, *_push_argv(world)[:-2], "--bwlimit", "16M")
    assert _pause_and_resume_until_done(push) == 0, push.stderr()

    child = Child(world, "receive", "latest", "--from", world.url, "--into", str(world.restore))
    child.freeze_when(_partial(world, snap))  # the first pause lands while btrfs receive is writing
    child.proc.send_signal(signal.SIGCONT)
    assert _pause_and_resume_until_done(child) == 0, child.stderr()
    _assert_restored(world, snap)


@pytest.mark.slow
def test_the_rerun_of_a_killed_receive_replaces_its_partial_subvolume(world: World) -> None:
    """SIGKILL leaves a writable subvolume without received uuid under the final name: the rerun
    recognises it as its own partial receive, removes it (saying so) and receives again."""
    snap = _pushed(world)
    argv = ["receive", "latest", "--from", world.url, "--into", str(world.restore)]
    child = Child(world, *argv)
    child.freeze_when(_partial(world, snap))
    out = child.signal(signal.SIGKILL)
    psutil.wait_procs([p for p, _ in out.children], timeout=30)
    partial = subvolume_info(world.restore / snap.name)
    assert not partial.readonly and partial.received_uuid is None  # test premise

    run = world.receive("latest")
    assert run.code == 0, run.err
    assert "partial" in run.err and str(world.restore / snap.name) in run.err
    _assert_restored(world, snap)


def _refused(world: World, name: str) -> str:
    run = world.receive("latest")
    assert run.code != 0
    assert str(world.restore / name) in run.err
    return run.err


def test_receive_refuses_what_is_not_its_own_leftover(world: World) -> None:
    """Anything else under the snapshot's name is left alone, with a message saying what it is."""
    snap = _pushed(world, 1)
    where = world.restore / snap.name
    where.mkdir()
    (where / "mine").write_text("keep me")
    assert "not a subvolume" in _refused(world, snap.name)
    (where / "mine").unlink()
    where.rmdir()

    create_subvolume(where)  # read-only, never received
    (where / "mine").write_text("keep me")
    subprocess.run(["btrfs", "property", "set", "-ts", str(where), "ro", "true"], check=True)
    assert "read-only" in _refused(world, snap.name)
    assert (where / "mine").read_text() == "keep me"
    subprocess.run(["btrfs", "property", "set", "-ts", str(where), "ro", "false"], check=True)

    # writable and never received, but a snapshot of another subvolume: not what receive creates
    subprocess.run(["btrfs", "subvolume", "delete", str(where)], check=True, capture_output=True)
    other = create_subvolume(world.restore / "other")
    snapshot(other, where, readonly=False)
    (where / "mine").write_text("keep me")
    assert "snapshot of" in _refused(world, snap.name)
    assert (where / "mine").read_text() == "keep me"


def test_a_subvolume_named_error_pushes_and_restores(world: World) -> None:
    """btrfs send and receive print the snapshot's path ("At subvol …"); a name containing
    "error" is not an error (only btrfs-progs' ``ERROR:`` lines are)."""
    sub = create_subvolume(world.src / "error-logs")
    tree.populate(sub, 3)
    snapdir = world.src / "errors"
    snapdir.mkdir()
    run = world.cli("snapshot", "create", str(sub), "--snapshot-dir", str(snapdir))
    assert run.code == 0, run.err
    snap = Path(run.out.strip())
    run = world.cli("push", str(sub), "--snapshot-dir", str(snapdir), "--to", world.url)
    assert run.code == 0, run.err
    run = world.receive("error-logs@latest")
    assert run.code == 0, run.err
    _assert_restored(world, snap)


# --------------------------------------------------------------------------------------------------
# remote targets: the S3 multipart upload is aborted, the ssh spool file removed


def _remote_target(world: World):  # type: ignore[no-untyped-def]
    url, settings = load_config(world.config, explicit=True).target(world.url)
    return open_target(url, settings)


def test_a_terminated_push_to_a_remote_target_leaves_no_upload_spool_or_lease(
        remote: World, tmp_path: Path) -> None:  # noqa: F811
    snap = _content(remote, 40)
    child = Child(remote, *_push_argv(remote))
    with remote.lister() as keys:  # one client for the polling, not one per look
        child.freeze_when(lambda: any(f.startswith("data/") and f.endswith(".idx") for f in keys()), timeout=120)
    out = child.signal(signal.SIGTERM)

    assert out.code == 143, out.err
    assert _running(out.children) == []
    with _remote_target(remote) as target:
        assert target.leftovers() == []  # no unfinished multipart upload, no temporary file
        assert list(target.list("locks/")) == []
    spool = tmp_path / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []

    run = remote.push()
    assert run.code == 0, run.err
    assert remote.receive("latest").code == 0
    _assert_restored(remote, snap)
