"""One chain's links, applied in order: the link loop, the stream's identity, the dispatch.

Each chunk is parsed as it comes; every command goes to its handler (names, data, metadata) with
the stream bytes its data may live in. A stream must start with one subvol (a full, only first)
or snapshot (an incremental on exactly the tree's last link, sent on the same ctransid); a
refused path, an undecodable extent or a cut stream becomes a :class:`DamageError` naming the
command, its path and its byte offset; an I/O error a :class:`RestoreError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from btrsync.errors import DamageError
from btrsync.restore import RestoreError
from btrsync.restore.apply.data import FileData
from btrsync.restore.apply.metadata import Metadata
from btrsync.restore.apply.names import Names
from btrsync.restore.apply.pins import ParentPins
from btrsync.restore.apply.state import ApplyState, LinkStats
from btrsync.restore.apply.streambytes import StreamBytes
from btrsync.restore.decompress import DecompressError
from btrsync.restore.meta import Notes
from btrsync.restore.paths import PathRefused, Tree
from btrsync.restore.fsutil import Caps
from btrsync.sendstream.checker import check_parent_unchanged
from btrsync.sendstream.parser import StreamError, StreamParser


class Applier:
    """Applies the links of one chain, in order, to ``tree``; ``work_fd`` is a private directory
    on the same filesystem (pins and preserved ranges live there)."""

    def __init__(self, tree: Tree, work_fd: int, notes: Notes, *, privileged: bool | None = None) -> None:
        self.state = ApplyState(tree, work_fd, notes,
                                ApplyState.default_privileged() if privileged is None else privileged)
        self.stream_uuid: str | None = None  # the uuid of the last link applied
        self._ctransid: Any = None  # the ctransid its stream named: what the next link must be sent on
        self._link_index = 0
        self._first = True
        self.pins = ParentPins(self.state)
        self.files = FileData(self.state, self.pins)
        self.names = Names(self.state, self.files)
        self.meta = Metadata(self.state, self.files)
        n, f, m = self.names, self.files, self.meta
        self._handlers: dict[str, Callable[[Any, StreamBytes], None]] = {
            "subvol": self._subvol, "snapshot": self._snapshot, "mkfile": n.mkfile,
            "mkdir": n.mkdir, "mknod": n.mknod, "mkfifo": n.mkfifo, "mksock": n.mksock,
            "symlink": n.symlink, "rename": n.rename, "link": n.link, "unlink": n.unlink,
            "rmdir": n.rmdir, "write": f.write, "clone": f.clone, "truncate": f.truncate,
            "chmod": m.chmod, "chown": m.chown, "utimes": m.utimes,
            "set_xattr": m.set_xattr, "remove_xattr": m.remove_xattr,
            "update_extent": _nothing, "fallocate": f.fallocate, "fileattr": m.fileattr,
            "encoded_write": f.encoded_write, "enable_verity": m.enable_verity, "end": _nothing,
        }

    @property
    def privileged(self) -> bool:
        return self.state.privileged

    @privileged.setter
    def privileged(self, value: bool) -> None:
        self.state.privileged = value

    @property
    def caps(self) -> Caps:
        return self.state.caps

    @property
    def stats(self) -> LinkStats:
        return self.state.stats

    # -- one link ---------------------------------------------------------------------------------
    def apply_link(self, chunks: Iterable[bytes], *, backup_id: str, snapshot_uuid: str,
                   parent_uuid: str | None, parent_clones: dict[str, list[tuple[int, int]]] | None = None,
                   on_chunk: Callable[[int], None] | None = None) -> LinkStats:
        """Apply one link's stream (the chunks in order, each already authenticated)."""
        state = self.state
        state.backup = backup_id
        state.expect_uuid, state.expect_parent = snapshot_uuid, parent_uuid
        self._first = True
        state.stats = LinkStats()
        self.meta.start_link()
        self._link_index += 1
        try:
            if parent_clones:
                self.pins.pin(parent_clones, self._link_index)
            parser = StreamParser()
            window = StreamBytes()
            upto = 0
            for chunk in chunks:
                window.add(chunk)
                try:
                    events = parser.feed(chunk)
                except StreamError as exc:
                    raise DamageError(f"backup {backup_id}: {exc}") from None
                for ev in events:
                    self._apply(ev, window)
                if events:
                    upto = events[-1].offset + events[-1].size
                window.consumed(upto)
                if on_chunk is not None:
                    on_chunk(len(chunk))
            try:
                parser.finish()
            except StreamError as exc:
                raise DamageError(f"backup {backup_id}: {exc}") from None
            self.files.close()
            self.meta.replay_dir_times()
        finally:
            self.files.close()
            self.pins.unpin()
        self.stream_uuid = snapshot_uuid
        return state.stats

    def finish(self) -> None:
        """After the last link: the directory modes held back for an unprivileged restore."""
        self.meta.finish()

    def _apply(self, ev: Any, window: StreamBytes) -> None:
        self.state.stats.commands += 1
        where = f"backup {self.state.backup}: {ev.cmd} {ev.path!r} (command at byte {ev.offset})"
        if self._first and ev.cmd not in ("subvol", "snapshot"):
            raise DamageError(f"{where}: the stream does not start with subvol or snapshot")
        try:
            self._handlers[ev.cmd](ev, window)
        except PathRefused as exc:
            raise DamageError(f"{where} refused: {exc.reason}; the stream tries to reach outside the "
                              "restore directory or through a symlink (nothing was written outside it)") from None
        except DecompressError as exc:
            raise DamageError(f"{where}: cannot decompress the extent: {exc}") from None
        except EOFError as exc:
            raise DamageError(f"{where}: {exc}") from None
        except OSError as exc:
            raise RestoreError(f"{where} failed: {exc.strerror or exc}"
                               + (f" ({exc.filename})" if exc.filename else "")) from None

    # -- the stream's identity ------------------------------------------------------------------
    def _subvol(self, ev: Any, _w: StreamBytes) -> None:
        self._start(ev, incremental=False)

    def _snapshot(self, ev: Any, _w: StreamBytes) -> None:
        self._start(ev, incremental=True)

    def _start(self, ev: Any, *, incremental: bool) -> None:
        state = self.state
        where = f"backup {state.backup}: {ev.cmd} {ev.path!r}"
        if not self._first:
            raise DamageError(f"{where}: a second subvol/snapshot command in one stream")
        self._first = False
        if str(ev.attrs["uuid"]) != state.expect_uuid:
            raise DamageError(f"{where}: the stream sends snapshot {ev.attrs['uuid']}, the manifest "
                              f"says {state.expect_uuid}")
        if incremental != (state.expect_parent is not None):
            raise DamageError(f"{where}: a {'incremental' if incremental else 'full'} stream where "
                              f"the manifest says {'incremental' if state.expect_parent else 'full'}")
        if incremental:
            parent = str(ev.attrs["clone_uuid"])
            if parent != state.expect_parent or parent != self.stream_uuid:
                raise DamageError(f"{where}: the stream's parent is {parent}, but the tree holds "
                                  f"{self.stream_uuid} (the manifest says {state.expect_parent})")
            check_parent_unchanged(where, ev.attrs.get("clone_ctransid"), self._ctransid)
        elif self.stream_uuid is not None:
            raise DamageError(f"{where}: a full stream in the middle of a chain")
        self._ctransid = ev.attrs.get("ctransid")


def _nothing(_ev: Any, _w: StreamBytes) -> None:
    return
