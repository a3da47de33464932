"""Benchmark 1: full push of a dataset from a loopback btrfs to a directory target.

Contenders, on the same read-only snapshot, page cache dropped before every run:

* btrsync ``push()`` (in-process, default ``PushSettings``) into an empty directory target;
* ``btrfs send SNAP > /dev/null``: the physical limit (kernel reading and serialising the snapshot);
* ``btrfs send SNAP > FILE; sync FILE`` on the target filesystem: the I/O floor (reading the source
  and writing the raw stream durably, nothing else);
* the pipeline btrbk's raw target runs: ``btrfs send | zstd -3 -T0 | openssl enc -aes-256-ctr``;
* btrbk itself (``btrbk run``, raw target, zstd -3 -T0, openssl_enc aes-256-ctr), if installed.

Every contender that writes makes its output durable inside the timed region (btrsync fsyncs each
segment; the pipelines end with ``sync FILE`` / ``sync -f DIR``).  The send flags of the shell
pipelines are btrsync's (protocol 2 with --compressed-data when supported) so all read the same
stream; btrbk 0.32 always sends protocol 1 (identical bytes for an uncompressed filesystem).
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import pyspy
from benchmarks.common import (
    Bar,
    BenchResult,
    Config,
    Contender,
    MiB,
    Workspace,
    alternate,
    drop_caches,
    make_dataset,
    measure,
    remove_tree,
    repo_at,
    sh,
    subvol_create,
    subvol_delete,
)
from btrsync.btrfs.send import best_send_options
from btrsync.crypto.keys import load_key_file
from btrsync.ops.push.run import push
from btrsync.ops.push.settings import PushSettings
from btrsync.snapshots.store import create_snapshot

PIPELINE = "send | zstd -3 -T0 | openssl (btrbk raw)"
RAW = "btrfs send > /dev/null"
FLOOR = "btrfs send > FILE; sync (I/O floor)"
BTRBK = "btrbk run (raw target)"


def setup(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """The dataset and its snapshot (made once, shared with the restore benchmark)."""
    if "push" in ws.shared:
        return ws.shared["push"]
    log(f"  push: writing a {cfg.push_bytes / MiB:.0f} MiB dataset (half random, half text)")
    subvol = subvol_create(ws.src / "data")
    stats = make_dataset(subvol, cfg.push_bytes)
    snapdir = ws.src / ".snapshots"
    snapdir.mkdir()
    snap = create_snapshot(subvol, snapdir)
    out = ws.dst / "push"
    out.mkdir()
    ws.shared["push"] = shared = {"subvol": subvol, "snapdir": snapdir, "snapshot": snap.path,
                                  "out": out, "dataset": stats}
    return shared


def send_flags() -> str:
    return " ".join(best_send_options().argv())


def pipeline_cmd(ws: Workspace, snapshot: Path, out: Path, parent: Path | None = None) -> str:
    p = f"-p {parent} " if parent else ""
    return (f"btrfs send -q {send_flags()} {p}{snapshot} | zstd -3 -T0 -q -c | "
            f"openssl enc -aes-256-ctr -pass file:{ws.pass_file} -pbkdf2 > {out} && sync {out}")


def btrbk_available() -> bool:
    return shutil.which("btrbk") is not None


def btrbk_conf(ws: Workspace, subvol: Path, target_dir: Path, snapdir_name: str) -> Path:
    conf = ws.base / f"btrbk-{target_dir.name}.conf"
    conf.write_text(f"""# written by benchmarks/bench_push.py: a raw target as btrbk.conf(5) describes it
timestamp_format long
snapshot_preserve_min latest
snapshot_preserve no
target_preserve_min all
target_preserve no
volume {subvol.parent}
  snapshot_dir {snapdir_name}
  subvolume {subvol.name}
    target raw {target_dir}
      raw_target_compress zstd
      raw_target_compress_level 3
      raw_target_compress_threads 0
      raw_target_encrypt openssl_enc
      openssl_ciphername aes-256-ctr
      openssl_iv_size 16
      openssl_keyfile {ws.hex_key_file}
