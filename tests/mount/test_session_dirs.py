"""Which cache directories a new mount removes (``mount/session.py``): those of mounts that have
ended on this host, never another host's (a cache directory on a disk hosts share)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import btrsync
from btrsync.mount.session import SESSION_PREFIX, _session_dir, _session_owner

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(Path(btrsync.__file__).parents[1])}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_new_mount_removes_the_caches_of_ended_mounts_of_this_host_only(tmp_path: Path) -> None:
    _, host, boot = _session_owner()
    dead, alive = _dead_pid(), 1  # init is alive on every host, and another host's pid 1 too
    other_host, other_boot = "0badc0de", "b00tb00t"
    cases = {
        f"{dead}-{host}-{boot}-k1": "removed",           # this host, this boot, its process gone
        f"{alive}-{host}-{boot}-k2": "kept",             # still running
        f"{dead}-{other_host}-{boot}-k3": "kept",        # another host's: its pid means nothing here
        f"{alive}-{other_host}-{other_boot}-k4": "kept",
        f"{alive}-{host}-{other_boot}-k5": "removed",    # this host before its last reboot
        f"{dead}-legacy01": "removed",                   # named before hosts were recorded: by pid
        f"{alive}-legacy02": "kept",
    }
    for name in cases:
        (tmp_path / f"{SESSION_PREFIX}{name}").mkdir()
        (tmp_path / f"{SESSION_PREFIX}{name}" / "cached").write_bytes(b"plaintext")
    (tmp_path / "not-a-session").mkdir()

    mine, fd = _session_dir(tmp_path)
    try:
        left = {p.name for p in tmp_path.iterdir()}
        assert left == ({f"{SESSION_PREFIX}{n}" for n, fate in cases.items() if fate == "kept"}
                        | {"not-a-session", mine.name})
        assert mine.name.startswith(f"{SESSION_PREFIX}{_session_owner()[0]}-{host}-{boot}-")
        assert mine.stat().st_mode & 0o777 == 0o700
    finally:
        os.close(fd)


# Sessions made by real processes in surroundings that differ from the judging mount's (found by a
# hostile review): boot id unreadable, another pid namespace, a renamed host.
# a live mount stand-in: makes its session directory with the real code, says where, stays alive
HOLD = ("import sys, time, pathlib\nfrom btrsync.mount.session import _session_dir\n"
        "p, fd = _session_dir(pathlib.Path(sys.argv[1])); (p / 'cached').write_bytes(b'plaintext')\n"
        "print(p.name, flush=True); time.sleep(60)\n")
# a mount killed (SIGKILL) after making its session directory: the directory stays, the pid is gone
DIE = ("import sys, os, pathlib\nfrom btrsync.mount.session import _session_dir\n"
       "p, fd = _session_dir(pathlib.Path(sys.argv[1])); print(p.name, flush=True); os._exit(0)\n")


def _start(prefix: list[str], code: str, root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([*prefix, PY, "-c", code, str(root)], stdout=subprocess.PIPE, text=True, env=ENV)
    name = proc.stdout.readline().strip()
    assert name, "the helper made no session directory"
    return proc, name


def test_a_live_mount_that_cannot_read_boot_id_keeps_its_cache(tmp_path: Path) -> None:
    # e.g. a sandbox/unit where /proc/sys is hidden (systemd ProcSubset=pid), same host, same cache dir
    masked = ["unshare", "--mount", "sh", "-c",
              'mount --bind /dev/null /proc/sys/kernel/random/boot_id && exec "$@"', "sh"]
    proc, name = _start(masked, HOLD, tmp_path)
    try:
        assert "-noboot-" in name
        mine, fd = _session_dir(tmp_path)  # an ordinary 'btrsync mount' on the same host
        os.close(fd)
        assert (tmp_path / name / "cached").exists(), f"live session {name} (pid {proc.pid}) was removed"
    finally:
        proc.kill()
        proc.wait()


def test_a_live_mount_in_the_hosts_pid_namespace_keeps_its_cache(tmp_path: Path) -> None:
    # same host name and boot (a container sharing the host's name, e.g. --network host), own pid namespace
    proc, name = _start([], HOLD, tmp_path)
    try:
        inner = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", PY, "-c",
                                "import sys, pathlib\nfrom btrsync.mount.session import _session_dir\n"
                                "_session_dir(pathlib.Path(sys.argv[1]))", str(tmp_path)],
                               env=ENV, timeout=60)
        assert inner.returncode == 0
        assert (tmp_path / name / "cached").exists(), f"live session {name} (pid {proc.pid}) was removed"
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_mounts_cache_goes_after_a_host_rename(tmp_path: Path) -> None:
    # the host was renamed (or a container got a new random hostname) after a mount was killed
    renamed = ["unshare", "--uts", "sh", "-c", 'hostname old-name && exec "$@"', "sh"]
    proc, name = _start(renamed, DIE, tmp_path)
    proc.wait()
    mine, fd = _session_dir(tmp_path)
    os.close(fd)
    assert not (tmp_path / name).exists(), f"dead session {name} of this machine kept (plaintext cache)"
