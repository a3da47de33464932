"""Benchmark 4: peak memory (RSS) of ``btrsync push`` and ``btrsync receive`` against the stream size.

For each stream size a subvolume holding one file of incompressible bytes (AES-CTR keystream, so
the stream is as large as the file and zstd gives up on every chunk) is snapshotted, then the CLI
runs as a child process, exactly as a user runs it (config file, key file, ``--json``):

    btrsync --config CFG push SUBVOL --snapshot-dir DIR --to file://TARGET --json
    btrsync --config CFG receive latest --from file://TARGET --into DIR --json

Peak RSS is the Python process's own ``VmHWM`` (/proc/PID/status), polled every 50 ms until it
exits (the high-water mark only grows, so the last reading is the peak up to 50 ms before exit);
``wait4``'s ``ru_maxrss`` is recorded too (that one also covers the ``btrfs`` child).  The point:
the peak must not grow with the stream.

Chunk-size sweep: the same snapshot of one stream size (quick: 64 MiB, full: 1 GiB) is pushed
again with ``[push] chunk_size`` 1M, 256K and 64K (to a target of its own each) and received;
the 4 MiB point is the default run above.  Smaller chunks mean more records per segment index
(2,048 at 64 KiB in a 128 MiB segment) and more frames in flight per MiB, so the peak should
fall with the chunk size, never grow.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    Bar,
    BenchResult,
    Config,
    GiB,
    MiB,
    Workspace,
    cli_argv,
    drop_caches,
    file_xxh3,
    remove_tree,
    run,
    subvol_create,
    subvol_delete,
    write_random_file,
)
from btrsync.snapshots.store import create_snapshot

LIMIT_MB = 300  # the bar: 300 MB (10^6 bytes)
SWEEP_CHUNKS = ("4M", "1M", "256K", "64K")  # 4M: the default run of that stream size
SWEEP_STREAM = {"quick": 64 * MiB, "full": 1 * GiB}


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def run_sampled(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv``; poll its VmHWM every 50 ms; return peak, ru_maxrss, wall time, output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    hwm = rss = samples = 0
    while True:
        st = _status_kib(proc.pid)
        if st:
            hwm, rss = max(hwm, st.get("VmHWM", 0)), max(rss, st.get("VmRSS", 0))
            samples += 1
        pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(_status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.stdout.close(), proc.stderr.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {stderr.decode()[-2000:]}")
    return {"seconds": seconds, "vm_hwm_bytes": hwm * 1024, "vm_rss_max_bytes": rss * 1024,
            "ru_maxrss_bytes": usage.ru_maxrss * 1024, "samples": samples,
            "output": json.loads(stdout or b"{}")}


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("memory", "Peak RSS of push and receive against the stream size")
    state = ws.base / "state"
    conf = ws.base / "bench-config.toml"
    conf.write_text(f'key_file = "{ws.key_file}"\nstate_dir = "{state}"\n\n[push]\n'
                    '# defaults: chunk_size 4M, segment_size 128M, zstd_level 3, workers min(4, nproc)\n')
    cli = [*cli_argv(), "--config", str(conf)]
    rows = []
    sweep: list[dict[str, Any]] = []
    sweep_size = SWEEP_STREAM.get(cfg.mode, cfg.memory_streams[0])
    if sweep_size not in cfg.memory_streams:
        sweep_size = cfg.memory_streams[0]
    for size in cfg.memory_streams:
        label = f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"
        log(f"  memory: {label} stream: writing incompressible data")
        subvol = subvol_create(ws.src / f"mem-{size >> 20}M")
        digest = write_random_file(subvol / "random.bin", size)
        snapdir = ws.src / f".snapshots-mem-{size >> 20}M"
        snapdir.mkdir()
        snap = create_snapshot(subvol, snapdir)
        target = ws.dst / f"mem-{size >> 20}M"
        target.mkdir()
        into = ws.rst / f"mem-{size >> 20}M"
        into.mkdir()
        run([*cli, "init", "--to", f"file://{target}"])
        drop_caches()
        pushed = run_sampled([*cli, "push", str(subvol), "--snapshot-dir", str(snapdir),
                              "--to", f"file://{target}", "--json"])
        (backup,) = pushed["output"]["backups"]
        log(f"  memory: push {label}: peak RSS {pushed['vm_hwm_bytes'] / MiB:.1f} MiB, "
            f"{pushed['seconds']:.1f} s")
        drop_caches()
        received = run_sampled([*cli, "receive", "latest", "--from", f"file://{target}",
                                "--into", str(into), "--json"])
        log(f"  memory: receive {label}: peak RSS {received['vm_hwm_bytes'] / MiB:.1f} MiB, "
            f"{received['seconds']:.1f} s")
        restored = into / snap.path.name / "random.bin"
        res.check(f"{label}: restored file is byte-identical", file_xxh3(restored) == digest)
        for op, rec in (("push", pushed), ("receive", received)):
            rec.pop("output")
            rows.append({"op": op, "stream_bytes": backup["stream_bytes"], "label": label,
                         "mib_s": backup["stream_bytes"] / MiB / rec["seconds"], **rec})
        subvol_delete(into / snap.path.name)
        if size == sweep_size:
            sweep += [{**r, "chunk_size": SWEEP_CHUNKS[0]} for r in rows[-2:]]
            for chunk in SWEEP_CHUNKS[1:]:
                sweep += _sweep_point(ws, state, chunk, subvol, snapdir, snap.path.name, digest, label, res, log)
        remove_tree(target)
        subvol_delete(snap.path)
        subvol_delete(subvol)
    res.metrics["rows"] = rows
    for op in ("push", "receive"):
        mine = [r for r in rows if r["op"] == op]
        peak = max(r["vm_hwm_bytes"] for r in mine)
        growth = mine[-1]["vm_hwm_bytes"] - mine[0]["vm_hwm_bytes"]
        res.metrics[f"{op}_growth_bytes"] = growth
        res.bars.append(Bar(f"peak RSS of {op} (any stream size)", peak / 1e6, LIMIT_MB, "<=", "MB",
                            f"{mine[0]['label']} -> {mine[-1]['label']}: "
                            f"{growth / MiB:+.1f} MiB"))
    res.metrics["chunk_sweep"] = sweep
    if sweep:
        res.notes.append(f"chunk-size sweep, {sweep[0]['label']} stream (peak RSS, VmHWM):\n" + "\n".join(
            f"  chunk {r['chunk_size']:>4}: {r['op']:<7} {r['vm_hwm_bytes'] / MiB:6.1f} MiB "
            f"({r['vm_hwm_bytes'] / 1e6:5.1f} MB), {r['seconds']:6.2f} s, {r['mib_s']:6.1f} MiB/s"
            for r in sweep))
        for op in ("push", "receive"):
            mine = [r for r in sweep if r["op"] == op]
            top = max(mine, key=lambda r: r["vm_hwm_bytes"])
            res.bars.append(Bar(f"peak RSS of {op}, chunk sizes {' to '.join(SWEEP_CHUNKS[::3])}",
                                top["vm_hwm_bytes"] / 1e6, LIMIT_MB, "<=", "MB",
                                f"highest at chunk_size {top['chunk_size']}"))
    return res


def _sweep_point(ws: Workspace, state: Any, chunk: str, subvol: Any, snapdir: Any, snap_name: str,
                 digest: str, label: str, res: BenchResult, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Push the same snapshot with ``chunk_size = chunk`` to a target of its own, receive it,
    compare; peak RSS of both."""
    tag = f"sweep-{chunk}"
    conf = ws.base / f"bench-config-{tag}.toml"
    conf.write_text(f'key_file = "{ws.key_file}"\nstate_dir = "{state}"\n\n[push]\nchunk_size = "{chunk}"\n')
    cli = [*cli_argv(), "--config", str(conf)]
    target = ws.dst / tag
    target.mkdir()
    into = ws.rst / tag
    into.mkdir()
    try:
        run([*cli, "init", "--to", f"file://{target}"])
        drop_caches()
        pushed = run_sampled([*cli, "push", str(subvol), "--snapshot-dir", str(snapdir),
                              "--to", f"file://{target}", "--json"])
        (backup,) = pushed["output"]["backups"]
        drop_caches()
        received = run_sampled([*cli, "receive", "latest", "--from", f"file://{target}",
                                "--into", str(into), "--json"])
        res.check(f"{label}, chunk_size {chunk}: restored file is byte-identical",
                  file_xxh3(into / snap_name / "random.bin") == digest)
        log(f"  memory: chunk {chunk}: push {pushed['vm_hwm_bytes'] / MiB:.1f} MiB, "
            f"receive {received['vm_hwm_bytes'] / MiB:.1f} MiB")
        out = []
        for op, rec in (("push", pushed), ("receive", received)):
            rec.pop("output")
            out.append({"op": op, "chunk_size": chunk, "stream_bytes": backup["stream_bytes"], "label": label,
                        "mib_s": backup["stream_bytes"] / MiB / rec["seconds"], **rec})
        return out
    finally:
        subvol_delete(into / snap_name)
        remove_tree(into)
        remove_tree(target)
