"""Shared machinery: configuration, A/B timing, medians and ratios, cache dropping, datasets and the
loopback btrfs workspace every benchmark runs in.

Timing model: every benchmark runs btrsync and its comparisons on the same data in the same run,
alternating the order from one repetition to the next (A B C, then C B A, ...), with the page cache
dropped before every timed run where I/O matters.  Results are medians; ratios are
``btrsync time / other time`` (below 1.0 means btrsync is faster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from btrsync.btrfs.scratch import scratch_btrfs
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import generate_key_file
from btrsync.targets.local import LocalTarget

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
REPO = Path(__file__).resolve().parent.parent


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions for one mode (``quick`` for CI, ``full`` for the figures)."""

    mode: str
    reps: int
    push_bytes: int  # dataset of the full-push benchmark (half random, half text)
    inc_files: int  # small files in the incremental benchmark's tree
    memory_streams: tuple[int, ...]  # stream sizes for the peak-RSS benchmark
    catalogue: int  # backups in the planner/retention benchmark
    throttle_seconds: float
    throttle_rate: int  # bytes per second
    sweep: bool  # try other PushSettings in the push benchmark
    profile: bool = False  # py-spy record one extra btrsync push and restore
    drop_caches: bool = True
    workdir: Path = Path("/var/tmp")  # where the sparse images go (a disk, not tmpfs)
    out: Path = REPO / "benchmarks" / "results"
    keep: bool = False

    @property
    def fs_sizes(self) -> dict[str, str]:
        """Sparse image sizes of the source, target and restore filesystems."""
        if self.mode == "quick":
            return {"src": "3G", "dst": "3G", "rst": "2G"}
        # dst holds SeaweedFS for benchmark 11: every contender's 1 GiB stream on two routes, plus
        # what overwrites and deletes leave until SeaweedFS vacuums; at 16G it filled up and
        # answered 500 InternalError to every write of the second route
        return {"src": "16G", "dst": "40G", "rst": "8G"}


def quick_config(**over: Any) -> Config:
    return dataclasses.replace(Config(
        mode="quick", reps=2, push_bytes=64 * MiB, inc_files=5_000,
        memory_streams=(64 * MiB, 256 * MiB), catalogue=100_000,
        throttle_seconds=3.0, throttle_rate=8 * MiB, sweep=False,
    ), **over)


def full_config(**over: Any) -> Config:
    return dataclasses.replace(Config(
        mode="full", reps=3, push_bytes=1 * GiB, inc_files=100_000,
        memory_streams=(256 * MiB, 1 * GiB, 4 * GiB), catalogue=100_000,
        throttle_seconds=30.0, throttle_rate=16 * MiB, sweep=True,
    ), **over)


# --- results ------------------------------------------------------------------------------------


@dataclass
class Bar:
    """A performance bar: ``value`` compared with ``limit`` (``<=`` or ``>=``)."""

    name: str
    value: float | None
    limit: float
    op: str = "<="
    unit: str = ""
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit


