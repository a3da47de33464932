"""Progress as a person sees it: the real ``btrsync`` on a pseudo-terminal, and in a log.

A push of 48 MiB of random data at ``--bwlimit 5M`` (about ten seconds) into the world's target:
on a terminal the status line shows a total, a percentage and an ETA marked as estimates, a rate
that never exceeds the limit by more than a small margin, is redrawn at least every second or
so, and is erased before the result table, which starts on a line of its own.  With stderr not a
terminal: no carriage return or escape sequence at all, and at most one line per interval.
Timing bounds are generous: the machine is small and noisy.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from btrsync.progress import MIN_SPAN
from tests.integration.conftest import World

pytestmark = pytest.mark.btrfs

MiB = 1 << 20
LIMIT = 5 * MiB
SIZE_MIB = 48
ERASE = "\r\x1b[K"
WINDOW = 5.0  # seconds over which a terminal's rate is measured (Reporter's default)
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
RATE = re.compile(r"([\d.]+) (B|KiB|MiB|GiB)/s stored")
ELAPSED = re.compile(r"(?:^|  )(\d+):(\d\d)(?:  |$)")


@dataclass
class Screen:
    """What a terminal received: the bytes, and each status-line redraw with its arrival time."""

    code: int
    text: str
    frames: list[tuple[float, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.text.split("\r\n")


def _argv(world: World, *args: str) -> list[str]:
    return [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
            "--key-file", str(world.key), *args]


def _on_pty(argv: list[str], *, columns: int = 200, timeout: float = 120) -> Screen:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal; record what it shows."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                if proc.poll() is not None and not select.select([master], [], [], 0.2)[0]:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last holder of the terminal's other end is gone
                break
            if not data:
                break
            chunks.append((time.monotonic(), data))
        else:
            proc.kill()
            pytest.fail("the command did not finish in time")
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    text = b"".join(c for _, c in chunks).decode(errors="replace")
    screen = Screen(code, text)
    for t, data in chunks:  # a redraw begins with the erase sequence; note when each arrived
        for piece in data.decode(errors="replace").split(ERASE)[1:]:
            screen.frames.append((t, piece.split("\r")[0].split("\n")[0]))
    return screen


def _big_snapshot(world: World, size_mib: int = SIZE_MIB) -> Path:
    with open(world.subvol / "random.bin", "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    return world.snapshot()


def _realistic_chunks(world: World, **push: str) -> None:
    """4 MiB chunks (the default) in 16 MiB segments: several segments, each committed."""
    text = world.config.read_text()
    text = re.sub(r'(?m)^chunk_size = .*$', 'chunk_size = "4M"', text)
    text = re.sub(r'(?m)^segment_size = .*$', 'segment_size = "16M"', text)
    for key, value in push.items():
        text = text.replace("[push]\n", f"[push]\n{key} = {value}\n", 1)
    world.config.write_text(text)


def _rate(frame: str) -> float | None:
    m = RATE.search(frame)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def _elapsed(frame: str) -> int | None:
    m = ELAPSED.search(frame)
    return int(m.group(1)) * 60 + int(m.group(2)) if m else None


def _visible(raw: str) -> str:
    """What a terminal shows of one line: ``\r`` returns to column 0, ``ESC [K`` erases to the end
    of the line, any other character overwrites the cell under the cursor."""
    cells: list[str] = []
    col = i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            del cells[col:]
            i += 3
            continue
        ch = raw[i]
        if ch == "\r":
            col = 0
        else:
            cells[col:col + 1] = [ch]
            col += 1
        i += 1
    return "".join(cells)


def _table_starts_on_its_own_line(screen: Screen, header: str) -> None:
    """The line that holds the table's header shows the header and nothing else: the status line
    drawn on it before was erased, not merely overwritten or left in front."""
    [line] = [ln for ln in screen.lines() if header in ln]
    shown = _visible(line)
    assert shown.startswith(header) and not shown.rstrip().endswith(("stored", "MiB")), repr(line[-300:])
    assert shown == line[line.rindex(header):], repr(line[-300:])  # nothing of the status line remains


@pytest.mark.slow
def test_push_on_a_terminal_shows_estimate_percentage_eta_and_an_honest_rate(world: World) -> None:
    _realistic_chunks(world)
    snap = _big_snapshot(world)
    t0 = time.monotonic()
    screen = _on_pty(_argv(world, "push", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                           "--to", world.url, "--bwlimit", "5M"))
    took = time.monotonic() - t0
    assert screen.code == 0, screen.text
    assert took > SIZE_MIB * MiB / LIMIT * 0.9, "the limit did not hold (test premise)"

    sending = [(t, f) for t, f in screen.frames if f.startswith("sending")]
    assert len(sending) >= 5, screen.text
    # the total, the share and the ETA are there, marked as estimates
    estimated = [f for _, f in sending if re.search(r"~\d+%  [\d.]+ \w+ of ~4[6-9]\.\d MiB", f)]
    assert estimated, sending[-3:]
    assert any("ETA ~" in f for f in estimated), estimated[-3:]
    assert all(snap.name in f for _, f in sending)

    # The rate counts what passed the token bucket, over the last WINDOW seconds and never over less
    # than MIN_SPAN: from an empty bucket whose burst is one second's worth, no span t of the push's own
    # clock sees more than LIMIT * t + LIMIT bytes pass, however the machine schedules it.  So a rate
    # counted before the bucket (what is queued) or over the first milliseconds shows as a breach.
    rates = [(_elapsed(f), _rate(f)) for _, f in sending if _rate(f) is not None]
    assert rates, sending[-3:]
    shown = 0.05 * MiB  # the rate is shown to one decimal
    assert max(r for _, r in rates) <= LIMIT * (1 + 1 / MIN_SPAN) + shown, rates
    # "sending" began before the first frame that shows it: at most a second after its elapsed time
    began = min(e for e in (_elapsed(f) for _, f in sending) if e is not None) + 1
    settled = [r for e, r in rates if e is not None and e - began >= WINDOW]
    assert settled and max(settled) <= LIMIT * (1 + 1 / WINDOW) + shown, rates
    assert len({r for _, r in rates}) > 1 and min(r for _, r in rates) >= 0, rates  # measured, not fixed
    # no first-milliseconds rate: nothing is shown before a phase is a second and a half old
    assert all(_elapsed(f) is None or _elapsed(f) >= 1 for _, f in sending if _rate(f) is not None)

    # redrawn while it sends (how often on a fake clock: tests/unit/test_progress.py), and the
    # push's own clock moves on from frame to frame
    elapsed = [e for e in (_elapsed(f) for _, f in sending) if e is not None]
    assert elapsed == sorted(elapsed) and elapsed[-1] - elapsed[0] >= SIZE_MIB * MiB / LIMIT * 0.5, elapsed

    # the result table starts on its own line, after the status line was erased
    _table_starts_on_its_own_line(screen, "BACKUP")
    assert any(ln.startswith(f"{snap.name}-") and " ok " in ln for ln in screen.lines()), screen.lines()[-4:]


def test_receive_on_a_terminal_shows_an_exact_total(world: World) -> None:
    _realistic_chunks(world)
    snap = _big_snapshot(world, 24)
    assert world.push().code == 0
    screen = _on_pty(_argv(world, "receive", "latest", "--from", world.url, "--into", str(world.restore)))
    assert screen.code == 0, screen.text
    receiving = [f for _, f in screen.frames if f.startswith("receiving")]
    assert receiving, screen.text
    # the manifest knows the stream's size: no '~' on the total or the share
    assert all(re.search(r"  \d+%  [\d.]+ \w+ of 2[4-5]\.\d MiB", f) for f in receiving), receiving
    assert all(snap.name in f for f in receiving)
    _table_starts_on_its_own_line(screen, "BACKUP")
    assert (world.restore / snap.name).is_dir()


def test_an_error_after_progress_starts_on_a_fresh_line(world: World) -> None:
    """A failing push: the error message is not glued to the status line."""
    _realistic_chunks(world)
    _big_snapshot(world, 8)
    world.cli("push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", world.url)
    for p in sorted((world.target_dir / "data").rglob("*")):  # a corrupt segment
        if p.is_file() and not p.name.endswith(".idx"):
            with open(p, "r+b") as f:
                f.seek(100)
                f.write(b"\0" * 64)
            break
    screen = _on_pty(_argv(world, "receive", "latest", "--from", world.url, "--into", str(world.restore)))
    assert screen.code == 4, screen.text
    [line] = [ln for ln in screen.lines() if "btrsync: error:" in ln]
    assert _visible(line) == line[line.rindex("btrsync: error:"):], repr(line)


@pytest.mark.slow
def test_push_in_a_log_has_no_control_characters_and_one_line_per_interval(world: World) -> None:
    _realistic_chunks(world, progress_interval="1")
    snap = _big_snapshot(world, 24)
    proc = subprocess.Popen(_argv(world, "push", str(world.subvol), "--snapshot-dir", str(world.snapdir),
                                  "--to", world.url, "--bwlimit", "5M"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err_lines: list[tuple[float, bytes]] = []

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read_err)
    reader.start()
    t0 = time.monotonic()
    assert proc.stdout is not None
    out = proc.stdout.read()  # stderr is the reader's alone
    proc.wait(timeout=120)
    took = time.monotonic() - t0
    reader.join(timeout=10)
    err = b"".join(line for _, line in err_lines)
    assert proc.returncode == 0, err
    for stream in (out, err):
        assert b"\r" not in stream and b"\x1b" not in stream, stream

    lines = [line.decode().rstrip("\n") for _, line in err_lines]
    mine = [ln for ln in lines if ln.startswith("btrsync: push ")]
    assert mine and snap.name in mine[0] and "starting" in mine[0] and "~" in mine[0], lines
    assert "done in" in mine[-1], lines
    periodic = mine[1:-1]
    # the bucket makes the push last 4.8 s or more of its own clock, which is never longer than ours:
    # with a 1 s interval it reports more than once, and never more than once per interval
    assert len(periodic) >= 2, lines
    assert len(periodic) <= took / 1.0 + 1, (took, periodic)
    assert any(re.search(r"sending, ~\d+%, [\d.]+ \w+ of ~2[3-5]\.\d MiB, .*ETA ~", ln) for ln in periodic), periodic
    assert out.decode().startswith("BACKUP")
