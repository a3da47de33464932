"""Where the data goes, and what push may believe: each test reproduces a way the first version
lost or misplaced data (an unmounted disk, a push that sent nothing, a replaced repository, a
rolled-back target, a second pusher) and checks that btrsync now fails closed."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from btrsync.audit import read_audit
from btrsync.btrfs.send import SendProcess
from btrsync.catalog import layout
from btrsync.catalog.lease import Lease
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import table_records
from btrsync.crypto.frames import Binding
from btrsync.crypto.keys import load_key_file
from btrsync.errors import LockedError
from btrsync.locking import target_lock
from btrsync.procs import boot_id
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import World
from tests.support import tree

pytestmark = pytest.mark.btrfs


@contextmanager
def tmpfs(path: Path, *, options: str = "size=256m") -> Iterator[Path]:
    """A real mount (an 'external disk') at ``path``, unmounted at the end if still mounted."""
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if os.path.ismount(path):
            subprocess.run(["umount", str(path)], check=True)


def _backup(world: World, seed: int = 1, *extra: str) -> None:
    (world.subvol / f"generation-{seed}").write_bytes(os.urandom(100_000))
    world.snapshot()
    run = world.push(*extra)
    assert run.code == 0, run.err


def test_unmounted_disk_is_never_written_and_init_is_explicit(world: World, tmp_path: Path) -> None:
    mnt = tmp_path / "usb"
    with tmpfs(mnt):
        world.target_dir = mnt
        run = world.push()
        assert run.code == 10 and "btrsync init" in run.err, run.err  # a push never creates one
        assert list(mnt.iterdir()) == []
        init = world.cli("init", "--to", world.url, "--json")
        assert init.code == 0, init.err
        repo_id = init.json()["repo_id"]
        _backup(world)
    # the disk is gone: the mount point is an empty directory on the root filesystem
    world.snapshot()
    for args in (["push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", world.url],
                 ["prune", "--from", world.url, "--keep-last", "1"], ["clean", "--from", world.url],
                 ["list", "--from", world.url], ["receive", "latest", "--from", world.url, "--into",
                                                  str(world.restore)]):
        run = world.cli(*args)
        assert run.code == 10, (args, run.err)
        assert "is the disk mounted?" in run.err and "Traceback" not in run.err
    assert list(mnt.iterdir()) == []
    # following the advice blindly is refused too: this host knows a repository there
    run = world.cli("init", "--to", world.url)
    assert run.code == 10 and repo_id in run.err and "state forget" in run.err
    assert list(mnt.iterdir()) == []


def test_another_repository_at_a_known_url_is_refused(world: World, tmp_path: Path) -> None:
    _backup(world)
    first = json.loads((world.target_dir / layout.REPO_MARKER).read_text())["repo_id"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert world.cli("init", "--to", f"file://{elsewhere}").code == 0
    second = json.loads((elsewhere / layout.REPO_MARKER).read_text())["repo_id"]
    shutil.rmtree(world.target_dir)  # a different disk now mounted at the same place
    shutil.copytree(elsewhere, world.target_dir)
    world.snapshot()
    run = world.push()
    assert run.code == 10 and first in run.err and second in run.err and "state forget" in run.err
    assert not (world.target_dir / "backups").exists()
    assert world.cli("state", "forget", world.url).code == 0
    assert world.push().code == 0  # the operator said so


def test_a_second_spelling_of_the_url_shares_the_lock(world: World, tmp_path: Path) -> None:
    _backup(world)
    repo_id = json.loads((world.target_dir / layout.REPO_MARKER).read_text())["repo_id"]
    world.snapshot()
    with target_lock(world.state, f"repository {repo_id}"):
        run = world.cli("push", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                        "--to", f"file://localhost{world.target_dir}/")
    assert run.code == 11, run.err


def test_edited_marker_fails_authentication(world: World) -> None:
    _backup(world)
    marker = world.target_dir / layout.REPO_MARKER
    doc = json.loads(marker.read_text())
    doc["created"] = "2020-01-01T00:00:00Z"
    marker.write_text(json.dumps(doc))
    run = world.cli("list", "--from", world.url)
    assert run.code == 4 and "failed authentication" in run.err


def test_format_1_repository_is_read_only(world: World) -> None:
    """An old repository (objects not bound to the repository) lists and restores, never takes writes."""
    _backup(world)
    key = load_key_file(world.key)
    target = LocalTarget(world.target_dir)
    repo = Repository.open(target, key)
    manifests = repo.manifests()
    v1 = Binding(key, None)
    marker = json.loads((world.target_dir / layout.REPO_MARKER).read_text())
    (world.target_dir / layout.REPO_MARKER).write_text(json.dumps(
        {k: marker[k] for k in ("btrsync", "repo_id", "key_id", "created")} | {"format": 1}))
    # re-seal every object as btrsync 0.1 did
    from btrsync.pipeline.seal import ChunkOpener, ChunkSealer
    for m in manifests:
        old = ChunkOpener(repo.binding, m.backup_id)
        sealer = ChunkSealer(v1, m.backup_id, 3)
        seg: dict[int, bytearray] = {}
        rows = []
        for i, rec in enumerate(list(table_records(repo, m))):
            raw = old.open(i, repo.read_frame(m.backup_id, i, rec), stored_xxh3=rec.stored_xxh3,
                           raw_size=rec.raw_size, raw_xxh3=rec.raw_xxh3)
            sealed = sealer((i, raw))
            buf = seg.setdefault(rec.segment, bytearray())
            rows.append([rec.segment, len(buf), len(sealed.frame), sealed.raw_size, sealed.stored_xxh3,
                         sealed.raw_xxh3])
            buf += sealed.frame
        for n, data in seg.items():
            target.put_bytes(layout.segment_key(m.backup_id, n), bytes(data))
        doc = json.loads(m.to_json())
        del doc["chunk_count"], doc["table"]
        doc["format"], doc["chunks"] = 1, rows
        key_name = layout.manifest_key(m.backup_id)
        target.put_bytes(key_name, v1.seal_manifest(key_name, json.dumps(doc).encode()))
    # this host saw the repository as format 2: presented as format 1 now, it is refused (a
    # format 1 marker has no MAC, so anyone could serve one); an old repository met for the first
    # time is what this test is about
    downgraded = world.cli("list", "--from", world.url)
    assert downgraded.code == 4 and "never downgraded" in downgraded.err, downgraded.err
    assert world.cli("state", "forget", world.url).code == 0
    listed = world.cli("list", "--from", world.url, "--check")
    assert listed.code == 0, listed.err
    assert world.receive("latest").code == 0
    world.snapshot()
    run = world.push()
    assert run.code == 2 and "format 1" in run.err and "btrsync init" in run.err
    assert world.cli("prune", "--from", world.url, "--keep-last", "1").code == 2


def test_rolled_back_target_is_reported_until_acknowledged(world: World, tmp_path: Path) -> None:
    _backup(world, 1)
    saved = tmp_path / "saved"
    shutil.copytree(world.target_dir, saved)
    _backup(world, 2)
    _backup(world, 3)
    gone = [b["id"] for b in world.listing()][1:]
    shutil.rmtree(world.target_dir)
    shutil.copytree(saved, world.target_dir)  # the storage was rolled back to an older copy
    run = world.cli("list", "--from", world.url)
    assert run.code == 0 and "gone without a prune" in run.err and all(g in run.err for g in gone[:1])
    run = world.receive("latest")
    assert "gone without a prune" in run.err  # never a silent "latest"
    world.snapshot()
    run = world.push("--json")
    assert run.code == 0, run.err
    assert sorted(run.json()["vanished"]) == sorted(gone), run.err
    assert world.cli("state", "acknowledge", world.url).code == 0
    assert "gone without" not in world.cli("list", "--from", world.url).err


def test_pruned_backups_are_not_reported_as_vanished(world: World) -> None:
    for seed in range(3):
        _backup(world, seed, "--max-chain", "0")
    assert world.cli("prune", "--from", world.url, "--keep-last", "1").code == 0
    run = world.cli("list", "--from", world.url)
    assert run.code == 0 and "gone without" not in run.err


def test_push_that_could_send_nothing_is_an_error(world: World, tmp_path: Path) -> None:
    run = world.push()  # a subvolume without any snapshot
    assert run.code == 1
    assert str(world.snapdir) in run.err and "data.<YYYYMMDDTHHMMSSZ>" in run.err
    for wrong in (tmp_path / "no-such-subvolume", Path("/tmp"), world.snapdir):  # mistyped, not btrfs, a plain dir
        run = world.cli("push", str(wrong), "--snapshot-dir", str(world.snapdir), "--to", world.url)
        assert run.code == 2 and "not a btrfs subvolume" in run.err, (wrong, run.err)


def test_commit_happens_inside_the_lease(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease goes only after the manifest: a clean/prune elsewhere never sees data without both."""
    events: list[str] = []
    original_put, original_delete = LocalTarget.put, LocalTarget.delete

    def put(self, key, parts):  # noqa: ANN001
        events.append(f"put {key.split('/')[0]}")
        return original_put(self, key, parts)

    def delete(self, key):  # noqa: ANN001
        events.append(f"delete {key.split('/')[0]}")
        return original_delete(self, key)

    monkeypatch.setattr(LocalTarget, "put", put)
    monkeypatch.setattr(LocalTarget, "delete", delete)
    _backup(world)
    assert events.index("put backups") < events.index("delete locks"), events


