"""The audit log survives a record that was cut short (a full disk, a crash mid-write)."""

from __future__ import annotations

from pathlib import Path

from btrsync.audit import AuditLog, read_audit


def test_a_record_cut_short_neither_swallows_the_next_nor_breaks_reading(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, syslog=False)
    log.record("prune", key="backups/a")
    with open(tmp_path / "audit.log", "ab") as f:
        f.write(b'{"event": "clean", "key": "data/x')  # what ENOSPC or a power cut left
    log.record("clean", key="data/y")
    entries = read_audit(tmp_path)
    assert [e["event"] for e in entries] == ["prune", "unreadable", "clean"]
    assert entries[1]["line"] == 2 and entries[1]["text"].startswith('{"event": "clean"')
    assert entries[2]["key"] == "data/y"
    assert (tmp_path / "audit.log").stat().st_mode & 0o777 == 0o600
