"""What the parts of the applier share: the tree, the notes, and what the current link is."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from btrsync.restore import fsutil
from btrsync.restore.apply.dirtimes import DirTimes
from btrsync.restore.meta import Notes
from btrsync.restore.paths import Tree


@dataclass
class LinkStats:
    commands: int = 0
    bytes_written: int = 0
    bytes_cloned: int = 0
    parent_clones: int = 0
    preserved_bytes: int = 0


@dataclass
class ApplyState:
    """The tree being changed and the link being applied to it; ``work_fd`` is a private directory
    on the same filesystem (pins and preserved ranges live there)."""

    tree: Tree
    work_fd: int
    notes: Notes
    privileged: bool
    caps: fsutil.Caps = field(default_factory=fsutil.Caps)
    stats: LinkStats = field(default_factory=LinkStats)
    backup: str = ""  # the backup id of the link being applied, for messages
    expect_uuid: str | None = None  # the snapshot the link's stream must send
    expect_parent: str | None = None  # and its parent (None: a full)
    times: DirTimes = field(default_factory=DirTimes)  # this link's directory times
    dir_modes: DirTimes = field(default_factory=DirTimes)  # unprivileged: modes without u+rwx, set at the end

    @staticmethod
    def default_privileged() -> bool:
        return os.geteuid() == 0
