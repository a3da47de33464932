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
    # ``where`` names the entry whose metadata failed; the free space is its directory's
    assert metadata_unsupported(OSError(errno.EOPNOTSUPP, "x"), str(tmp_path / "entry"))
    assert not metadata_unsupported(OSError(errno.EIO, "x"), str(tmp_path / "entry"))
    assert metadata_unsupported(enospc, str(tmp_path / "entry"))
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/fill", "bs=64k"], capture_output=True)
        assert not metadata_unsupported(enospc, str(full / "fill"))
        (tmp_path / "link").symlink_to(full / "fill")  # a symlink is judged by where it is, not its target
        assert metadata_unsupported(enospc, str(tmp_path / "link"))
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_looking_for_subvolumes_holds_one_descriptor_per_level(tmp_path: Path) -> None:
    """The walk that --overwrite makes before replacing a tree opened every subdirectory of a
    directory before visiting any: 1,000 of them ran out of descriptors ("Too many open files")."""
    import sys

    wide = tmp_path / "t"
    for i in range(1500):
        (wide / str(i)).mkdir(parents=True)
    (wide / "7" / "a" / "b").mkdir(parents=True)
    code = ("import os, resource, sys; from btrsync.restore import place; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)); "
            f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY); print(place.subvolumes_within(fd, 't'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
