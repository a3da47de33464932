"""Check the decrypted send stream of one backup against its manifest, chunk by chunk.

The parser validates the stream (header, framing, CRC32C, attributes, END last); this adds what
the manifest claims: a full backup's stream starts with SUBVOL of the backed-up snapshot, an
incremental's with SNAPSHOT of it *on the parent the manifest names* (its clone uuid is the
parent's snapshot uuid), so a stream stored under the wrong chain link is found without btrfs.
"""

from __future__ import annotations

from typing import Any

from btrsync.catalog.manifest import Manifest
from btrsync.errors import DamageError
from btrsync.sendstream.parser import StreamError, StreamParser


class ManifestStreamCheck:
    def __init__(self, manifest: Manifest, parent_ctransid: Any = None) -> None:
        self.manifest = manifest
        self.parent_ctransid = parent_ctransid  # from the parent's stream, when it was checked too
        self.ctransid: Any = None  # this stream's, once its first command is seen
        self.parser = StreamParser()
        self.first_seen = False
        self.commands = 0

    def _where(self) -> str:
        return f"the stream of backup {self.manifest.backup_id}"

    def feed(self, raw: Any) -> None:
        try:
            events = self.parser.feed(raw)
        except StreamError as exc:
            raise DamageError(f"{self._where()}: {exc}") from None
        self.commands += len(events)
        if events and not self.first_seen:
            self.first_seen = True
            self._check_first(events[0])

    def finish(self) -> None:
        try:
            self.parser.finish()
        except StreamError as exc:
            raise DamageError(f"{self._where()}: {exc}") from None
        if not self.first_seen:
            raise DamageError(f"{self._where()} holds no command")

    def _check_first(self, ev: Any) -> None:
        m = self.manifest
        want = "subvol" if m.parent_uuid is None else "snapshot"
        if ev.cmd != want:
            raise DamageError(f"{self._where()} starts with {ev.cmd.upper()}, but the manifest describes "
                              f"{'a full backup' if want == 'subvol' else 'an incremental'}")
        if ev.attrs.get("uuid") != m.snapshot_uuid:
            raise DamageError(f"{self._where()} sends subvolume {ev.attrs.get('uuid')}, the manifest names "
                              f"{m.snapshot_uuid}")
        if want == "snapshot" and ev.attrs.get("clone_uuid") != m.parent_uuid:
            raise DamageError(f"{self._where()} is an incremental on {ev.attrs.get('clone_uuid')}, the manifest "
                              f"names parent {m.parent_uuid} ({m.parent_id})")
        if want == "snapshot" and self.parent_ctransid is not None:
            check_parent_unchanged(self._where(), ev.attrs.get("clone_ctransid"), self.parent_ctransid)
        self.ctransid = ev.attrs.get("ctransid")


def check_parent_unchanged(where: str, clone_ctransid: Any, parent_ctransid: Any) -> None:
    """An incremental names its parent's ctransid when it was sent (SNAPSHOT's clone_ctransid); the
    parent's own stream names it when the parent was sent (SUBVOL/SNAPSHOT's ctransid). They differ
    when the parent snapshot was changed in between (made writable and back): the incremental is
    a diff from a tree no backup holds, and replaying it would give a wrong tree without an error."""
    if clone_ctransid != parent_ctransid:
        raise DamageError(f"{where}: sent on its parent as changed after the parent was backed up (parent "
                          f"ctransid {clone_ctransid} when this was sent, {parent_ctransid} in the parent's "
                          "backup): it cannot be restored correctly; restore the parent or an older backup")


def for_manifest(manifest: Manifest, parent_ctransid: Any = None) -> ManifestStreamCheck:
    return ManifestStreamCheck(manifest, parent_ctransid)
