"""status verdicts (ok, stale, failing, never) and --check's monitoring-plugin codes, from records."""

from __future__ import annotations

import json
import re
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
    from btrsync.config.schema import VerifyModel
    from btrsync.jobs.verification import drill_due

    policy = VerifyModel(drill_every="30d")
    assert drill_due(policy, {"drill": {"time": iso(T0 + timedelta(days=400))}}, T0)
    assert not drill_due(policy, {"drill": {"time": iso(T0 - timedelta(days=1))}}, T0)


# -- --check answers UNKNOWN (exit 3) whenever it cannot evaluate -------------------------------
def _plugin(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(("args", "says"), [
    (["--stale-after", "soon"], "--stale-after"),  # a value btrsync parses
    (["--stale-after"], "--stale-after"),  # click: the option needs a value
    (["--no-such-option"], "--no-such-option"),  # click: unknown option
    (["nosuchjob"], "nosuchjob"),  # a job the configuration does not have
    (["--now", "yesterday-ish"], "yesterday-ish"),
])
def test_a_check_that_cannot_be_evaluated_is_unknown_not_critical(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str) -> None:
    """Nagios reads exit 2 as CRITICAL: a typo in the check's command line paged someone about
    backups that were fine, and printed no plugin line at all."""
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path))
    save(tmp_path, record(1), record(1))
    code, lines = _plugin(["--config", str(path), "status", "--check", *args], capsys)
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith("BTRSYNC UNKNOWN - ") and says in lines[0], lines
    assert main(["--config", str(path), "status", *args]) == 2  # without --check: a usage error as ever


