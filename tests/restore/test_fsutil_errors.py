"""Which failed metadata calls are notes (the destination cannot hold it) and which fail a restore."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

from btrsync.restore.fsutil import metadata_unsupported


def test_enospc_is_a_note_only_where_space_is_left(tmp_path: Path) -> None:
    """ext4 answers ENOSPC when an inode has no room for one more xattr: a note.  A full disk
    answers it too: that restore failed, it must not end "restored" with a note."""
    enospc = OSError(errno.ENOSPC, "No space left on device")
    assert metadata_unsupported(OSError(errno.EOPNOTSUPP, "x"), str(tmp_path))
    assert not metadata_unsupported(OSError(errno.EIO, "x"), str(tmp_path))
    assert metadata_unsupported(enospc, str(tmp_path))
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/fill", "bs=64k"], capture_output=True)
        assert not metadata_unsupported(enospc, str(full))
    finally:
        subprocess.run(["umount", str(full)], check=True)
