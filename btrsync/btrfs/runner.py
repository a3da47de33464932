"""Run the ``btrfs`` command and turn its failures into errors that say what to do."""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from collections.abc import Sequence

from btrsync.errors import BtrfsError

log = logging.getLogger(__name__)


def btrfs_binary() -> str:
    path = shutil.which("btrfs")
    if not path:
        raise BtrfsError("the 'btrfs' command is not installed (apt-get install btrfs-progs)")
    return path


# btrfs's words -> what the operator can do about it
HINTS = (
    ("cross-device link", "the snapshot directory must be on the same btrfs filesystem as the subvolume"),
    ("operation not permitted", "run btrsync as root"),
    ("permission denied", "run btrsync as root"),
    ("read-only file system", "the filesystem is mounted read-only; remount it read-write"),
    ("no space left", "the filesystem is full; free space (delete old snapshots) and retry"),
    ("file exists", "a file or subvolume of that name already exists; move it away"),
    ("not a btrfs", "the path is not on a btrfs filesystem"),
    ("no such file or directory", "check the path"),
    ("directory not empty", "a subvolume inside it must be deleted first"),
)


def hint_for(message: str) -> str:
    lowered = message.lower()
    return next((f" ({hint})" for words, hint in HINTS if words in lowered), "")


def run_btrfs(args: Sequence[str], *, what: str) -> str:
    """Run ``btrfs ARGS``; on failure raise ``BtrfsError`` naming ``what``, btrfs's own words and,
    where known, what to do."""
    argv = [btrfs_binary(), *args]
    log.debug("run %s", " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit {proc.returncode}"
        raise BtrfsError(f"{what} failed: {detail}{hint_for(detail)}")
    return proc.stdout


@functools.cache
def progs_version() -> str:
    """btrfs-progs' version, asked once per process (the send options and every manifest name it)."""
    return run_btrfs(["--version"], what="btrfs --version").strip().split()[-1]
