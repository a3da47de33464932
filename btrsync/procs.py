"""This host's processes: whether a pid runs, and the boot they belong to.

Below ``catalog/`` (upload leases: a lease of this host and boot is live while its pid runs) and
``ops/restore`` (a restore's work directory is another restore's while its pid runs).
"""

from __future__ import annotations

import os
from pathlib import Path


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``), ``""`` where it cannot be read."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