class _LeaseTime:
    """A fake clock for a ``Lease``: ``now`` is its time; ``wait`` is the refresh thread's timer,
    which reports each wait it starts and ends it (advancing the time by it) only on ``tick``."""

    def __init__(self, start: datetime) -> None:
        self.time = start
        self.waits: queue.Queue[float] = queue.Queue()
        self._ticks = threading.Semaphore(0)

    def now(self) -> datetime:
        return self.time

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        self.waits.put(seconds)
        while not stop.is_set():
            if self._ticks.acquire(timeout=0.01):
                self.time += timedelta(seconds=seconds)
                return False
        return True

    def tick(self) -> None:
        self._ticks.release()


def test_lease_is_refreshed_by_a_timer(tmp_path: Path) -> None:
    """The holder does nothing but hold it: its thread rewrites the lease every ``refresh_every``
    on the holder's clock, and the lease is gone after the block."""
    target = LocalTarget(tmp_path)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    fake = _LeaseTime(start)
    every = timedelta(minutes=5)

    def lease() -> dict[str, object]:
        return json.loads(target.read("locks/b-1.lease"))

    with Lease(target, "b-1", refresh_every=every, clock=fake.now, wait=fake.wait):
        stamps = []
        for _ in range(3):
            # the thread waits out one interval only after its write: the lease now is what it wrote
            assert fake.waits.get(timeout=30) == every.total_seconds()
            stamps.append((lease()["started"], lease()["refreshed"]))
            fake.tick()
    assert stamps == [(start.isoformat(), (start + i * every).isoformat()) for i in range(3)]
    assert not list(target.list("locks/"))


