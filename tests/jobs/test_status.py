"""status verdicts (ok, stale, failing, never) and --check's monitoring-plugin codes, from records."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from btrsync.cli.main import main
from btrsync.jobs.records import JobRecords, iso
from btrsync.jobs.status import check, status_rows
from tests.jobs.conftest import T0, config_from

CONFIG = """
state_dir = "{state}"
metrics_dir = ""
[targets.usb]
url = "file:///mnt/usb"
[targets.b2]
url = "s3://bucket/x"
[jobs.home]
subvolumes = ["/home"]
snapshot_dir = "/.snapshots"
targets = ["usb", "b2"]
"""


def record(newest_hours_ago: float | None, failures: int = 0, status: str = "ok") -> dict:
    rec: dict = {"url": "file:///mnt/usb", "failures_since_success": failures,
                 "last_run": {"time": iso(T0), "status": status, "seconds": 12.0, "error": "boom" if failures else None}}
    if newest_hours_ago is not None:
        newest = T0 - timedelta(hours=newest_hours_ago)
        rec["catalog"] = {"time": iso(T0), "backups": 4, "stored_bytes": 4000, "subvolumes": {"home": {
            "backups": 4, "newest_time": iso(newest), "newest_stored_bytes": 1000, "chain_depth": 3}}}
        rec["last_success"] = iso(newest)
    return rec


def save(state: Path, usb: dict, b2: dict, job_status: str = "ok") -> None:
    JobRecords(state).save("home", {"job": "home", "last_run": {"finished": iso(T0), "status": job_status},
                                    "failures_since_success": 0 if job_status == "ok" else 1,
                                    "targets": {"usb": usb, "b2": b2}})


@pytest.mark.parametrize(("usb", "b2", "verdicts", "code"), [
    (record(1), record(2), ("ok", "ok"), 0),
    (record(1), record(30), ("ok", "stale"), 2),
    (record(1), record(5, failures=2, status="failed"), ("ok", "failing"), 1),
    (record(1), record(None, failures=1, status="failed"), ("ok", "failing"), 2),
    (record(1), {}, ("ok", "never"), 3),
    (record(40, failures=3, status="failed"), record(1), ("stale", "ok"), 2),
    (record(1), record(-48), ("ok", "stale"), 2),  # dated two days ahead: its age cannot be told
])
def test_verdicts_and_monitoring_codes(tmp_path: Path, usb: dict, b2: dict, verdicts: tuple[str, str],
                                       code: int) -> None:
    config = config_from(CONFIG.format(state=tmp_path))
    save(tmp_path, usb, b2)
    rows = status_rows(config, tmp_path, T0)
    assert tuple(r.verdict for r in rows) == verdicts
    got, line = check(rows, T0)
    assert got == code and line.startswith("BTRSYNC " + ["OK", "WARNING", "CRITICAL", "UNKNOWN"][code])


def test_a_failed_pre_hook_makes_every_target_of_the_job_failing(tmp_path: Path) -> None:
    config = config_from(CONFIG.format(state=tmp_path))
    save(tmp_path, record(1), record(1), job_status="failed")
    rows = status_rows(config, tmp_path, T0 + timedelta(minutes=5))
    assert [r.verdict for r in rows] == ["failing", "failing"]


def test_no_job_at_all_is_unknown_and_the_cli_prints_the_plugin_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert check([], T0)[0] == 3
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path))
    save(tmp_path, record(1), record(30))
    assert main(["--config", str(path), "status", "--check", "--now", iso(T0)]) == 2
    out = capsys.readouterr().out
    assert out.startswith("BTRSYNC CRITICAL - home/b2 stale: newest backup 30h00m old (> 26h00m)")
    assert main(["--config", str(path), "status", "--check", "--stale-after", "48h", "--now", iso(T0)]) == 0
    capsys.readouterr()
    assert main(["--config", str(path), "status", "--json", "--now", iso(T0)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["newest_age_seconds"] == 30 * 3600 and rows[1]["chain_depth"] == 3
    assert main(["--config", str(path), "status", "--now", iso(T0)]) == 0
    table = capsys.readouterr()
    assert "STALE" in table.out and "home/b2" not in table.err or "boom" not in table.err


def test_stale_after_zero_is_a_threshold_not_the_default(tmp_path: Path) -> None:
    config = config_from(CONFIG.format(state=tmp_path))
    save(tmp_path, record(1), record(1))
    assert [r.verdict for r in status_rows(config, tmp_path, T0, stale_after=timedelta(0))] == ["stale", "stale"]


def test_a_drill_dated_in_the_future_is_due() -> None:
    from btrsync.jobs.schema import VerifyModel
    from btrsync.jobs.verification import drill_due

    policy = VerifyModel(drill_every="30d")
    assert drill_due(policy, {"drill": {"time": iso(T0 + timedelta(days=400))}}, T0)
    assert not drill_due(policy, {"drill": {"time": iso(T0 - timedelta(days=1))}}, T0)
