"""Hooks: commands run around a job, as argv lists (a shell only when the argv names one).

Each hook runs in its own session (process group) with stdin from /dev/null and stdout and stderr
merged; its output is logged line by line (``max_output_lines`` at most, each line cut at 1,000
characters, the rest counted), and its last lines are kept for the error message.  At its
timeout the whole process group gets SIGTERM, and SIGKILL two seconds later, so a hook that
started children of its own (``sh -c 'sleep 1000 &'``) leaves nothing behind; what a hook
that exited left running in its group is killed too.  A signal that
stops btrsync meanwhile kills the group the same way before it propagates.

btrsync itself killed with SIGKILL (or the OOM killer) can do nothing, so each hook has a
watchdog: a small process of its own session, started (and armed) before the hook, whose
parent-death signal (``PR_SET_PDEATHSIG``) fires when the btrsync thread that started it dies;
it is told the hook's process group on a pipe the moment the hook's process exists, and then ends
the group as a timeout would (SIGTERM, SIGKILL after the grace period).  The hook's process is a
``/bin/sh`` gate that execs the hook only after the watchdog has been told, so no SIGKILL can fall
between a running hook and an unarmed watchdog; the program is looked up on the hook's PATH first,
so a missing one is still "cannot be started", not a shell's exit 127.  The watchdog is killed once
the hook has ended; hooks are run by one thread, the one that lives as long as the run.

The environment is btrsync's own plus ``BTRSYNC_*`` variables describing the job, with the job's
``hooks.path`` directories in front of PATH (see ``env_for``).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a hook's process group
MAX_LINE = 1000
TAIL_LINES = 5


@dataclass(slots=True)
class HookResult:
    argv: list[str]
    kind: str
    code: int | None = None  # None: it could not be started
    seconds: float = 0.0
    timed_out: bool = False
    error: str | None = None
    tail: list[str] = field(default_factory=list)
    lines: int = 0

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out

    def describe(self) -> str:
        name = os.path.basename(self.argv[0])
        if self.error:
            return f"{self.kind} hook {name}: {self.error}"
        why = (f"timed out after {self.seconds:.0f}s and was killed" if self.timed_out
               else f"exited {self.code}")
        last = f" (last output: {' | '.join(self.tail[-2:])})" if self.tail else ""
        return f"{self.kind} hook {name} {why}{last}"


def run_hook(argv: Sequence[str], *, kind: str, env: Mapping[str, str], timeout: float,
             max_output_lines: int = 200, logger: logging.Logger = log,
             monotonic: Callable[[], float] = time.monotonic) -> HookResult:
    """Run one hook to its end or its timeout; never raises for the hook's own failure."""
    result = HookResult(list(argv), kind)
    t0 = monotonic()
    watchdog = _watchdog()
    gate_r, gate_w = os.pipe()
    try:
        if not argv or shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        proc = subprocess.Popen([GATE_SHELL, "-c", _GATE, "btrsync-hook", *argv], stdin=gate_r,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env),
                                start_new_session=True, close_fds=True)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument or the environment
        os.close(gate_w)
        _end_watchdog(watchdog)
        result.error = f"cannot be started: {getattr(exc, 'strerror', None) or exc}"
        logger.warning("hook failed kind=%s argv=%s: %s", kind, list(argv), result.error)
        return result
    finally:
        os.close(gate_r)
    pgid = proc.pid
    # the watchdog knows the group before the hook runs: a SIGKILL of btrsync between the start
    # and this line used to leave the watchdog an EOF, and the hook running unwatched for good
    _watch(watchdog, pgid)
    try:
        os.write(gate_w, b"go\n")
    except OSError:  # the gate's shell is gone already: proc.wait() below sees how it ended
        pass
    finally:
        os.close(gate_w)
    reader = threading.Thread(target=_read_lines, args=(proc, result, max_output_lines, logger),
                              name=f"hook-{kind}", daemon=True)
    reader.start()
    try:
        try:
            proc.wait(timeout=timeout)
            _kill_leftovers(pgid)  # nothing a hook started outlives it (or holds its output open)
        except subprocess.TimeoutExpired:
            result.timed_out = True
            logger.warning("hook timed out kind=%s argv=%s timeout=%.0fs: killing its process group",
                           kind, list(argv), timeout)
            _kill_group(proc, pgid)
    except BaseException:
        _kill_group(proc, pgid)  # btrsync is being stopped: the hook goes with it
        raise
    finally:
        _end_watchdog(watchdog)
        reader.join(timeout=KILL_GRACE + 1)
    result.code = proc.returncode
    result.seconds = monotonic() - t0
    if result.ok:
        logger.info("hook finished kind=%s argv=%s seconds=%.1f", kind, list(argv), result.seconds)
    else:
        logger.warning("hook failed: %s", result.describe())
    return result


def _read_lines(proc: subprocess.Popen[bytes], result: HookResult, limit: int, logger: logging.Logger) -> None:
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    name = os.path.basename(result.argv[0])
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n")[:MAX_LINE]
        result.lines += 1
        tail.append(line)
        if result.lines <= limit:
            logger.info("hook %s %s: %s", result.kind, name, line)
    if result.lines > limit:
        logger.info("hook %s %s: %d more line(s) not logged", result.kind, name, result.lines - limit)
    result.tail = list(tail)