@pytest.mark.parametrize("meanwhile", ["taken over", "removed"])
def test_a_refresh_never_writes_over_a_lease_that_is_no_longer_its_own(tmp_path: Path, meanwhile: str) -> None:
    """A holder whose lease went stale (a suspended laptop) may find it taken over by another push
    of the backup, or removed by a clean: its next refresh reads it first, and then neither puts
    itself back over the other holder nor writes it anew; the lease stays lost, so no commit."""
    target = LocalTarget(tmp_path)
    fake = _LeaseTime(datetime(2030, 1, 1, tzinfo=UTC))
    theirs = {"backup_id": "b-1", "host": "elsewhere", "pid": 1, "boot_id": "b", "token": "theirs",
              "started": "2030-01-01T00:31:00+00:00", "refreshed": "2030-01-01T00:31:00+00:00"}
    with Lease(target, "b-1", clock=fake.now, wait=fake.wait) as lease:
        assert fake.waits.get(timeout=30) and lease.whose() is None
        if meanwhile == "taken over":
            target.put_bytes("locks/b-1.lease", json.dumps(theirs).encode())
        else:
            target.delete("locks/b-1.lease")
        fake.tick()
        deadline = datetime.now() + timedelta(seconds=30)
        while lease.lost is None and datetime.now() < deadline:
            threading.Event().wait(0.01)
        assert lease.lost is not None and lease.whose() == lease.lost
        assert ("another push or copy" if meanwhile == "taken over" else "is gone") in lease.lost
        after = [json.loads(target.read(o.key)) for o in target.list("locks/")]
        assert after == ([theirs] if meanwhile == "taken over" else [])
    assert [json.loads(target.read(o.key)) for o in target.list("locks/")] == after


