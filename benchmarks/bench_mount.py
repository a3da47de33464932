"""Benchmark 14: ``btrsync mount``: time to first byte, and what reading one file fetches.

* A full backup of ``inc_files`` small files (100,000 in the full run, 5,000 in quick mode) plus
  one 1 MiB file twelve directories deep, mounted by a ``btrsync mount`` process: the time from
  ``open`` to the first byte of that deep file, right after the mount (cold: the backup's file
  index is read and its chain replayed, then the file's chunks fetched), and of a second file of
  the same backup (warm: the tree is kept).  Also the time until the mount answers, and, for
  comparison, ``btrsync ls`` of the deep directory without a cached listing (the same replay),
  and the mount process's peak RSS with that backup's tree in memory.
* One file of a large backup (as benchmark 10: 10 MiB of 1 GiB; quick: 1 % of 256 MiB), read whole
  through the mount: the stored bytes of chunks and file indexes it fetched (the mount logs them
  at unmount) against ``btrsync restore BACKUP PATH`` of the same file.  Bar: the mount reads at
  most 10 % more than the restore.  Both copies must equal the original.  And 4 KiB from the
  middle of a 64 MiB file of it: the chunks read (one ``--read-window``, 16 MiB, not the file);
  and that file read whole (window after window): time and chunks read.

Standalone: run through ``python -m benchmarks.run --only mount``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
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
    repo_at,
    subvol_create,
    write_random_file,
)
from btrsync.crypto.keys import load_key_file
from btrsync.mountinfo import mount_points
from btrsync.ops.push.run import push
from btrsync.ops.push.settings import PushSettings
from btrsync.snapshots.store import create_snapshot

RATIO_LIMIT = 1.10
DEPTH = 12
_FIGURES = re.compile(r"read for contents: (\d+) stored bytes in (\d+) chunks for (\d+) files; "
                      r"file indexes: (\d+) stored bytes")


class _Mount:
    """A ``btrsync mount`` process at ``mp``, started ready and unmounted by ``stop``."""

    def __init__(self, ws: Workspace, state: Path, url: str, mp: Path) -> None:
        mp.mkdir(exist_ok=True)
        self.mp, self.err = mp, mp.with_suffix(".stderr")
        argv = [*cli_argv(), "--key-file", str(ws.key_file), "--state-dir", str(state), "-v", "mount",
                "--from", url, str(mp)]
        t0 = time.monotonic()
        with open(self.err, "w") as f:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
        while str(mp) not in mount_points() or "mounted" not in self.err.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"btrsync mount exited {self.proc.returncode}: {self.err.read_text()}")
            time.sleep(0.01)
        self.ready_seconds = time.monotonic() - t0

    def peak_rss(self) -> int:
        """The mount process's peak resident set (VmHWM), bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> dict[str, int]:
        rss = self.peak_rss()
        subprocess.run(["fusermount3", "-u", str(self.mp)], check=False, capture_output=True)
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], check=False, capture_output=True)
        m = _FIGURES.search(self.err.read_text())
        if m is None:
            return {}
        return {**dict(zip(("chunk_bytes", "chunks", "files", "index_bytes"), map(int, m.groups()), strict=True)),
                "peak_rss": rss}


