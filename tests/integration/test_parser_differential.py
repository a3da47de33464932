"""Differential test of the send-stream parser against ``btrfs receive --dump`` on real streams.

Streams come from loopback btrfs: snapshots of trees made by ``tests.support.tree`` (hard links,
reflinks, sparse files, xattrs, fifos, odd names), sent full and incremental with protocol 1 and
2, and with ``--proto 2 --compressed-data`` from a filesystem mounted with ``compress=zstd`` (so
ENCODED_WRITE commands appear). Both parser implementations must accept every stream with the
same events, and every record of the dump must match the parser's event for the same command:
command, full path, and every value the dump prints (rendered from the event exactly as
btrfs-progs' ``cmds/receive-dump.c`` prints it, in UTC). WRITE data offsets are checked against
the files' content.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from btrsync.sendstream import parser
from btrsync.sendstream.format import Event
from tests.support import tree
from tests.support.loopfs import create_subvolume, snapshot

pytestmark = [pytest.mark.btrfs, pytest.mark.slow]

# the titles receive --dump prints (END prints nothing)
TITLES = {"subvol", "snapshot", "mkfile", "mkdir", "mknod", "mkfifo", "mksock", "symlink", "rename",
          "link", "unlink", "rmdir", "write", "clone", "set_xattr", "remove_xattr", "truncate",
          "chmod", "chown", "utimes", "update_extent", "encoded_write", "fallocate", "fileattr",
          "enable_verity"}

_ESCAPES = {7: b"a", 8: b"b", 0x1B: b"e", 0x0C: b"f", 0x0A: b"n", 0x0D: b"r", 0x09: b"t", 0x0B: b"v",
            0x20: b" ", 0x5C: b"\\"}
_UNESCAPES = {v[0]: k for k, v in _ESCAPES.items()}


# --- the dump -------------------------------------------------------------------------------------


def escape(raw: bytes) -> bytes:
    """receive-dump.c's print_path_escaped (C locale: only ASCII 0x20-0x7e is printable)."""
    out = bytearray()
    for c in raw:
        if c in _ESCAPES:
            out += b"\\" + _ESCAPES[c]
        elif 0x20 <= c < 0x7F:
            out.append(c)
        else:
            out += b"\\%03o" % c
    return bytes(out)


def read_escaped(line: bytes, i: int) -> tuple[bytes, int]:
    """Unescape from ``i`` up to the first unescaped space; return the raw bytes and the index."""
    out = bytearray()
    while i < len(line) and line[i] != 0x20:
        c = line[i]
        if c != 0x5C:
            out.append(c)
            i += 1
        elif line[i + 1] in _UNESCAPES:
            out.append(_UNESCAPES[line[i + 1]])
            i += 2
        else:
            out.append(int(line[i + 1:i + 4], 8))
            i += 4
    return bytes(out), i


def dump_records(stream: Path) -> list[tuple[str, bytes, bytes]]:
    """``(title, raw full path, the rest of the record)`` for every record of the dump.

    A record is one line, except when a raw value (xattr data) holds a newline: a line that does
    not start with a known title padded to 16 columns and a path continues the previous record.
    """
    proc = subprocess.run(["btrfs", "receive", "--dump", "-f", str(stream)], capture_output=True,
                          env={**os.environ, "TZ": "UTC", "LC_ALL": "C"}, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    raw: list[bytes] = []
    for line in proc.stdout.split(b"\n"):
        title = line[:16].rstrip(b" ").decode(errors="replace")
        if title in TITLES and line[16:18] == b"./" and line[len(title):16].strip() == b"":
            raw.append(line)
        else:
            assert raw, f"dump output starts with {line[:80]!r}"
            raw[-1] += b"\n" + line
    raw[-1] = raw[-1].removesuffix(b"\n")  # the final newline
    records = []
    for rec in raw:
        title = rec[:16].rstrip(b" ").decode()
        path, i = read_escaped(rec, 16)
        records.append((title, path, rec[i:].lstrip(b" ")))
    return records


# --- the same records from the parser's events ------------------------------------------------------


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def path_cat(p1: bytes, p2: bytes) -> bytes:
    """common/path-utils.c path_cat_out."""
    return p1.removesuffix(b"/") + b"/" + p2.removesuffix(b"/")


def _time(ts: tuple[int, int]) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(ts[0]))