@pytest.mark.parametrize("meanwhile", ["taken over", "removed", "unreadable"])
def test_a_push_whose_lease_is_no_longer_its_own_commits_nothing(world: World, monkeypatch: pytest.MonkeyPatch,
                                                                 meanwhile: str) -> None:
    """A push whose refreshes failed for 30 minutes may find its lease taken by another push of the
    same backup (another host, a copy job), removed (a clean judged it stale, or the other holder
    committed and released it) or replaced by one that does not parse: both may have written its
    keys, so it commits nothing.  The lease is read right before the commit, beside the other
    checks; another holder's lease is left."""
    from btrsync.catalog.layout import lease_key

    now = datetime.now(UTC).isoformat()
    theirs = {"host": "elsewhere", "pid": 1, "boot_id": "another-boot", "token": "theirs", "parent_id": None,
              "started": now, "refreshed": now}
    original = Repository.committed_and_left

    def meanwhile_(self, backup_id):  # noqa: ANN001, ANN202
        # (right after this push wrote its lease, before it sends)
        if meanwhile == "taken over":
            self.target.put_bytes(lease_key(backup_id), json.dumps({**theirs, "backup_id": backup_id}).encode())
        elif meanwhile == "removed":
            self.target.delete(lease_key(backup_id))
        else:
            self.target.put_bytes(lease_key(backup_id), b"{not json")
        return original(self, backup_id)

    monkeypatch.setattr(Repository, "committed_and_left", meanwhile_)
    tree.populate(world.subvol, 1)
    world.snapshot()
    run = world.push()
    assert run.code == 1, run.err
    assert {"taken over": "was taken over by another push or copy of it (host elsewhere",
            "removed": "lease is gone", "unreadable": "does not parse"}[meanwhile] in run.err, run.err
    assert world.listing() == []
    if meanwhile == "taken over":
        [lease] = (world.target_dir / "locks").iterdir()
        assert json.loads(lease.read_text())["token"] == "theirs"


def test_a_backup_another_live_holder_uploads_is_refused(world: World) -> None:
    tree.populate(world.subvol, 1)
    snap = world.snapshot()
    listing = world.cli("snapshot", "list", "--snapshot-dir", str(world.snapdir), "--json").json()
    uuid = listing[0]["uuid"]
    bid = layout.backup_id_for(snap.name, uuid)
    lease = {"backup_id": bid, "parent_id": None, "host": "other-host", "pid": 4242, "boot_id": "x",
             "token": "t", "refreshed": datetime.now(UTC).isoformat(), "started": "s"}
    (world.target_dir / "locks").mkdir()
    (world.target_dir / "locks" / f"{bid}.lease").write_text(json.dumps(lease))
    run = world.push()
    assert run.code == 11 and "other-host" in run.err, run.err
    assert not (world.target_dir / "data").exists()  # nothing of the other holder's was touched
    # the same host, another live process (a push with another state dir): refused as well
    lease.update(host=socket.gethostname(), pid=os.getppid(), boot_id=boot_id())
    (world.target_dir / "locks" / f"{bid}.lease").write_text(json.dumps(lease))
    assert world.push().code == 11


def _foreign_lease(bid: str, refreshed: datetime) -> bytes:
    return json.dumps({"backup_id": bid, "parent_id": None, "host": "other-host", "pid": 4242, "boot_id": "x",
                       "token": "t", "refreshed": refreshed.isoformat(), "started": "s"}).encode()


