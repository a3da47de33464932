"""Which cache directories a new mount removes (``mount/session.py``): those of mounts that have
ended on this host, never another host's (a cache directory on a disk hosts share)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from btrsync.mount.session import SESSION_PREFIX, _session_dir, _session_owner


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