def expected_records(events: list[Event]) -> list[tuple[str, bytes, bytes]]:
    records = []
    subvol = b"."
    for ev in events:
        a: dict[str, Any] = ev.attrs
        c = ev.cmd
        if c == "end":
            continue
        if c in ("subvol", "snapshot"):
            subvol = path_cat(b".", _b(ev.path))
            full = subvol
        else:
            full = path_cat(subvol, _b(ev.path))
        if c == "subvol":
            rest = f"uuid={a['uuid']} transid={a['ctransid']}".encode()
        elif c == "snapshot":
            rest = (f"uuid={a['uuid']} transid={a['ctransid']} parent_uuid={a['clone_uuid']} "
                    f"parent_transid={a['clone_ctransid']}").encode()
        elif c in ("mkfile", "mkdir", "mkfifo", "mksock", "unlink", "rmdir"):
            rest = b""
        elif c == "mknod":
            rest = f"mode={a['mode']:o} dev=0x{a['rdev']:x}".encode()
        elif c in ("symlink", "link"):
            rest = b"dest=" + escape(_b(a["path_link"]))
        elif c == "rename":
            rest = b"dest=" + escape(path_cat(subvol, _b(a["path_to"])))
        elif c == "write":
            rest = f"offset={a['file_offset']} len={a['data_len']}".encode()
        elif c == "clone":
            rest = (f"offset={a['file_offset']} len={a['clone_len']} from=".encode()
                    + path_cat(subvol, _b(a["clone_path"])) + f" clone_offset={a['clone_offset']}".encode())
        elif c == "set_xattr":
            data = a["xattr_data"]
            rest = (b"name=" + _b(a["xattr_name"]) + b" data=" + data.split(b"\0")[0]
                    + f" len={len(data)}".encode())
        elif c == "remove_xattr":
            rest = b"name=" + _b(a["xattr_name"])
        elif c == "truncate":
            rest = f"size={a['size']}".encode()
        elif c == "chmod":
            rest = f"mode={a['mode']:o}".encode()
        elif c == "chown":
            rest = f"gid={a['gid']} uid={a['uid']}".encode()
        elif c == "utimes":
            rest = f"atime={_time(a['atime'])} mtime={_time(a['mtime'])} ctime={_time(a['ctime'])}".encode()
        elif c == "update_extent":
            rest = f"offset={a['file_offset']} len={a['size']}".encode()
        elif c == "encoded_write":
            rest = (f"offset={a['file_offset']} len={a['data_len']}, unencoded_file_len="
                    f"{a['unencoded_file_len']}, unencoded_len={a['unencoded_len']}, unencoded_offset="
                    f"{a['unencoded_offset']}, compression={a.get('compression', 0)}, "
                    f"encryption={a.get('encryption', 0)}").encode()
        elif c == "fallocate":
            rest = f"mode={a['fallocate_mode']} offset={a['file_offset']} len={a['size']}".encode()
        elif c == "fileattr":
            rest = f"fileattr=0x{a['fileattr']}".encode()  # sic: receive-dump.c prints %llu after 0x
        else:  # enable_verity
            rest = (f"algorithm={a['verity_algorithm']} block_size={a['verity_block_size']} "
                    f"salt_len={len(a['verity_salt_data'])} sig_len={len(a['verity_sig_data'])}").encode()
        records.append((c, full, rest))
    return records


# --- streams --------------------------------------------------------------------------------------


def send(out: Path, snap: Path, *, parent: Path | None = None, args: tuple[str, ...] = ()) -> Path:
    cmd = ["btrfs", "send", "-q", *args]
    if parent is not None:
        cmd += ["-p", str(parent)]
    subprocess.run([*cmd, "-f", str(out), str(snap)], check=True, capture_output=True)
    return out


def parse_both(data: bytes, rng: random.Random) -> list[Event]:
    """Both implementations, each in its own random chunking; they must agree."""
    results = []
    impls = [parser.PyStreamParser] + ([parser.NativeStreamParser] if parser.native_available else [])
    for impl in impls:
        p = impl()
        events: list[Event] = []
        pos = 0
        while pos < len(data):
            step = rng.choice([1 << 20, 4 << 20, 65537, 7, 131072 + 3])
            events += p.feed(data[pos:pos + step])
            pos += step
        p.finish()
        assert p.bytes == len(data) and p.commands == len(events) and p.ended
        results.append([tuple(e) for e in events])
    assert all(r == results[0] for r in results)
    return events