def test_leases_are_judged_on_the_targets_clock_not_their_writers(world: World) -> None:
    """A push on a host whose clock is an hour behind (a VM resumed before NTP caught up) wrote
    leases that looked an hour old: a clean on another host deleted the upload they guarded, and a
    second push of that backup started beside it.  A dead push of a host whose clock ran an hour
    ahead kept its lease "live" for that hour.  The lease file's own mtime, on the target's clock,
    decides now."""
    _backup(world)
    target = LocalTarget(world.target_dir)
    now = datetime.now(UTC)
    target.put_bytes("data/behind-1/000000", b"being written")
    target.put_bytes("locks/behind-1.lease", _foreign_lease("behind-1", now - timedelta(hours=1)))
    target.put_bytes("data/ahead-1/000000", b"abandoned")
    target.put_bytes("locks/ahead-1.lease", _foreign_lease("ahead-1", now + timedelta(hours=1)))
    last_written = (now - timedelta(minutes=31)).timestamp()  # its last refresh, 31 min ago
    for rel in ("data/ahead-1/000000", "locks/ahead-1.lease"):
        os.utime(world.target_dir / rel, (last_written, last_written))

    run = world.cli("clean", "--from", world.url, "--json")
    assert run.code == 0, run.err
    actions = {i["key"]: i["action"] for i in run.json()["items"]}
    assert actions == {"data/behind-1/000000": "kept: upload in progress",
                       "data/ahead-1/000000": "removed", "locks/ahead-1.lease": "removed"}, actions
    assert target.read("data/behind-1/000000") == b"being written"
    with pytest.raises(LockedError, match="other-host"):
        Lease(target, "behind-1").__enter__()
    run = world.cli("verify", "--from", world.url, "--level", "catalog", "--json")
    assert "locks/behind-1.lease" not in run.out

    # once the slow host's refreshes stop for STALE by the target's clock, its lease is stale too
    stopped = (now - timedelta(minutes=31)).timestamp()
    os.utime(world.target_dir / "locks/behind-1.lease", (stopped, stopped))
    run = world.cli("clean", "--from", world.url, "--json")
    actions = {i["key"]: i["action"] for i in run.json()["items"]}
    assert actions == {"data/behind-1/000000": "removed", "locks/behind-1.lease": "removed"}, actions


@pytest.mark.parametrize("content", [
    b"\x00garbage",
    json.dumps({"backup_id": "X", "host": "h", "pid": 1, "refreshed": "2026-01-01T00:00:00"}).encode(),
    json.dumps({"backup_id": "X", "host": "h", "pid": 10**30, "refreshed": "3026-01-01T00:00:00+00:00",
                "parent_id": None}).encode(),
    b"{" + b" " * 100_000 + b"}",
    b"[" * 4000,  # nested past the parser's recursion limit, under the size cap
])
def test_bad_leases_never_crash_prune_or_clean(world: World, content: bytes) -> None:
    _backup(world, 1, "--max-chain", "0")
    _backup(world, 2, "--max-chain", "0")
    (world.target_dir / "locks").mkdir(exist_ok=True)
    (world.target_dir / "locks" / "X.lease").write_bytes(content)
    run = world.cli("prune", "--from", world.url, "--keep-last", "1")
    assert run.code == 0, run.err
    run = world.cli("clean", "--from", world.url, "--json")
    assert run.code == 0, run.err
    items = run.json()["items"]
    future = b"3026" in content
    assert any(i["key"] == "locks/X.lease" for i in items) or future
    if future:  # clamped to now: live for STALE, kept (a clock far ahead is reported, not obeyed forever)
        assert (world.target_dir / "locks" / "X.lease").exists()


def test_prune_now_is_a_simulation_only(world: World) -> None:
    _backup(world)
    run = world.cli("prune", "--from", world.url, "--keep-last", "1", "--now", "2030-01-01T00:00:00Z")
    assert run.code == 2 and "--dry-run" in run.err
    run = world.cli("snapshot", "prune", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                    "--keep-last", "1", "--now", "2030-01-01T00:00:00Z")
    assert run.code == 2


def test_every_deletion_is_audited_before_and_after(world: World) -> None:
    _backup(world, 1)
    # a stray object of an interrupted attempt that cannot be resumed: the next push discards it
    world.snapshot()
    listing = world.cli("snapshot", "list", "--snapshot-dir", str(world.snapdir), "--json").json()
    bid = layout.backup_id_for(listing[-1]["name"], listing[-1]["uuid"])
    stray = world.target_dir / layout.segment_key(bid, 7)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left by a crashed push")
    assert world.push().code == 0
    assert not stray.exists()
    orphan = world.target_dir / "data" / "data.20200101T000000Z-deadbeef" / "000000"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    assert world.cli("clean", "--from", world.url).code == 0
    snap = world.snapshots[0]
    assert world.cli("snapshot", "delete", str(snap)).code == 0
    audit = read_audit(world.state)

    def phases(pred) -> list[str]:  # noqa: ANN001
        return [e["phase"] for e in audit if pred(e)]

    assert phases(lambda e: e["event"] == "delete-object" and e["key"] == str(stray.relative_to(world.target_dir))) \
        == ["intent", "done"]
    assert phases(lambda e: e["event"] == "clean" and e["key"].endswith("deadbeef/000000")) == ["intent", "done"]
    assert phases(lambda e: e["event"] == "delete-snapshot" and e["snapshot"] == snap.name) == ["intent", "done"]