""")
    return conf


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("push", "Full push of a dataset to a directory target")
    shared = setup(ws, cfg, log)
    subvol, snapdir, snap, out = shared["subvol"], shared["snapdir"], shared["snapshot"], shared["out"]
    key = load_key_file(ws.key_file)
    settings = PushSettings()
    res.metrics["dataset"] = shared["dataset"]
    res.metrics["settings"] = {"workers": settings.workers, "chunk_size": settings.chunk_size,
                               "zstd_level": settings.zstd_level, "send_flags": send_flags()}
    last = cfg.reps - 1
    stored: dict[str, int] = {}

    # -- btrsync
    def bs_dir(rep: int) -> Path:
        return out / f"btrsync-{rep}"

    def bs_run(rep: int) -> dict[str, Any]:
        result = push(subvol, snapdir, repo_at(bs_dir(rep), key), settings)
        (r,) = result.results
        if r.status != "ok":
            raise RuntimeError(f"btrsync push failed: {r.error}")
        res.work_bytes = r.stream_bytes
        stored["btrsync"] = r.stored_bytes
        return {"stream_bytes": r.stream_bytes, "stored_bytes": r.stored_bytes}

    def bs_after(rep: int) -> None:
        if rep == last:
            shared["btrsync_target"] = bs_dir(rep)
        else:
            remove_tree(bs_dir(rep))

    # -- raw send
    def raw_run(rep: int) -> None:
        sh(f"btrfs send -q {send_flags()} {snap} > /dev/null")

    # -- the I/O floor: the raw stream written to the target filesystem and made durable
    def floor_file(rep: int) -> Path:
        return out / f"raw-{rep}.btrfs"

    def floor_run(rep: int) -> None:
        sh(f"btrfs send -q {send_flags()} {snap} > {floor_file(rep)} && sync {floor_file(rep)}")

    def floor_after(rep: int) -> None:
        if rep == last:
            shared["raw_file"] = floor_file(rep)  # the restore benchmark's floor reads it
        else:
            floor_file(rep).unlink()

    # -- the pipeline
    def pipe_file(rep: int) -> Path:
        return out / f"pipeline-{rep}.btrfs.zst.enc"

    def pipe_run(rep: int) -> dict[str, Any]:
        sh(pipeline_cmd(ws, snap, pipe_file(rep)))
        stored[PIPELINE] = pipe_file(rep).stat().st_size
        return {"stored_bytes": stored[PIPELINE]}

    def pipe_after(rep: int) -> None:
        if rep == last:
            shared["pipeline_file"] = pipe_file(rep)
        else:
            pipe_file(rep).unlink()

    contenders = [
        Contender("btrsync", bs_run, before=lambda rep: bs_dir(rep).mkdir(), after=bs_after),
        Contender(RAW, raw_run),
        Contender(FLOOR, floor_run, after=floor_after),
        Contender(PIPELINE, pipe_run, after=pipe_after),
    ]

    # -- btrbk
    if btrbk_available():
        btrbk_snaps = subvol.parent / ".btrbk"
        btrbk_snaps.mkdir(exist_ok=True)

        def bk_dir(rep: int) -> Path:
            return out / f"btrbk-{rep}"

        def bk_before(rep: int) -> None:
            bk_dir(rep).mkdir()
            btrbk_conf(ws, subvol, bk_dir(rep), btrbk_snaps.name)

        def bk_run(rep: int) -> dict[str, Any]:
            conf = ws.base / f"btrbk-{bk_dir(rep).name}.conf"
            sh(f"btrbk -c {conf} -q run && sync -f {bk_dir(rep)}")
            files = [p for p in bk_dir(rep).iterdir() if p.name.endswith(".encrypted")]
            if len(files) != 1:
                raise RuntimeError(f"btrbk wrote {[p.name for p in bk_dir(rep).iterdir()]}")
            info = (bk_dir(rep) / (files[0].name + ".info")).read_text()
            if "INCOMPLETE=0" not in info:
                raise RuntimeError("btrbk's raw backup is marked incomplete")
            stored[BTRBK] = files[0].stat().st_size
            return {"stored_bytes": stored[BTRBK]}

        def bk_after(rep: int) -> None:
            for s in btrbk_snaps.iterdir():
                subvol_delete(s)
            remove_tree(bk_dir(rep))

        contenders.append(Contender(BTRBK, bk_run, before=bk_before, after=bk_after))
    else:
        res.notes.append("btrbk is not installed (apt-get install -y btrbk): its row is missing")

    alternate(res, contenders, cfg.reps, drop=cfg.drop_caches, log=log)
    res.metrics["stored_bytes"] = stored
    res.metrics["compression_ratio"] = {k: round(res.work_bytes / v, 3) for k, v in stored.items() if v}
    res.check("btrsync committed a backup of the whole stream", res.work_bytes > cfg.push_bytes,
              f"stream {res.work_bytes} bytes for a {cfg.push_bytes} byte dataset")

    # ratios against the bars
    res.metrics["time_ratio_vs_pipeline"] = res.ratio(PIPELINE)
    raw_t, bs_t = res.median(RAW), res.median("btrsync")
    res.metrics["share_of_raw_send_throughput"] = raw_t / bs_t if raw_t and bs_t else None
    res.metrics["time_ratio_vs_io_floor"] = res.ratio(FLOOR)
    res.bars.append(Bar("full push time / pipeline time", res.ratio(PIPELINE), 1.0, "<=", "x"))
    res.bars.append(Bar("full push time / pipeline time (issue 14)", res.ratio(PIPELINE), 0.65, "<=", "x", "aim"))
    res.bars.append(Bar("full push throughput / raw btrfs send throughput",
                        res.metrics["share_of_raw_send_throughput"], 0.9, ">=", "x", "aim"))
    gib = res.work_bytes / (1 << 30)
    cpu = {t: res.median(t, "cpu_seconds") for t in (res.baseline, PIPELINE, FLOOR)}
    res.metrics["cpu_s_per_gib"] = {t: round(c / gib, 3) if c is not None and gib else None for t, c in cpu.items()}
    cpu_ratio = cpu[res.baseline] / cpu[PIPELINE] if cpu[res.baseline] and cpu[PIPELINE] else None
    res.metrics["cpu_ratio_vs_pipeline"] = cpu_ratio
    # the same on the whole machine's busy time: a fair count where the contenders differ in
    # which threads do the kernel's work (the pipeline's writeback after `sync` runs in flusher
    # threads that no process is charged for; btrsync's after each segment's fsync, in its own)
    machine = {t: res.median(t, "machine_cpu_seconds") for t in (res.baseline, PIPELINE)}
    res.metrics["machine_cpu_ratio_vs_pipeline"] = (machine[res.baseline] / machine[PIPELINE]
                                                    if machine[res.baseline] and machine[PIPELINE] else None)
    res.bars.append(Bar("full push time / pipeline time (issue 25)", res.ratio(PIPELINE), 0.85, "<=", "x", "aim"))
    res.bars.append(Bar("full push time / I/O floor time (issue 25)", res.ratio(FLOOR), 1.0, "<=", "x", "aim"))
    res.bars.append(Bar("full push CPU s / pipeline CPU s (issue 25)", cpu_ratio, 0.8, "<=", "x", "aim"))
    if btrbk_available():
        res.metrics["time_ratio_vs_btrbk"] = res.ratio(BTRBK)
        res.bars.append(Bar("full push time / btrbk time", res.ratio(BTRBK), 1.0, "<=", "x"))
    if cfg.sweep:
        res.metrics["sweep"] = sweep(ws, cfg, log, subvol, snapdir, key)
    if cfg.profile:
        res.metrics["profile"] = profile(ws, cfg, log, subvol, snapdir, key, settings)
    return res


SWEEP: list[tuple[str, dict[str, Any]]] = [
    ("default", {}),
    ("workers=1", {"workers": 1}),
    ("workers=3", {"workers": 3}),
    ("workers=4", {"workers": 4}),
    ("chunk_size=1M", {"chunk_size": 1 * MiB}),
    ("chunk_size=16M", {"chunk_size": 16 * MiB}),
    ("zstd_level=1", {"zstd_level": 1}),
    ("zstd_level=0 (no compression)", {"zstd_level": 0}),
]


def sweep(ws: Workspace, cfg: Config, log: Callable[[str], None], subvol: Path, snapdir: Path,
          key: Any) -> list[dict[str, Any]]:
    """Other ``PushSettings`` on the same snapshot, alternated like the main comparison."""
    res = BenchResult("push-sweep", "PushSettings sweep", baseline="default")
    out = ws.dst / "sweep"
    out.mkdir()
    base = PushSettings()
    stored: dict[str, int] = {}

    def contender(label: str, over: dict[str, Any]) -> Contender:
        settings = replace(base, **over)
        target = out / label.split()[0].replace("=", "-")

        def go(rep: int) -> dict[str, Any]:
            (r,) = push(subvol, snapdir, repo_at(target, key), settings).results
            if r.status != "ok":
                raise RuntimeError(f"btrsync push ({label}) failed: {r.error}")
            res.work_bytes = r.stream_bytes
            stored[label] = r.stored_bytes
            return {"stored_bytes": r.stored_bytes}

        return Contender(label, go, before=lambda rep: target.mkdir(), after=lambda rep: remove_tree(target))

    alternate(res, [contender(label, over) for label, over in SWEEP], max(2, cfg.reps - 1),
              drop=cfg.drop_caches, warmup=False, log=log)  # the main comparison warmed up
    rows = []
    for label, over in SWEEP:
        rows.append({"settings": label, **over, "median_s": res.median(label), "mib_s": res.mib_s(label),
                     "cpu_s": res.median(label, "cpu_seconds"), "stored_bytes": stored.get(label),
                     "time_vs_default": (res.median(label) or 0) / (res.median("default") or 1),
                     "runs": [r["seconds"] for r in res.runs[label]]})
    remove_tree(out)
    return rows


def _profiled_push(subvol: Path, snapdir: Path, target: Path, key: Any,
                   settings: PushSettings) -> dict[str, Any]:
    (r,) = push(subvol, snapdir, repo_at(target, key), settings).results
    return {"stream_bytes": r.stream_bytes}


def profile(ws: Workspace, cfg: Config, log: Callable[[str], None], subvol: Path, snapdir: Path,
            key: Any, settings: PushSettings) -> dict[str, Any]:
    """One more push under py-spy (raw stacks summarised per thread, plus a flamegraph)."""
    results = cfg.out
    results.mkdir(parents=True, exist_ok=True)
    found: dict[str, Any] = {}
    for fmt, name in (("raw", "profile-push.txt"), ("flamegraph", "profile-push.svg")):
        target = ws.dst / f"profile-{fmt}"
        target.mkdir()
        drop_caches()
        with pyspy.recording(results / name, fmt=fmt, native=False) as ok:
            if not ok:
                return {"error": "py-spy is not installed"}
            rec = measure(functools.partial(_profiled_push, subvol, snapdir, target, key, settings))
        log(f"  push: profiled run ({fmt}) {rec['seconds']:.2f} s, cpu {rec['cpu_seconds']:.2f} s")
        found[f"{fmt}_run"] = {"seconds": rec["seconds"], "cpu_seconds": rec["cpu_seconds"]}
        remove_tree(target)
    found["threads"] = pyspy.summarise(results / "profile-push.txt")
    found["files"] = ["profile-push.txt", "profile-push.svg"]
    return found
