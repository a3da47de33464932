"""Run the ``btrfs`` command and turn its failures into errors that say what to do."""

from __future__ import annotations

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


def run_btrfs(args: Sequence[str], *, what: str) -> str:
    """Run ``btrfs ARGS``; on failure raise ``BtrfsError`` naming ``what`` and btrfs's own words."""
    argv = [btrfs_binary(), *args]
    log.debug("run %s", " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BtrfsError(f"{what} failed: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout


def progs_version() -> str:
    return run_btrfs(["--version"], what="btrfs --version").strip().split()[-1]