# The hook starts behind a gate: a shell that waits for one line on its stdin (a pipe from btrsync),
# then execs the hook (same pid, so the same process group) with /dev/null as its stdin, or exits
# 125 without running it if btrsync died first (EOF).  btrsync opens the gate only after the
# watchdog has the group.
GATE_SHELL = "/bin/sh"
_GATE = 'read -r _ || exit 125; exec </dev/null; exec "$@"'


# The watchdog's program: no import of btrsync, so it starts in a few milliseconds.  Armed first,
# then it reads the hook's process group from stdin (written by btrsync even if the watchdog is
# still starting: the pipe keeps it); its parent's death (SIGUSR1, armed with PR_SET_PDEATHSIG)
# makes it end that group; EOF before a group means btrsync died before starting the hook.
_WATCHDOG = """
import ctypes, os, signal, sys, time
parent, grace = int(sys.argv[1]), float(sys.argv[2])
group, dead = None, False
def on_death(*_):
    global dead
    dead = True
    if group is not None:
        end()
def end():
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        limit = time.monotonic() + wait
        while time.monotonic() < limit:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                os._exit(0)
            time.sleep(0.05)
    os._exit(0)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
signal.signal(signal.SIGUSR1, on_death)
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGUSR1) != 0:  # PR_SET_PDEATHSIG
    sys.exit("btrsync hook watchdog: prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
line = sys.stdin.readline()  # the hook's group: written, or EOF when btrsync died before the hook
if not line.strip():
    os._exit(0)
group = int(line)
if dead or os.getppid() != parent:  # btrsync died meanwhile, or before the signal was armed
    end()
while True:
    signal.pause()
"""


def _watchdog() -> subprocess.Popen[bytes] | None:
    """The process that will end the next hook's process group if btrsync dies without doing it
    (SIGKILL); None where it cannot be started (the hook then runs unwatched, as it says)."""
    try:
        return subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid()), str(KILL_GRACE)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True, env={})
    except OSError as exc:
        log.warning("no watchdog for the hook's process group (%s): if btrsync is killed with SIGKILL while "
                    "the hook runs, the hook keeps running", exc.strerror or exc)
        return None


def _watch(watchdog: subprocess.Popen[bytes] | None, pgid: int) -> None:
    if watchdog is None:
        return
    assert watchdog.stdin is not None
    try:
        watchdog.stdin.write(f"{pgid}\n".encode())
        watchdog.stdin.flush()
    except OSError as exc:  # it died: the hook runs unwatched
        log.warning("the hook's watchdog is gone (%s): if btrsync is killed with SIGKILL while the hook runs, "
                    "the hook keeps running", exc.strerror or exc)


def _end_watchdog(watchdog: subprocess.Popen[bytes] | None) -> None:
    if watchdog is not None:
        watchdog.kill()
        watchdog.wait()
        if watchdog.stdin is not None:
            watchdog.stdin.close()


def _kill_leftovers(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: subprocess.Popen[bytes], pgid: int) -> None:
    """SIGTERM to the hook's process group, SIGKILL after the grace period, then reap."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            # the leader is gone; its group may not be: finish the others off too
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
        break


def run_hooks(kind: str, hooks: Sequence[Sequence[str]], *, env: Mapping[str, str], timeout: float,
              max_output_lines: int = 200, stop_on_failure: bool = False) -> list[HookResult]:
    """Run the hooks of one kind in order; with ``stop_on_failure`` the first failure ends the list."""
    results = []
    for argv in hooks:
        result = run_hook(argv, kind=kind, env={**env, "BTRSYNC_HOOK": kind}, timeout=timeout,
                          max_output_lines=max_output_lines)
        results.append(result)
        if stop_on_failure and not result.ok:
            break
    return results


def env_for(job: str, status: str, *, targets: Sequence[str], subvolumes: Sequence[str] = (),
            snapshots: Sequence[str] = (), snapshot_dir: str = "", failed_targets: Sequence[str] = (),
            stream_bytes: int = 0, stored_bytes: int = 0, seconds: float = 0.0, error: str = "",
            dry_run: bool = False, path: Sequence[str] = (),
            base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a hook: btrsync's own, plus what describes the job and its run; the
    job's hook ``path`` directories in front of PATH (a unit's own PATH stays what it declares)."""
    env = dict(os.environ if base is None else base)
    if path:
        env["PATH"] = ":".join([*path, env.get("PATH") or os.defpath])
    env.update({
        "BTRSYNC_JOB": job,
        "BTRSYNC_STATUS": status,  # running (pre), ok, partial, failed
        "BTRSYNC_TARGETS": " ".join(targets),
        "BTRSYNC_FAILED_TARGETS": " ".join(failed_targets),
        "BTRSYNC_SUBVOLUMES": " ".join(subvolumes),
        "BTRSYNC_SNAPSHOT_DIR": snapshot_dir,
        "BTRSYNC_SNAPSHOTS": " ".join(snapshots),
        "BTRSYNC_STREAM_BYTES": str(stream_bytes),
        "BTRSYNC_STORED_BYTES": str(stored_bytes),
        "BTRSYNC_DURATION_SECONDS": f"{seconds:.1f}",
        # what a failing hook printed may hold anything: an environment value cannot hold NUL
        "BTRSYNC_ERROR": _printable(error)[:4000],
        "BTRSYNC_DRY_RUN": "1" if dry_run else "0",
    })
    return env


def _printable(text: str) -> str:
    """``text`` with control characters other than tab and newline shown as ``\\xNN``."""
    return "".join(c if c >= " " or c in "\t\n" else f"\\x{ord(c):02x}" for c in text.replace("\x7f", "\\x7f"))
