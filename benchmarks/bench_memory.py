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
    return res