def check_stream(stream: Path, snap: Path | None, rng: random.Random) -> dict[str, int]:
    """Parse ``stream``, compare with its dump; for a full stream of ``snap``, check WRITE data."""
    data = stream.read_bytes()
    events = parse_both(data, rng)
    ours = expected_records(events)
    theirs = dump_records(stream)
    for i, (mine, dumped) in enumerate(zip(ours, theirs, strict=False)):
        assert mine == dumped, f"record {i} differs:\n parser: {mine!r}\n   dump: {dumped!r}"
    assert len(ours) == len(theirs)
    counts: dict[str, int] = {}
    for ev in events:
        counts[ev.cmd] = counts.get(ev.cmd, 0) + 1
    if snap is not None:  # data offsets locate the file data (full streams: final names)
        checked = 0
        for ev in events:
            if ev.cmd != "write":
                continue
            f = snap / _b(ev.path).decode("utf-8", "surrogateescape")
            if not f.is_file() or f.is_symlink():
                continue
            with open(f, "rb") as fh:
                fh.seek(ev.attrs["file_offset"])
                want = fh.read(ev.attrs["data_len"])
            off = ev.attrs["data_offset"]
            assert data[off:off + ev.attrs["data_len"]] == want, (ev.path, ev.attrs)
            checked += 1
        assert checked >= counts["write"] * 0.9, (checked, counts["write"])
    return counts


def _snapshots(fs: Path, seed: int) -> list[Path]:
    sv = create_subvolume(fs / "data")
    tree.populate(sv, seed)
    snaps = [snapshot(sv, fs / "snap-0")]
    for g in (1, 2):
        tree.mutate(sv, seed, g)
        snaps.append(snapshot(sv, fs / f"snap-{g}"))
    return snaps


def test_dump_matches_protocol_1_and_2(btrfs_factory, tmp_path: Path) -> None:
    fs = btrfs_factory("1G")
    s0, s1, s2 = _snapshots(fs, 31)
    rng = random.Random(31)
    total: dict[str, int] = {}
    for name, snap, parent, args, full in [
        ("v1-full", s0, None, ("--proto", "1"), True),
        ("v1-incr", s1, s0, ("--proto", "1"), False),
        ("v2-full", s1, None, ("--proto", "2"), True),
        ("v2-incr", s2, s1, ("--proto", "2"), False),
    ]:
        stream = send(tmp_path / f"{name}.stream", snap, parent=parent, args=args)
        counts = check_stream(stream, snap if full else None, rng)
        print(name, stream.stat().st_size, counts)
        for cmd, n in counts.items():
            total[cmd] = total.get(cmd, 0) + n
    # the trees exercise most of the format
    for cmd in ("subvol", "snapshot", "mkfile", "mkdir", "mkfifo", "symlink", "rename", "link",
                "unlink", "rmdir", "write", "clone", "set_xattr", "remove_xattr", "truncate", "chmod",
                "chown", "utimes", "end"):
        assert total.get(cmd), f"no {cmd} command in any stream: {total}"


def test_dump_matches_compressed_protocol_2(btrfs_factory, tmp_path: Path) -> None:
    fs = btrfs_factory("1G", label="zsrc", mount_options=["compress=zstd"])
    s0, s1, s2 = _snapshots(fs, 47)
    rng = random.Random(47)
    total: dict[str, int] = {}
    for name, snap, parent, args in [
        ("v2z-full", s0, None, ("--proto", "2", "--compressed-data")),
        ("v2z-incr", s1, s0, ("--proto", "2", "--compressed-data")),
        ("v2z-incr2", s2, s1, ("--proto", "2", "--compressed-data")),
        ("v1-incr-of-compressed", s2, s1, ("--proto", "1")),
    ]:
        stream = send(tmp_path / f"{name}.stream", snap, parent=parent, args=args)
        for cmd, n in check_stream(stream, None, rng).items():
            total[cmd] = total.get(cmd, 0) + n
    assert total.get("encoded_write", 0) > 10, total
