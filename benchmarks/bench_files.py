"""Benchmark 10: the file index: ``ls`` of a large tree and a one-file restore's share of reads.

* ``btrsync ls BACKUP --recursive`` of a full backup of ``inc_files`` small files (100,000 in
  the full run, 5,000 in quick mode), as a CLI process writing to /dev/null: *cold* (no local
  listing cache: the chain's index objects are read, opened and replayed) and *warm* (the cached
  listing of the previous run).  Bar: warm under 2 s.  The listing is checked against the tree.
* ``btrsync restore BACKUP PATH`` of one 10 MiB file of a ``push_bytes`` backup (1 GiB in the full
  run; quick: 1 % of its 64 MiB), default push settings (4 MiB chunks): bytes read (chunks and
  indexes) against what the chain stores.  Bar: under 5 %.  The file must come back intact.

Standalone: run through ``python -m benchmarks.run --only files``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Bar,
    BenchResult,
    Config,
    MiB,
    Workspace,
    cli_argv,
    drop_caches,
    file_xxh3,
    make_small_tree,
    measure,
    repo_at,
    subvol_create,
    write_random_file,
)
from btrsync.crypto.keys import load_key_file
from btrsync.ops.push.run import push
from btrsync.ops.push.settings import PushSettings
from btrsync.snapshots.store import create_snapshot

WARM_LIMIT_S = 2.0
SHARE_LIMIT = 0.05


def _cli(ws: Workspace, state: Path, *args: str, stdout: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    argv = [*cli_argv(), "--key-file", str(ws.key_file), "--state-dir", str(state), *args]
    return subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, check=True)


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("files", "File index: ls of a large tree, one-file restore", work_label="entries")
    key = load_key_file(ws.key_file)
    out = ws.dst / "files"
    out.mkdir()
    state = ws.base / "files-state"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    # -- ls of a tree of many files
    log(f"  files: writing {cfg.inc_files:,} small files and pushing them")
    subvol = subvol_create(ws.src / "files-tree")
    res.metrics["tree"] = make_small_tree(subvol, cfg.inc_files)
    snapdir = ws.src / ".snapshots-files"
    snapdir.mkdir()
    snap = create_snapshot(subvol, snapdir, t0)
    target = out / "tree-repo"
    target.mkdir()
    (r,) = push(subvol, snapdir, repo_at(target, key), PushSettings()).results
    res.check("push of the tree", r.status == "ok", str(r.error or ""))
    res.metrics["index_stored_bytes"] = _index_bytes(target)
    res.metrics["tree_push_seconds"] = round(r.seconds, 2)  # the index is written during it
    res.metrics["tree_stream_bytes"] = r.stream_bytes
    url = f"file://{target}"
    cache = state / "files"

    def ls() -> dict[str, Any]:
        _cli(ws, state, "ls", snap.name, "--from", url, "--recursive")
        return {}

    for label, warm in (("ls cold (indexes read and replayed)", False), ("ls warm (cached listing)", True)):
        for rep in range(max(cfg.reps, 2)):
            if not warm:
                shutil.rmtree(cache, ignore_errors=True)
            else:
                ls()  # make sure the cache exists
            if cfg.drop_caches and not warm:
                drop_caches()
            record = measure(ls)
            record.update(rep=rep)
            res.runs.setdefault(label, []).append(record)
            log(f"  files: {label:<38} rep {rep + 1}  {record['seconds']:6.2f} s")
    listed = _cli(ws, state, "ls", snap.name, "--from", url, "--recursive", "--json", stdout=subprocess.PIPE)
    rows = json.loads(listed.stdout)
    files_listed = sum(1 for row in rows if row["type"] == "f")
    res.check("ls lists every file", files_listed == cfg.inc_files, f"{files_listed} of {cfg.inc_files}")
    res.work_bytes = len(rows)
    warm_s = res.median("ls warm (cached listing)")
    res.metrics["entries"] = len(rows)
    res.metrics["ls_warm_seconds"] = warm_s
    res.metrics["ls_cold_seconds"] = res.median("ls cold (indexes read and replayed)")
    res.bars.append(Bar(f"ls --recursive of {len(rows):,} entries, warm", warm_s, WARM_LIMIT_S, "<=", "s",
                        "the whole CLI process, Python start included"))

    # -- one file out of a large backup
    big = subvol_create(ws.src / "files-big")
    bigsnaps = ws.src / ".snapshots-files-big"
    bigsnaps.mkdir()
    total = max(cfg.push_bytes, 256 * MiB)  # quick: 4 MiB chunks of 64 MiB could never be under 5 %
    one = 10 * MiB if total >= 1024 * MiB else max(MiB, total // 100)
    log(f"  files: writing {total / MiB:.0f} MiB with one {one / MiB:.1f} MiB file to restore")
    filler = 64 * MiB
    written = 0
    n = 0
    while written + one < total:
        size = min(filler, total - one - written)
        write_random_file(big / f"filler-{n:03d}", size)
        written += size
        n += 1
        if n == 3:
            (big / "dir").mkdir()
            want = write_random_file(big / "dir" / "wanted.bin", one)
    if n < 3:
        (big / "dir").mkdir()
        want = write_random_file(big / "dir" / "wanted.bin", one)
    bsnap = create_snapshot(big, bigsnaps, t0)
    btarget = out / "big-repo"
    btarget.mkdir()
    (r,) = push(big, bigsnaps, repo_at(btarget, key), PushSettings()).results
    res.check("push of the large backup", r.status == "ok", str(r.error or ""))
    to = ws.rst / "files-restore"
    to.mkdir()
    if cfg.drop_caches:
        drop_caches()
    doc: dict[str, Any] = {}

    def restore_one() -> dict[str, Any]:
        done = _cli(ws, state, "restore", bsnap.name, "dir/wanted.bin", "--from", f"file://{btarget}", "--to",
                    str(to), "--json", stdout=subprocess.PIPE)
        doc.update(json.loads(done.stdout))
        return {}

    record = measure(restore_one)
    res.runs["restore of one file"] = [record]
    got = to / bsnap.name / "dir" / "wanted.bin"
    res.check("the file comes back intact", got.exists() and file_xxh3(got) == want)
    share = doc.get("fetched_share")
    res.metrics.update(restore_file_bytes=one, restore_backup_stored_bytes=doc.get("stored_bytes"),
                       restore_fetched_bytes=doc.get("fetched_bytes"), restore_index_bytes=doc.get("index_bytes"),
                       restore_fetched_chunks=doc.get("fetched_chunks"), restore_fetched_share=share,
                       restore_seconds=record["seconds"])
    res.bars.append(Bar(f"bytes read restoring {one / MiB:.1f} MiB of {total / MiB:.0f} MiB", share,
                        SHARE_LIMIT, "<=", "share", "chunks + file indexes / stored bytes of the chain"))
    log(f"  files: one file: read {doc.get('fetched_bytes')} + {doc.get('index_bytes')} of "
        f"{doc.get('stored_bytes')} bytes ({share})")
    return res


def _index_bytes(target: Path) -> int:
    return sum(p.stat().st_size for p in target.glob("data/*/files-*"))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run it with: python -m benchmarks.run --only files")
