"""A real systemd for the tests: the host's own /usr booted by ``systemd-nspawn`` in a throwaway root.

``systemd-nspawn -D / --volatile=yes`` mounts a tmpfs as the container's root and only the host's
/usr into it, read-only; systemd (the host's version, 252 on Debian 12) boots from it in under a
second.  The container shares the host's network namespace (no ``--private-network``), so a
SeaweedFS server on the host's 127.0.0.1 is the container's too.  Bind-mounted in:

- the project checkout and the Python installation its venv points at, read-only, at the same
  paths (the units' ``ExecStart=`` names the venv's ``btrsync``);
- each test data directory, read-write, at the same path, recursively (a btrfs mounted under it
  on the host before the boot is mounted in the container too);
- a unit directory as ``/etc/systemd/system`` (tests write units there, then ``daemon-reload``);
- ``/dev/loop-control`` and every ``/dev/loopN`` node, so that restore drills can attach loop
  devices (a few free ones are added first: a node made after the boot is not in the container);
- a preset file disabling everything, so the first boot of the empty /etc enables no service.

The tests drive the booted system from the host with ``nsenter`` into its namespaces (``systemctl
start`` of a oneshot returns when the unit is done), so one boot serves every scenario of a test
module.  :meth:`Container.stop` powers it off (SIGTERM to nspawn), kills it after a grace period,
and detaches loop devices whose backing files are under the data directories; nspawn gets
SIGTERM when the test process dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.loopfs import detach_loops_under

ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
FREE_LOOPS = 16  # the other workers attach loop devices while the container runs: a drill must still find a free one with a node
LOOP_CTL_ADD = 0x4C80
# what a NixOS unit has on PATH when it declares nothing (systemd.services.<name>.path's default:
# coreutils findutils gnugrep gnused systemd), with Debian's /usr/bin as the store
NIXOS_BASE_PATH = ("coreutils", "findutils", "grep", "sed", "systemd")


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the systemd tests need root (systemd-nspawn)"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian package {'systemd-container' if 'nspawn' in tool else 'util-linux'})"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "/usr/lib/systemd/systemd is missing (Debian package systemd)"
    return None


def require_container() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI runs the systemd tests, but: {reason} (scripts/bootstrap installs systemd-container)")
    pytest.skip(reason)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: nspawn powers the container off


def _loop_numbers() -> list[int]:
    return sorted(int(m.group(1)) for p in Path("/dev").glob("loop*") if (m := re.fullmatch(r"loop(\d+)", p.name)))


def _ensure_free_loops(count: int) -> None:
    """At least ``count`` detached loop devices with a /dev node (LOOP_CTL_ADD for the missing)."""
    numbers = _loop_numbers()
    free = [n for n in numbers if not Path(f"/sys/block/loop{n}/loop/backing_file").exists()]
    missing = count - len(free)
    if missing <= 0:
        return
    fd = os.open("/dev/loop-control", os.O_RDWR)
    try:
        n = (numbers[-1] + 1) if numbers else 0
        while missing > 0:
            try:
                fcntl.ioctl(fd, LOOP_CTL_ADD, n)
                missing -= 1
            except OSError:
                pass  # that number exists already (another process added it)
            n += 1
    finally:
        os.close(fd)
    for _ in range(50):  # devtmpfs makes the nodes asynchronously
        if len(_loop_numbers()) >= len(numbers) + count - len(free):
            break
        time.sleep(0.05)


def python_roots() -> list[Path]:
    """The directories the venv's python needs: the checkout (editable install) and the base python."""
    roots = [ROOT, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent]
    out: list[Path] = []
    for r in roots:
        if any(r == o or o in r.parents for o in out) or r == Path("/usr") or Path("/usr") in r.parents:
            continue
        out = [o for o in out if r not in o.parents] + [r]
    return out