def _first_byte(path: Path) -> float:
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    return time.monotonic() - t0


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("mount", "btrsync mount: first byte deep in a large tree, bytes read for one file",
                      work_label="entries")
    key = load_key_file(ws.key_file)
    out = ws.dst / "mount"
    out.mkdir()
    state = ws.base / "mount-state"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    # -- time to first byte of a deep file in a tree of many files
    log(f"  mount: writing {cfg.inc_files:,} small files and one deep file, pushing them")
    subvol = subvol_create(ws.src / "mount-tree")
    res.metrics["tree"] = make_small_tree(subvol, cfg.inc_files)
    deep = subvol.joinpath(*(f"level-{n:02d}" for n in range(DEPTH)))
    deep.mkdir(parents=True)
    want_deep = write_random_file(deep / "deep.bin", MiB)
    snapdir = ws.src / ".snapshots-mount"
    snapdir.mkdir()
    snap = create_snapshot(subvol, snapdir, t0)
    target = out / "tree-repo"
    target.mkdir()
    (r,) = push(subvol, snapdir, repo_at(target, key), PushSettings()).results
    res.check("push of the tree", r.status == "ok", str(r.error or ""))
    url = f"file://{target}"
    rel = deep.relative_to(subvol) / "deep.bin"
    for rep in range(max(cfg.reps, 2)):
        if cfg.drop_caches:
            drop_caches()
        m = _Mount(ws, state, url, out / "mnt")
        try:
            base = m.mp / "mount-tree" / snap.name
            cold = _first_byte(base / rel)
            warm = _first_byte(base / "dir0003" / "file000600.txt")
            if rep == 0:
                res.check("the deep file reads intact through the mount", file_xxh3(base / rel) == want_deep)
        finally:
            figures = m.stop()
        res.runs.setdefault("mount ready", []).append({"seconds": m.ready_seconds, "rep": rep})
        res.runs.setdefault("first byte, deep file, cold", []).append({"seconds": cold, "rep": rep, **figures})
        res.runs.setdefault("first byte, another file, tree kept", []).append({"seconds": warm, "rep": rep})
        log(f"  mount: ready {m.ready_seconds:5.2f} s, first byte deep {cold:6.2f} s, next file {warm:6.3f} s")
    # the same replay, as 'btrsync ls' does it without a cached listing: what the first byte waits for
    shutil.rmtree(state / "files", ignore_errors=True)
    t = time.monotonic()
    subprocess.run([*cli_argv(), "--key-file", str(ws.key_file), "--state-dir", str(state), "ls", snap.name,
                    str(rel.parent), "--from", url], check=True, capture_output=True)
    res.runs["ls of the deep directory, cold"] = [{"seconds": time.monotonic() - t}]
    res.work_bytes = cfg.inc_files
    res.metrics.update(entries=cfg.inc_files, depth=DEPTH,
                       ready_seconds=res.median("mount ready"),
                       first_byte_cold_seconds=res.median("first byte, deep file, cold"),
                       first_byte_warm_seconds=res.median("first byte, another file, tree kept"),
                       ls_cold_seconds=res.median("ls of the deep directory, cold"),
                       peak_rss_with_tree=max(r.get("peak_rss", 0) for r in res.runs["first byte, deep file, cold"]))

    # -- bytes fetched for one file: mount against selective restore
    big = subvol_create(ws.src / "mount-big")
    bigsnaps = ws.src / ".snapshots-mount-big"
    bigsnaps.mkdir()
    total = max(cfg.push_bytes, 256 * MiB)
    one = 10 * MiB if total >= 1024 * MiB else max(MiB, total // 100)
    log(f"  mount: writing {total / MiB:.0f} MiB with one {one / MiB:.1f} MiB file")
    written, n = 0, 0
    want = ""
    while written + one < total:
        size = min(64 * MiB, total - one - written)
        write_random_file(big / f"filler-{n:03d}", size)
        written += size
        n += 1
        if n == 3:
            (big / "dir").mkdir()
            want = write_random_file(big / "dir" / "wanted.bin", one)
    if not want:
        (big / "dir").mkdir()
        want = write_random_file(big / "dir" / "wanted.bin", one)
    bsnap = create_snapshot(big, bigsnaps, t0)
    btarget = out / "big-repo"
    btarget.mkdir()
    (r,) = push(big, bigsnaps, repo_at(btarget, key), PushSettings()).results
    res.check("push of the large backup", r.status == "ok", str(r.error or ""))
    burl = f"file://{btarget}"
    to = ws.rst / "mount-restore"
    to.mkdir()
    done = subprocess.run([*cli_argv(), "--key-file", str(ws.key_file), "--state-dir", str(state), "restore",
                           bsnap.name, "dir/wanted.bin", "--from", burl, "--to", str(to), "--json"],
                          capture_output=True, text=True, check=True)
    doc: dict[str, Any] = json.loads(done.stdout)
    res.check("the restored file is intact", file_xxh3(to / bsnap.name / "dir" / "wanted.bin") == want)
    m = _Mount(ws, state, burl, out / "mnt-big")
    try:
        t = time.monotonic()
        got = file_xxh3(m.mp / "mount-big" / bsnap.name / "dir" / "wanted.bin")
        read_s = time.monotonic() - t
    finally:
        figures = m.stop()
    res.check("the file read through the mount is intact", got == want)
    res.check("the mount reported what it read", bool(figures))
    restore_read = int(doc["fetched_bytes"]) + int(doc["index_bytes"])
    mount_read = figures.get("chunk_bytes", 0) + figures.get("index_bytes", 0)
    ratio = mount_read / max(restore_read, 1)
    res.runs["read one file through the mount"] = [{"seconds": read_s, **figures}]
    res.metrics.update(file_bytes=one, backup_stored_bytes=doc["stored_bytes"],
                       restore_chunk_bytes=doc["fetched_bytes"], restore_index_bytes=doc["index_bytes"],
                       mount_chunk_bytes=figures.get("chunk_bytes"), mount_index_bytes=figures.get("index_bytes"),
                       mount_share=round(mount_read / max(int(doc["stored_bytes"]), 1), 4),
                       restore_share=doc.get("fetched_share"), mount_over_restore=round(ratio, 3),
                       mount_read_seconds=round(read_s, 3))
    # a few bytes in the middle of a 64 MiB file: the chunks of one --read-window (16 MiB), not the file
    filler = big / "filler-000"
    m = _Mount(ws, state, burl, out / "mnt-part")
    try:
        with open(m.mp / "mount-big" / bsnap.name / "filler-000", "rb") as f:
            f.seek(filler.stat().st_size // 2)
            part = f.read(4096)
        with open(filler, "rb") as f:
            f.seek(filler.stat().st_size // 2)
            res.check("4 KiB from the middle of a large file read right", part == f.read(4096))
    finally:
        partial = m.stop()
    res.metrics.update(partial_file_bytes=filler.stat().st_size, partial_chunk_bytes=partial.get("chunk_bytes"),
                       partial_chunks=partial.get("chunks"))
    # the whole of it, sequentially, window after window (cp)
    if cfg.drop_caches:
        drop_caches()
    m = _Mount(ws, state, burl, out / "mnt-whole")
    try:
        t = time.monotonic()
        whole = file_xxh3(m.mp / "mount-big" / bsnap.name / "filler-000")
        whole_s = time.monotonic() - t
    finally:
        figures_whole = m.stop()
    res.check("a large file read whole through the mount is intact", whole == file_xxh3(filler))
    res.runs["read a 64 MiB file whole, by windows"] = [{"seconds": whole_s, "bytes": filler.stat().st_size,
                                                          **figures_whole}]
    res.metrics.update(whole_seconds=round(whole_s, 3), whole_chunk_bytes=figures_whole.get("chunk_bytes"),
                       whole_mib_s=round(filler.stat().st_size / MiB / max(whole_s, 1e-9), 1))
    log(f"  mount: {filler.stat().st_size / MiB:.0f} MiB file read whole in {whole_s:.2f} s, "
        f"{figures_whole.get('chunk_bytes')} bytes of chunks")
    log(f"  mount: 4 KiB of a {filler.stat().st_size / MiB:.0f} MiB file: read {partial.get('chunk_bytes')} bytes "
        f"of chunks ({partial.get('chunks')})")
    res.bars.append(Bar(f"bytes read for one {one / MiB:.1f} MiB file: mount / selective restore", ratio,
                        RATIO_LIMIT, "<=", "ratio", "chunks + file indexes, both read cold"))
    log(f"  mount: one file: mount read {mount_read} bytes, restore {restore_read} ({ratio:.3f}x)")
    return res


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run it with: python -m benchmarks.run --only mount")
