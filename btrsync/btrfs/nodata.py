"""``btrfs send --no-data``: a send stream without file data, to estimate a send's size cheaply."""

from __future__ import annotations

from btrsync.btrfs.send import SendProcess


class MetadataSend(SendProcess):
    """``SendProcess`` with ``--no-data``: every write becomes an UPDATE_EXTENT command that names
    the file offset and size it would have carried.  Only metadata is read."""

    def argv(self) -> list[str]:
        argv = super().argv()
        return [argv[0], "send", "--no-data", *argv[2:]]