class Container:
    """One booted systemd; see the module docstring."""

    def __init__(self, workdir: Path, data: Sequence[Path]) -> None:
        self.workdir = workdir
        self.data = [Path(d) for d in data]
        self.units = workdir / "units"
        self.console = workdir / "console.log"
        self.machine = f"btrsync-{uuid.uuid4().hex[:10]}"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the container's PID 1, as the host sees it
        self.boot_seconds = 0.0

    # -- life cycle ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        preset = self.workdir / "preset"
        preset.mkdir(parents=True, exist_ok=True)
        (preset / "00-btrsync-test.preset").write_text("disable *\n")
        self.units.mkdir(parents=True, exist_ok=True)
        argv = ["systemd-nspawn", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit",
                f"--machine={self.machine}", "--quiet",
                f"--bind={self.units}:/etc/systemd/system",
                f"--bind-ro={preset}:/etc/systemd/system-preset"]
        argv += [f"--bind-ro={p}" for p in python_roots()]
        argv += [f"--bind={d}" for d in self.data]
        argv += ["--bind=/dev/loop-control"] + [f"--bind=/dev/loop{n}" for n in _loop_numbers()]
        return argv + ["-b", "systemd.firstboot=off", "systemd.show_status=false"]

    def start(self) -> Container:
        _ensure_free_loops(FREE_LOOPS)
        t0 = time.monotonic()
        with self.console.open("wb") as log:
            self.nspawn = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           preexec_fn=_die_with_parent)
        try:
            self._wait_booted(t0)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - t0
        return self

    def _init_pid(self) -> int:
        assert self.nspawn is not None
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            return 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^NSpid:\s+(.*)$", status, re.M)
            if m and m.group(1).split()[-1] == "1" and len(m.group(1).split()) > 1:
                return pid
        return 0

    def _wait_booted(self, t0: float) -> None:
        assert self.nspawn is not None
        while time.monotonic() - t0 < BOOT_TIMEOUT:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited ({self.nspawn.returncode}):\n{self.console_tail()}")
            self.pid = self.pid or self._init_pid()
            if self.pid:
                proc = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=BOOT_TIMEOUT)
                state = proc.stdout.strip()
                if state in ("running", "degraded"):
                    if state == "degraded":
                        failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
                        raise RuntimeError(f"the container booted degraded:\n{failed}")
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the container did not boot within {BOOT_TIMEOUT}s:\n{self.console_tail()}")

    def stop(self) -> None:
        """Power off (SIGTERM to nspawn), kill after STOP_TIMEOUT; detach the data's loop devices."""
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                self.nspawn.send_signal(signal.SIGTERM)
                try:
                    self.nspawn.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.nspawn.kill()
                    self.nspawn.wait(10)
        finally:
            detach_loops_under(self.data)

    def console_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- driving it ------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (all its namespaces, its root), as root."""
        assert self.pid, "the container is not running"
        environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
                   "SYSTEMD_COLORS": "0", **(env or {})}
        proc = subprocess.run(["nsenter", "-t", str(self.pid), "-a", *argv], capture_output=True, text=True,
                              env=environ, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode} in the container:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def systemctl(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def install(self, units: dict[str, str]) -> None:
        """Write unit files (name -> text) and reload."""
        for name, text in units.items():
            (self.units / name).write_text(text)
        self.systemctl("daemon-reload")

    def start_unit(self, unit: str, *, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``systemctl start``: for a oneshot, returns when it has run (non-zero when it failed)."""
        return self.systemctl("start", unit, check=False, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit], check=False).stdout

    def reset(self, *units: str) -> None:
        self.systemctl("reset-failed", *units, check=False)

    def wait_inactive(self, unit: str, timeout: float = 60) -> str:
        """Wait until ``unit`` is neither activating nor deactivating; its ActiveState then."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.show(unit, "ActiveState")["ActiveState"]
            if state not in ("activating", "deactivating", "reloading") or time.monotonic() > deadline:
                return state
            time.sleep(0.1)


# nixpkgs packages -> the Debian packages holding the same programs (the host's /usr plays the store)
DEBIAN_OF = {"coreutils": ["coreutils"], "findutils": ["findutils"], "grep": ["grep"], "sed": ["sed"],
             "systemd": ["systemd"], "btrfs-progs": ["btrfs-progs"], "zstd": ["zstd"],
             "openssh": ["openssh-client"], "rsync": ["rsync"], "util-linux": ["util-linux", "mount"],
             "bash": ["bash", "dash"],  # nixpkgs' bash has bin/sh too
             "bubblewrap": ["bubblewrap"]}


def nix_like_path(farm: Path, packages: Sequence[str]) -> str:
    """A PATH with only the programs of ``packages`` (nixpkgs names), as a NixOS unit has it: one
    directory of symlinks per package, from the Debian packages that hold those programs."""
    dirs = []
    for name in packages:
        bindir = farm / name / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        for deb in DEBIAN_OF[name]:
            files = subprocess.run(["dpkg", "-L", deb], capture_output=True, text=True, check=True).stdout.split()
            for f in files:
                p = Path(f)
                if p.parent.name in ("bin", "sbin") and (p.is_file() or p.is_symlink()) and os.access(p, os.X_OK):
                    link = bindir / p.name
                    if not link.exists():
                        link.symlink_to(p)
        dirs.append(str(bindir))
    return ":".join(dirs)