def test_push_that_commits_some_and_fails_later_is_partial(world: World, monkeypatch) -> None:
    tree.populate(world.subvol, 1)
    world.snapshot()
    (world.subvol / "more").write_bytes(os.urandom(100_000))
    world.snapshot()
    original = SendProcess.chunks

    def failing_second(self, size):  # noqa: ANN001
        if self.parent is not None:
            raise OSError(5, "Input/output error")
        yield from original(self, size)

    monkeypatch.setattr(SendProcess, "chunks", failing_second)
    run = world.push()
    assert run.code == 3, run.err
    assert "1 earlier backup(s) of this run were committed" in run.err
    assert len(world.listing()) == 1


def test_snapshot_delete_of_some_paths_is_partial(world: World, tmp_path: Path) -> None:
    _backup(world)
    world.snapshot()
    run = world.cli("snapshot", "delete", str(world.snapshots[1]), str(tmp_path / "not-a-snapshot"))
    assert run.code == 3 and "deleted 1 of 2" in run.err


def test_read_only_target_is_reported_once(world: World, tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    with tmpfs(mnt):
        world.target_dir = mnt
        world.init()
        tree.populate(world.subvol, 1)
        world.snapshot()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        run = world.push()
        assert run.code == 1
        assert run.err.count("Read-only file system") == 1, run.err
        assert "Traceback" not in run.err


def test_clean_keeps_data_whose_manifest_directory_is_a_symlink(world: World, tmp_path: Path) -> None:
    """A symlink planted at backups/<id> hides the manifest from listings; its data must not then be
    deleted as orphaned."""
    _backup(world)
    [bid] = [b["id"] for b in world.listing()]
    real = tmp_path / "moved-manifest-dir"
    shutil.move(world.target_dir / "backups" / bid, real)
    (world.target_dir / "backups" / bid).symlink_to(real, target_is_directory=True)
    run = world.cli("clean", "--from", world.url, "--json")
    assert run.code == 0, run.err
    kept = [i for i in run.json()["items"] if i["kind"] == "orphaned data?"]
    assert kept and all(i["action"].startswith("kept: its manifest cannot be read") for i in kept)
    assert (world.target_dir / layout.data_prefix(bid)).is_dir()


def test_a_hostile_target_gets_errors_not_tracebacks(world: World) -> None:
    """Bytes from the target are input: a marker whose MAC is not ASCII made compare_digest raise
    TypeError, and a file whose name is no key (``backups/notes 2.txt``, left by an operator)
    made every catalog read fail with InvalidKey (exit 2) until it was removed."""
    _backup(world)
    marker = world.target_dir / layout.REPO_MARKER
    good = marker.read_bytes()
    doc = json.loads(good)
    doc["mac"] = "\u00e9" * 64
    marker.write_text(json.dumps(doc))
    run = world.cli("list", "--from", world.url)
    assert run.code == 4 and "failed authentication" in run.err and "Traceback" not in run.err, run.err
    marker.write_bytes(good)
    (world.target_dir / "backups" / "notes 2.txt").write_text("the operator's own note")
    run = world.cli("list", "--from", world.url, "--json")
    assert run.code == 0 and len(run.json()) == 1, run.err


def test_init_refuses_a_location_whose_only_files_are_no_objects(world: World, tmp_path: Path) -> None:
    """Listings skip names that are no keys (``My Documents``); init read such a directory as
    empty and put a repository into someone's files."""
    home = tmp_path / "home-of-someone"
    (home / "My Documents").mkdir(parents=True)
    (home / "My Documents" / "letter to the bank.odt").write_text("not a backup")
    run = world.cli("init", "--to", f"file://{home}")
    assert run.code == 10 and "is not empty" in run.err and "letter to the bank" in run.err, run.err
    assert sorted(p.name for p in home.iterdir()) == ["My Documents"]