def test_check_with_json_prints_only_the_plugin_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'status --check --json' (a copied command line) printed the plugin line and then a JSON
    error object on stdout: two lines where a monitoring plugin gives one (and the second one
    says "error" about a check that worked).  The plugin line is the whole answer."""
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path))
    code, lines = _plugin(["--config", str(path), "status", "--check", "--json"], capsys)  # never ran
    assert code == 3 and lines == ["BTRSYNC UNKNOWN - home/usb has never run; home/b2 has never run"], lines
    code, lines = _plugin(["--config", str(path), "status", "--check", "--json", "--stale-after", "soon"], capsys)
    assert code == 3 and len(lines) == 1 and lines[0].startswith("BTRSYNC UNKNOWN - "), lines


def test_a_missing_or_invalid_configuration_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.toml"
    code, lines = _plugin(["--config", str(missing), "status", "--check"], capsys)
    assert code == 3 and len(lines) == 1 and lines[0].startswith("BTRSYNC UNKNOWN - "), lines
    assert str(missing) in lines[0] and "btrsync config check" in lines[0], lines
    broken = tmp_path / "broken.toml"
    broken.write_text(CONFIG.format(state=tmp_path) + "\n[jobs.home]\nstale_after = [\n")
    code, lines = _plugin(["--config", str(broken), "status", "--check"], capsys)
    assert code == 3 and len(lines) == 1 and lines[0].startswith("BTRSYNC UNKNOWN - "), lines
    invalid = tmp_path / "invalid.toml"
    invalid.write_text(CONFIG.format(state=tmp_path) + 'stale_after = "a while"\n')
    code, lines = _plugin(["--config", str(invalid), "status", "--check"], capsys)
    assert code == 3 and len(lines) == 1 and "stale_after" in lines[0] and "|" not in lines[0], lines


def test_an_unreadable_record_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path))
    (tmp_path / "jobs" / "home.json").mkdir(parents=True)  # not a file: reading it fails (EISDIR)
    code, lines = _plugin(["--config", str(path), "status", "--check", "--now", iso(T0)], capsys)
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith("BTRSYNC UNKNOWN - home/usb unknown: ") and "home.json" in lines[0], lines


# -- a backup dated in the future --------------------------------------------------------------
def test_a_backup_dated_in_the_future_shows_as_such_and_perfdata_stays_non_negative(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It showed as "0m" old in the table and as a negative age in the perfdata."""
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path))
    save(tmp_path, record(-2), record(-3))
    assert main(["--config", str(path), "status", "--now", iso(T0)]) == 0
    table = capsys.readouterr().out  # (--now keeps running: 2h ahead is 1h59m and some seconds a moment later)
    assert len(re.findall(r" in (1h59m|2h00m) \(clock\?\) ", table)) == 1, table
    assert len(re.findall(r" in (2h59m|3h00m) \(clock\?\) ", table)) == 1 and " 0m " not in table, table
    code, lines = _plugin(["--config", str(path), "status", "--check", "--now", iso(T0)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert re.search(r"home/usb stale: newest backup dated (1h59m|2h00m) in the future", lines[0]), lines
    assert lines[0].endswith(" | oldest_newest_backup_age=0s;;;0 future_dated_backups=2;;;0"), lines
    assert main(["--config", str(path), "status", "--json", "--now", iso(T0)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["verdict"], r["newest_in_future"]) for r in rows] == [("stale", True), ("stale", True)]


# -- damaged records ---------------------------------------------------------------------------
def test_a_damaged_run_record_is_unknown_never_never_and_a_writer_keeps_it_aside(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated jobs/home.json made status say NEVER (exit 0), and the next run overwrote the
    history and the failure count without a word."""
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path))
    save(tmp_path, record(1, failures=3, status="failed"), record(1))
    record_file = tmp_path / "jobs" / "home.json"
    damaged = record_file.read_bytes()[:70]
    record_file.write_bytes(damaged)
    assert main(["--config", str(path), "status", "--json", "--now", iso(T0)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in rows] == ["unknown", "unknown"], rows
    assert str(record_file) in rows[0]["note"] and "btrsync run home" in rows[0]["note"], rows[0]
    code, lines = _plugin(["--config", str(path), "status", "--check", "--now", iso(T0)], capsys)
    assert code == 3 and lines[0].startswith("BTRSYNC UNKNOWN - home/usb unknown: the run record"), lines
    assert record_file.read_bytes() == damaged  # status moves nothing
    # a writer (the next run, the record update after a push) keeps it aside and says so
    doc = JobRecords(tmp_path).load("home")
    [aside] = (tmp_path / "jobs").glob("home.json.damaged-*")
    assert aside.read_bytes() == damaged and not record_file.exists()
    warning = capsys.readouterr().err  # (the CLI's logging setup above writes warnings to stderr)
    assert str(aside) in warning and "failure count" in warning, warning
    assert doc.get("last_run") is None
    JobRecords(tmp_path).save("home", doc)  # e.g. a catalog update after a manual push
    rows = status_rows(config_from(CONFIG.format(state=tmp_path)), tmp_path, T0)
    assert [r.verdict for r in rows] == ["unknown", "unknown"] and str(aside) in (rows[0].note or "")
    save(tmp_path, record(1), record(1))  # a run recorded: its verdicts again
    assert [r.verdict for r in status_rows(config_from(CONFIG.format(state=tmp_path)), tmp_path, T0)] == \
        ["ok", "ok"]


def test_a_record_of_the_wrong_shape_is_damage_not_a_crash(tmp_path: Path) -> None:
    config = config_from(CONFIG.format(state=tmp_path))
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "home.json").write_text('{"targets": {"usb": "nonsense"}, "failures_since_success": "x"}')
    assert [r.verdict for r in status_rows(config, tmp_path, T0)] == ["unknown", "unknown"]


def test_a_damaged_target_memory_makes_its_row_unknown(tmp_path: Path) -> None:
    from btrsync.state import State

    config = config_from(CONFIG.format(state=tmp_path))
    save(tmp_path, record(1), {**record(1), "url": "s3://bucket/x"})
    entry = State(tmp_path)._target_file("file:///mnt/usb")
    entry.parent.mkdir(parents=True)
    entry.write_text('{"url": "file:///mnt/usb", "repo_id": ')
    rows = status_rows(config, tmp_path, T0)
    assert [r.verdict for r in rows] == ["unknown", "ok"]
    assert "state forget file:///mnt/usb" in (rows[0].note or "")


def test_record_times_compare_as_times_not_strings() -> None:
    """``isoformat`` leaves out zero microseconds: as strings, 03:00:23Z sorts after 03:00:23.5Z."""
    from btrsync.jobs.records import is_later, latest_time

    whole, later = "2026-11-20T03:00:23Z", "2026-11-20T03:00:23.500000Z"
    assert whole > later  # the trap
    assert is_later(later, whole) and not is_later(whole, later)
    assert is_later(whole, None) and not is_later(None, whole) and not is_later("not a time", None)
    assert latest_time(whole, None, later, "garbage") == later and latest_time(None) is None