@dataclass
class Check:
    """A correctness check: a failed one makes the whole run exit non-zero."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class BenchResult:
    key: str
    title: str
    baseline: str = "btrsync"  # the tool ratios are computed for
    work_bytes: int = 0  # numerator of MiB/s (the same data for every tool)
    work_label: str = ""
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    bars: list[Bar] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole benchmark, setup included
    error: str | None = None

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def median(self, tool: str, key: str = "seconds") -> float | None:
        values = [r[key] for r in self.runs.get(tool, []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    def mib_s(self, tool: str) -> float | None:
        t = self.median(tool)
        return self.work_bytes / MiB / t if t and self.work_bytes else None

    def ratio(self, tool: str) -> float | None:
        """baseline time / ``tool`` time: below 1.0 means the baseline is faster."""
        a, b = self.median(self.baseline), self.median(tool)
        return a / b if a and b else None

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


# --- timing -------------------------------------------------------------------------------------


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


_HZ = os.sysconf("SC_CLK_TCK")


def _proc_stat() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def measure(fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """Wall and CPU seconds of ``fn`` (CPU: this process's threads plus reaped children, so a
    shell pipeline's processes and btrsync's ``btrfs send`` child are counted), plus how busy the
    whole machine was meanwhile (/proc/stat: every process and kernel thread, others' included)."""
    load = os.getloadavg()[0]
    s0, c0, t0 = _proc_stat(), _cpu(), time.perf_counter()
    extra = fn() or {}
    seconds, cpu, s1 = time.perf_counter() - t0, _cpu() - c0, _proc_stat()
    d = [b - a for a, b in zip(s0, s1, strict=True)]
    total = sum(d) or 1
    return {"seconds": seconds, "cpu_seconds": cpu,
            # every CPU's busy time: kernel threads included (the page cache's writeback after a
            # `sync` runs in flusher threads, not in the process that wrote; after btrsync's
            # per-segment fsync, in its own thread), and any other process's (a quiet machine only)
            "machine_cpu_seconds": round((total - d[3] - d[4] - d[7]) / _HZ, 3),  # less steal time
            "system_busy_pct": round(100 * (total - d[3] - d[4]) / total, 1),
            "system_iowait_pct": round(100 * d[4] / total, 1), "loadavg_before": round(load, 2),
            **extra}


@dataclass
class Contender:
    """One tool in an A/B comparison: ``run(rep)`` is timed, ``before``/``after`` are not."""

    name: str
    run: Callable[[int], dict[str, Any] | None]
    before: Callable[[int], None] | None = None
    after: Callable[[int], None] | None = None
    # a comparison tool that may fail on a fault it does not retry (a 500 from the S3 server):
    # its failure is a note and its remaining runs are skipped; btrsync's failures always count
    may_fail: bool = False


def alternate(result: BenchResult, contenders: list[Contender], reps: int, *, drop: bool = True,
              warmup: bool = True, log: Callable[[str], None] | None = None) -> None:
    """Run every contender ``reps`` times, reversing the order on every other repetition, dropping
    the page cache before each timed run; append the records to ``result.runs``.

    With ``warmup``, each contender first runs once untimed (as repetition -1), so one-time costs
    (lazy imports, the first thread pool, ``btrfs --version``) do not land on whoever goes first.
    """
    failed: set[str] = set()

    def attempt(c: Contender, rep: int, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            if not c.may_fail:
                raise
            failed.add(c.name)
            last = str(exc).strip().splitlines()
            note = f"{c.name} failed in repetition {rep + 1} ({last[-1] if last else type(exc).__name__}): its remaining runs are skipped"
            result.notes.append(note)
            if log:
                log(f"  {result.key}: {note}")
            return None

    if warmup:
        for c in contenders:
            if c.before:
                c.before(-1)
            attempt(c, -1, functools.partial(c.run, -1))
            if c.after and c.name not in failed:
                c.after(-1)
    for rep in range(reps):
        order = contenders if rep % 2 == 0 else contenders[::-1]
        for pos, c in enumerate(order):
            if c.name in failed:
                continue
            if c.before:
                c.before(rep)
            if drop:
                drop_caches()
            record = attempt(c, rep, functools.partial(measure, functools.partial(c.run, rep)))
            if record is None:
                continue
            record.update(rep=rep, position=pos)
            result.runs.setdefault(c.name, []).append(record)
            if log:
                log(f"  {result.key}: {c.name:<34} rep {rep + 1}/{reps}  {record['seconds']:7.2f} s")
            if c.after:
                c.after(rep)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- system helpers -----------------------------------------------------------------------------

_DROP_WARNED = False


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: cold page, dentry and inode caches."""
    global _DROP_WARNED
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError as exc:
        if not _DROP_WARNED:
            print(f"warning: cannot drop caches ({exc}); runs are warm-cache", file=sys.stderr)
            _DROP_WARNED = True
        return False


def sh(cmd: str, *, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a shell pipeline with bash and ``pipefail`` (only ever for the comparisons)."""
    proc = subprocess.run(f"set -o pipefail; {cmd}", shell=True, executable="/bin/bash",
                          capture_output=capture, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {cmd}\n{(proc.stderr or '')[-2000:]}")
    return proc


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    return proc


def subvol_create(path: Path) -> Path:
    run(["btrfs", "subvolume", "create", str(path)])
    return path


def subvol_delete(path: Path) -> None:
    """Delete a subvolume and wait until btrfs has cleaned it (so the cleaner does not run during
    the next timed run)."""
    if not path.exists():
        return
    run(["btrfs", "subvolume", "delete", "-c", str(path)])
    run(["btrfs", "subvolume", "sync", str(path.parent)])


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def reflink_copy(src: Path, dst: Path) -> None:
    run(["cp", "-a", "--reflink=always", str(src), str(dst)])


def tree_bytes(root: Path) -> tuple[int, int]:
    """(bytes in regular files, number of files) below ``root``."""
    total = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
            files += 1
    return total, files


def du_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return tree_bytes(path)[0]


def repo_at(path: Path, key: Any) -> Repository:
    """The repository in directory ``path``, initialised when empty (what 'btrsync init' does)."""
    return Repository.open(LocalTarget(path), key, create=True)


def cli_argv() -> list[str]:
    """How to start the btrsync CLI of this venv."""
    script = Path(sys.executable).parent / "btrsync"
    return [str(script)] if script.exists() else [sys.executable, "-m", "btrsync"]


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    progs = subprocess.run(["btrfs", "--version"], capture_output=True, text=True).stdout.strip()
    tools: dict[str, str | None] = {}
    for tool, argv in {"zstd": ["zstd", "--version"], "openssl": ["openssl", "version"],
                       "restic": ["restic", "version"], "btrbk": ["btrbk", "--version"]}.items():
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            tools[tool] = (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            tools[tool] = None
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "btrfs_progs": progs, "python": platform.python_version(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
        "loadavg": os.getloadavg(), "tools": tools,
    }


# --- data ---------------------------------------------------------------------------------------


class RandomBytes:
    """Incompressible bytes at memory speed: an AES-256-CTR keystream under a random key
    (``os.urandom`` runs at well under 100 MiB/s on this kind of VM)."""

    def __init__(self) -> None:
        self._enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
        self._zeros = bytes(8 * MiB)

    def take(self, n: int) -> bytes:
        out = []
        while n > 0:
            k = min(n, len(self._zeros))
            out.append(self._enc.update(self._zeros[:k]))
            n -= k
        return b"".join(out)


class TextGen:
    """Word-like text (Zipf-distributed vocabulary, 12 % hex tokens, 12 words per line), which
    zstd -3 compresses about 2.5:1, roughly like source code or logs; vectorised with numpy."""

    def __init__(self, seed: int = 1, vocab: int = 50_000, numbers: int = 1_000_000,
                 number_share: float = 0.12) -> None:
        rng = self.rng = np.random.default_rng(seed)
        letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
        lp = np.arange(26, 0, -1, dtype=float)
        word_lens = rng.integers(2, 11, vocab)
        chars = letters[np.searchsorted(np.cumsum(lp / lp.sum()), rng.random(int(word_lens.sum())))]
        hexd = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
        nchars = hexd[rng.integers(0, 16, numbers * 8)]
        lens = np.concatenate([word_lens, np.full(numbers, 8)]) + 1  # each token + one space
        ends = np.cumsum(lens)
        starts = ends - lens
        body = np.concatenate([chars, nchars])
        arr = np.full(int(ends[-1]), ord(" "), dtype=np.uint8)
        body_starts = np.concatenate([[0], np.cumsum(lens - 1)[:-1]])
        arr[np.repeat(starts - body_starts, lens - 1) + np.arange(body.size)] = body
        self.arr, self.starts, self.lens = arr, starts.astype(np.int64), lens.astype(np.int64)
        w = 1 / np.arange(1, vocab + 1) ** 1.05
        self.wcdf = np.cumsum(w / w.sum())
        self.wcdf[-1] = 1.0
        self.share, self.nvocab, self.nnum = number_share, vocab, numbers
        avg_word = float((w / w.sum() * (word_lens + 1)).sum())
        self.avg = (1 - number_share) * avg_word + number_share * 9

    def take(self, nbytes: int) -> bytes:
        out, have = [], 0
        while have < nbytes:
            block = self._block(min(nbytes - have, 8 * MiB))
            out.append(block)
            have += len(block)
        return b"".join(out)[:nbytes]

    def _block(self, nbytes: int) -> bytes:
        n = int(nbytes / self.avg * 1.1) + 16
        idx = np.searchsorted(self.wcdf, self.rng.random(n))
        isnum = self.rng.random(n) < self.share
        idx[isnum] = self.nvocab + self.rng.integers(0, self.nnum, int(isnum.sum()))
        lens = self.lens[idx]
        ends = np.cumsum(lens)
        total = int(ends[-1])
        out = self.arr[np.repeat(self.starts[idx] - (ends - lens), lens) + np.arange(total)]
        out[ends[11::12] - 1] = ord("\n")
        return out[:nbytes].tobytes()


def write_random_file(path: Path, size: int, rnd: RandomBytes | None = None,
                      block: int = 8 * MiB) -> str:
    """Write ``size`` incompressible bytes in ``block`` pieces; return their xxh3-128."""
    rnd = rnd or RandomBytes()
    h = xxhash.xxh3_128()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = rnd.take(min(block, left))
            h.update(piece)
            f.write(piece)
            left -= len(piece)
    return h.hexdigest()


def file_xxh3(path: Path, block: int = 8 * MiB) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while piece := f.read(block):
            h.update(piece)
    return h.hexdigest()


def make_dataset(root: Path, total: int, seed: int = 7) -> dict[str, int]:
    """Half incompressible random bytes in 1-32 MiB files, half text in thousands of small files
    (512 B - 96 KiB, about 32 KiB on average), 100 per directory; a few symlinks and hard links."""
    rng = np.random.default_rng(seed)
    rnd, text = RandomBytes(), TextGen(seed)
    stats = {"random_bytes": 0, "text_bytes": 0, "random_files": 0, "text_files": 0}
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    target = total // 2
    while stats["random_bytes"] < target:
        size = min(int(rng.integers(1, 33)) * MiB, target - stats["random_bytes"])
        write_random_file(root / "blobs" / f"blob-{stats['random_files']:04d}.bin", size, rnd)
        stats["random_bytes"] += size
        stats["random_files"] += 1
    target = total - stats["random_bytes"]
    while stats["text_bytes"] < target:
        batch = text.take(min(8 * MiB, target - stats["text_bytes"]))
        pos = 0
        while pos < len(batch):
            n = stats["text_files"]
            size = int(min(96 * KiB, max(512, rng.lognormal(np.log(24 * KiB), 0.8))))
            d = root / "text" / f"d{n // 100:04d}"
            if n % 100 == 0:
                d.mkdir(parents=True, exist_ok=True)
            piece = batch[pos:pos + size]
            (d / f"f{n:06d}.txt").write_bytes(piece)
            pos += len(piece)
            stats["text_bytes"] += len(piece)
            stats["text_files"] += 1
    (root / "links").mkdir(exist_ok=True)
    for i in range(10):
        (root / "links" / f"sym{i}").symlink_to(f"../text/d0000/f{i:06d}.txt")
        os.link(root / "text" / "d0000" / f"f{i:06d}.txt", root / "links" / f"hard{i}")
    return stats


def make_small_tree(root: Path, files: int, seed: int = 11) -> dict[str, int]:
    """``files`` small text files (256 B - 8 KiB, ~2 KiB average), 200 per directory."""
    rng = np.random.default_rng(seed)
    text = TextGen(seed)
    sizes = np.clip(rng.lognormal(np.log(1536), 0.7, files), 256, 8 * KiB).astype(int)
    blob = text.take(int(sizes.sum()))
    pos = 0
    for n, size in enumerate(sizes.tolist()):
        d = root / f"dir{n // 200:04d}"
        if n % 200 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"file{n:06d}.txt").write_bytes(blob[pos:pos + size])
        pos += size
    return {"files": files, "bytes": pos}


def small_change(root: Path, files: int, seed: int = 13) -> dict[str, int]:
    """A typical day: rewrite 0.2 % of the files, append to 0.2 %, add 100, delete 50, rename 20."""
    rng = np.random.default_rng(seed)
    text = TextGen(seed)
    k = max(5, files // 500)
    picks = rng.choice(files, size=3 * k + 70, replace=False).tolist()
    path = lambda n: root / f"dir{n // 200:04d}" / f"file{n:06d}.txt"  # noqa: E731
    changed = 0
    for n in picks[:k]:
        data = text.take(int(rng.integers(256, 8 * KiB)))
        path(n).write_bytes(data)
        changed += len(data)
    for n in picks[k:2 * k]:
        with open(path(n), "ab") as f:
            data = text.take(512)
            f.write(data)
            changed += len(data)
    for n in picks[2 * k:2 * k + 50]:
        path(n).unlink()
    for i, n in enumerate(picks[2 * k + 50:2 * k + 70]):
        path(n).rename(path(n).with_name(f"renamed-{i}.txt"))
    new = root / "new-today"
    new.mkdir()
    for i in range(100):
        data = text.take(int(rng.integers(256, 8 * KiB)))
        (new / f"n{i:03d}.txt").write_bytes(data)
        changed += len(data)
    return {"rewritten": k, "appended": k, "added": 100, "deleted": 50, "renamed": 20,
            "changed_bytes": changed}


# --- the workspace ------------------------------------------------------------------------------


@dataclass
class Workspace:
    """Three loopback btrfs filesystems (source, target, restore) and the keys, under one base."""

    base: Path
    src: Path
    dst: Path
    rst: Path
    key_file: Path  # btrsync's key
    pass_file: Path  # the openssl -pass file of the comparison pipelines
    hex_key_file: Path  # btrbk's openssl_keyfile (hex)
    shared: dict[str, Any] = field(default_factory=dict)  # results one benchmark leaves another


@contextlib.contextmanager
def workspace(cfg: Config) -> Iterator[Workspace]:
    """Make the workspace; unmount, detach and remove everything afterwards, whatever happens."""
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="btrsync-bench-", dir=cfg.workdir))
    try:
        with contextlib.ExitStack() as stack:
            sizes = cfg.fs_sizes
            src = stack.enter_context(scratch_btrfs(base, sizes["src"], "bench-src"))
            dst = stack.enter_context(scratch_btrfs(base, sizes["dst"], "bench-dst"))
            rst = stack.enter_context(scratch_btrfs(base, sizes["rst"], "bench-rst"))
            # nothing mounted below the mounts may outlive the benchmark (restic's bind mounts)
            stack.callback(_umount_below, base)
            generate_key_file(base / "btrsync.key")
            pass_file = base / "openssl.pass"
            pass_file.write_text(os.urandom(32).hex() + "\n")
            hex_key = base / "btrbk.hexkey"
            hex_key.write_text(os.urandom(32).hex())
            for p in (pass_file, hex_key):
                p.chmod(0o600)
            yield Workspace(base, src, dst, rst, base / "btrsync.key", pass_file, hex_key)
    finally:
        if not cfg.keep:
            shutil.rmtree(base, ignore_errors=True)


def _umount_below(base: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mnt in sorted((m for m in mounts if m.startswith(str(base) + "/") and "-mnt-" not in
                       Path(m).name), key=len, reverse=True):
        subprocess.run(["umount", mnt], capture_output=True, check=False)


def leftover_loops(base_prefix: str) -> list[str]:
    """Loop devices still backed by a file under ``base_prefix`` (ours: other test suites and
    concurrent benchmark runs on this machine have their own)."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if base_prefix in line]


def leftover_mounts(base_prefix: str) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if base_prefix in line]
