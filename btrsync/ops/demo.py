"""``btrsync demo``: the whole tour on throwaway loopback btrfs filesystems.

init -> snapshot -> full push -> change -> snapshot -> plan -> incremental push -> list -> restore into a
second filesystem -> compare restored and original trees.  Everything lives under one temporary
directory that is removed at the end (unless ``keep``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from btrsync.btrfs.runner import run_btrfs
from btrsync.btrfs.scratch import scratch_btrfs
from btrsync.btrfs.subvolume import is_subvolume
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import generate_key_file
from btrsync.errors import BtrsyncError
from btrsync.ops.push.run import push, raise_for_failures
from btrsync.ops.push.settings import PushSettings
from btrsync.ops.receive import receive
from btrsync.verify.treecompare import diff_trees
from btrsync.snapshots.store import create_snapshot
from btrsync.targets.local import LocalTarget
from btrsync.units import format_bytes

Say = Callable[[str], None]


@dataclass(slots=True)
class DemoResult:
    workdir: str
    backups: list[str] = field(default_factory=list)
    restored: str = ""
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.restored) and not self.differences


def _write_tree(root: Path, generation: int) -> None:
    (root / "docs").mkdir(exist_ok=True)
    for i in range(50):
        (root / "docs" / f"note-{i:02d}.txt").write_text(f"generation {generation} note {i}\n" * (20 + i))
    (root / "random.bin").write_bytes(os.urandom(4 << 20) if generation == 0 else
                                      (root / "random.bin").read_bytes()[: 2 << 20] + os.urandom(1 << 20))
    with open(root / "sparse.img", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"data in the middle of a hole")
    link = root / "latest-note"
    link.unlink(missing_ok=True)
    link.symlink_to(f"docs/note-{generation:02d}.txt")
    hard = root / "docs" / "hardlink-to-note-00.txt"
    if not hard.exists():
        os.link(root / "docs" / "note-00.txt", hard)
    os.setxattr(root / "random.bin", "user.btrsync.demo", f"gen{generation}".encode())


def run_demo(say: Say, *, keep: bool = False, workdir: Path | None = None) -> DemoResult:
    base = Path(tempfile.mkdtemp(prefix="btrsync-demo-", dir=workdir or "/var/tmp"))
    result = DemoResult(str(base))
    try:
        with ExitStack() as stack:
            _tour(stack, base, say, result)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return result


def _tour(stack: ExitStack, base: Path, say: Say, result: DemoResult) -> None:
    say(f"demo: working in {base} (two loopback btrfs filesystems, a directory target)")
    src = stack.enter_context(scratch_btrfs(base, "1G", "btrsync-demo-src"))
    dst = stack.enter_context(scratch_btrfs(base, "1G", "btrsync-demo-restore"))
    run_btrfs(["subvolume", "create", str(src / "data")], what="creating the demo subvolume")
    (src / ".snapshots").mkdir()
    target_dir = base / "target"
    target_dir.mkdir()
    key = generate_key_file(base / "demo.key")
    say(f"$ btrsync key generate {base / 'demo.key'}   (key id {key.key_id})")
    repo = Repository.init(LocalTarget(target_dir), key)
    say(f"$ btrsync init --to file://{target_dir}\n  repository {repo.repo_id} (key id {key.key_id})")
    settings = PushSettings(chunk_size=1 << 20, segment_size=8 << 20)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    for generation in range(2):
        _write_tree(src / "data", generation)
        snap = create_snapshot(src / "data", src / ".snapshots", t0 + timedelta(hours=generation))
        say(f"$ btrsync snapshot create {src / 'data'} --snapshot-dir {src / '.snapshots'}\n  {snap.path}")
        plan = push(src / "data", src / ".snapshots", repo, settings, dry_run=True).plan
        for step in plan.steps:
            say(f"$ btrsync push --dry-run ...\n  {step.snapshot.name}: {step.reason}")
        pushed = push(src / "data", src / ".snapshots", repo, settings)
        raise_for_failures(pushed)
        for r in pushed.results:
            result.backups.append(r.backup_id)
            say(f"$ btrsync push ... --to file://{target_dir}\n  {r.backup_id}: {r.kind}, "
                f"stream {format_bytes(r.stream_bytes)}, stored {format_bytes(r.stored_bytes)}")
    say("$ btrsync list --from file://" + str(target_dir))
    for m in repo.manifests():
        say(f"  {m.backup_id}  depth {m.depth}  parent {m.parent_id or '-'}  "
            f"{format_bytes(m.stream_bytes)} -> {format_bytes(m.stored_bytes)}")
    restored = receive(repo, "data@latest", dst)
    result.restored = restored.path
    say(f"$ btrsync receive data@latest --from file://{target_dir} --into {dst}")
    for link in restored.links:
        say(f"  {link.action} {link.backup_id} -> {link.path}")
    original = src / ".snapshots" / Path(restored.path).name
    if not is_subvolume(original):
        raise BtrsyncError(f"demo: expected snapshot {original} is missing")
    result.differences = diff_trees(original, Path(restored.path))
    say("compare: restored tree " + ("equals the original snapshot" if result.ok else
                                     "DIFFERS:\n  " + "\n  ".join(result.differences[:20])))
