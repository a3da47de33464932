"""Sample this process with py-spy while a block runs, and summarise where each thread spends time.

``with recording(path): push(...)`` attaches ``py-spy record --pid <this process>`` (raw collapsed
stacks, or a flamegraph SVG), stops it with SIGINT afterwards and waits for the file.
``summarise(raw)`` turns collapsed stacks into "per thread: share of samples in each innermost
interesting frame", which is the evidence benchmarks/README.md quotes.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path


def pyspy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def recording(out: Path, *, fmt: str = "raw", native: bool = False, rate: int = 100,
              pid: int | None = None) -> Iterator[bool]:
    """Yield True while py-spy records ``pid`` (default: this process) into ``out``; False (and
    no recording) when py-spy is not installed."""
    exe = pyspy_binary()
    if exe is None:
        yield False
        return
    argv = [exe, "record", "--pid", str(pid or os.getpid()), "-o", str(out), "-f", fmt,
            "--threads", "--idle", "--full-filenames", "--rate", str(rate), "--nonblocking"]
    if native:
        argv.append("--native")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # let it attach
    try:
        yield True
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode not in (0, -signal.SIGINT, 130) and not out.exists():
            print(f"warning: py-spy failed: {err.strip()[-500:]}", file=sys.stderr)


_FRAME = re.compile(r"^(?P<func>\S+) \((?P<file>.+?):(?P<line>\d+)\)$")

# Pipeline stages, recognised in "<function> <source line>" of the innermost frame that matches
# any pattern (walking outwards); first pattern wins.
STAGES: list[tuple[str, str]] = [
    ("py-spy attach wait", r"^recording "),
    ("zstd compress", r"\.compress\("),
    ("zstd decompress", r"\.decompress\("),
    ("AES-GCM seal/open", r"\.encrypt\(|\.decrypt\("),
    ("HKDF key derivation", r"\.derive\("),
    ("xxh3 hashing", r"xxh3"),
    ("read: wait for btrfs send (pipe)", r"os\.readv|readinto"),
    ("stream framing check", r"framing\.feed|StreamFraming"),
    ("write segment (os.write)", r"os\.write\("),
    ("fsync", r"fsync"),
    ("write to btrfs receive (pipe)", r"stdin\.write|ReceiveProcess\.write"),
    ("target read (ranged get)", r"LocalTarget\.get|read_frame"),
    ("token bucket sleep", r"TokenBucket\.take|\.sleep\("),
    ("wait for worker results", r"\.result\(\)"),
    ("wait for btrfs receive to finish", r"_try_wait|Popen\.wait"),
    ("worker idle (no work queued)", r"work_queue\.get"),
    ("thread start", r"_adjust_thread_count"),
    ("stderr drain (blocked, idle)", r"StderrDrain"),
]


def summarise(raw: Path, top: int = 9) -> dict[str, dict[str, float]]:
    """Per thread, the share (%) of samples (idle included) in each stage; stacks with no
    recognised frame are grouped as "other: <innermost function>"."""
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    if not raw.exists():
        return {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread ")), "thread ?")
        name = thread.split(": ", 1)[1] if ": " in thread else "?"
        body = [f for f in frames if not f.startswith(("process ", "thread "))]
        stage = _stage(body)
        if stage != "py-spy attach wait":  # the second before the measured work starts
            per_thread[_role(name)][stage] += int(count)
    out = {}
    for name, counter in per_thread.items():
        total = sum(counter.values())
        out[name] = {"samples": total, **{k: round(100 * v / total, 1) for k, v in counter.most_common(top)}}
    return dict(sorted(out.items(), key=lambda kv: kv[0]))


def _role(thread_name: str) -> str:
    if thread_name.startswith("btrsync-stage"):
        return f"worker {thread_name.rsplit('_', 1)[-1]}"
    if thread_name == "MainThread":
        return "main thread"
    return f"other thread ({thread_name})"


def _source(file: str, line: str) -> str:
    """The source text of ``file:line`` (relative names: the repository, then the stdlib)."""
    if not line.isdigit():
        return ""
    roots = [Path(__file__).resolve().parent.parent, Path(sysconfig.get_paths()["stdlib"])]
    for path in [Path(file)] if os.path.isabs(file) else [r / file for r in roots]:
        text = linecache.getline(str(path), int(line)).strip()
        if text:
            return text
    return ""


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        text = f"{m.group('func')} {_source(m.group('file'), m.group('line'))}" if m else frame
        for stage, pattern in STAGES:
            if re.search(pattern, text):
                return stage
    m = _FRAME.match(frames[-1]) if frames else None
    return f"other: {m.group('func') if m else (frames[-1][:60] if frames else '?')}"
