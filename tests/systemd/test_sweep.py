"""The systemd fixture's sweep of data directories that a killed test run left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.systemd.conftest import DATA_PREFIX, OWNER, sweep_dead_data_dirs


def test_only_the_directories_of_dead_runs_are_swept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process
    dirs = {}
    for name, owner in (("dead", str(dead.pid)), ("alive", str(os.getpid())), ("older-code", None)):
        d = dirs[name] = tmp_path / f"{DATA_PREFIX}{name}"
        (d / "fs").mkdir(parents=True)
        if owner is not None:
            (d / OWNER).write_text(owner)
    old = tmp_path / f"{DATA_PREFIX}older-code-old"
    old.mkdir()
    os.utime(old, (0, 0))  # without an owner file and over an hour old: a killed run of older code
    assert sorted(p.name for p in sweep_dead_data_dirs(tmp_path)) == sorted([old.name, dirs["dead"].name])
    assert dirs["alive"].is_dir() and dirs["older-code"].is_dir()
    assert not dirs["dead"].exists() and not old.exists()
