"""The metrics file passes promtool's lint, every metric is documented, and the alert rules pass
'promtool check rules' and their unit tests ('promtool test rules')."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from btrsync.jobs.metrics import metric_names, write_metrics
from btrsync.jobs.records import JobRecords
from btrsync.state import State
from tests.jobs.conftest import FakeClock, config_from

ROOT = Path(__file__).resolve().parents[2]


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: Debian package prometheus (scripts/bootstrap installs it)")
        pytest.skip("promtool is missing (apt-get install prometheus)")
    return tool


RECORD = {
    "job": "home", "updated": "2026-11-20T03:01:00Z",
    "last_run": {"started": "2026-11-20T03:00:00Z", "finished": "2026-11-20T03:01:00Z", "status": "partial",
                 "exit_code": 3, "seconds": 60.5, "error": None},
    "last_success": "2026-11-19T03:01:00Z", "failures_since_success": 1, "runs_total": {"ok": 3, "partial": 1},
    "snapshots_deleted_total": 4,
    "targets": {
        "usb": {"url": "file:///mnt/usb", "last_run": {"time": "2026-11-20T03:01:00Z", "status": "ok", "seconds": 30,
                                                      "stream_bytes": 100, "stored_bytes": 50},
                "last_success": "2026-11-20T03:01:00Z", "failures_since_success": 0, "deleted_total": 2,
                "catalog": {"time": "2026-11-20T03:01:00Z", "backups": 3, "stored_bytes": 150, "used_bytes": 900,
                            "subvolumes": {"home": {"backups": 3, "stored_bytes": 150, "stream_bytes": 300,
                                                    "newest": "x", "newest_time": "2026-11-20T03:00:00Z",
                                                    "oldest_time": "2026-11-18T03:00:00Z", "newest_stream_bytes": 100,
                                                    "newest_stored_bytes": 50, "chain_depth": 2}}},
                "capacity": {"quota_bytes": 1000, "free_bytes": 5000},
                "verify": {"time": "2026-11-20T03:01:00Z", "ok": True, "damaged": 0},
                "verify_last_success": "2026-11-20T03:01:00Z",
                "drill": {"time": "2026-11-20T03:01:00Z", "ok": False, "seconds": 5.5},
                "drill_last_success": "2026-11-01T03:01:00Z"},
        "b2": {"last_run": {"time": "2026-11-20T03:01:00Z", "status": "failed", "seconds": 3, "error": "boom"},
               "failures_since_success": 1},
    },
}


def _config(tmp_path: Path):  # noqa: ANN202
    return config_from(f"""
metrics_dir = "{tmp_path / 'metrics'}"
[targets.usb]
url = "file:///mnt/usb"
quota = "1000"
[targets.b2]
url = "s3://bucket/x"
[jobs.home]
subvolumes = ["/home"]
snapshot_dir = "/.snapshots"
stale_after = "30h"
targets = ["usb", "b2"]
[jobs.idle]
subvolumes = ["/srv"]
snapshot_dir = "/.snapshots"
""")


def test_the_metrics_file_passes_promtool_and_carries_every_series(tmp_path: Path) -> None:
    config = _config(tmp_path)
    JobRecords(tmp_path / "state").save("home", json.loads(json.dumps(RECORD)))
    path = write_metrics(config, tmp_path / "state", FakeClock())
    assert path is not None and oct(path.stat().st_mode & 0o777) == "0o644"
    text = path.read_text()
    proc = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert exposed == set(metric_names()), set(metric_names()) ^ exposed
    assert 'btrsync_job_stale_after_seconds{btrsync_job="home"} 108000.0' in text
    assert 'btrsync_drill_success{btrsync_job="home",target="usb"} 0.0' in text
    assert 'btrsync_target_quota_bytes{target="usb"} 1000.0' in text
    assert 'btrsync_job_enabled{btrsync_job="idle"} 1.0' in text
    assert "btrsync_job_last_run_timestamp_seconds{btrsync_job=\"idle\"}" not in text  # never ran


def test_the_metrics_file_is_readable_by_node_exporter_from_its_first_byte(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Under UMask=0077 the file was renamed into place as 0600 and only then opened up: a kill
    in between left a file node_exporter cannot read, and every btrsync alert went quiet."""
    config = _config(tmp_path)
    seen: list[tuple[str, int]] = []
    real_replace = os.replace

    def replace(src, dst):  # noqa: ANN001, ANN202
        seen.append((os.path.basename(src), os.stat(src).st_mode & 0o777))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0o077)
    try:
        path = write_metrics(config, tmp_path / "state", FakeClock())
    finally:
        os.umask(old)
    assert path is not None and [mode for _, mode in seen] == [0o644]
    assert not seen[0][0].endswith(".prom") and sorted(p.name for p in path.parent.iterdir()) == ["btrsync.prom"]


def test_a_manual_verify_newer_than_the_job_s_shows_in_the_metrics(tmp_path: Path) -> None:
    config = _config(tmp_path)
    JobRecords(tmp_path / "state").save("home", json.loads(json.dumps(RECORD)))
    State(tmp_path / "state").record_verification("file:///mnt/usb", {
        "started": "2026-11-21T00:00:00Z", "ok": False, "damaged": 1, "affected": 2, "level": "data"})
    text = write_metrics(config, tmp_path / "state", FakeClock()).read_text()
    assert 'btrsync_verify_damaged_backups{btrsync_job="home",target="usb"} 3.0' in text


def test_a_failed_manual_verify_keeps_the_last_success_of_the_one_before(tmp_path: Path) -> None:
    """A verification unit passes, the next fails: the last-success series shows the one that
    passed, not the job run's older success (the target's state once kept only the last one)."""
    from datetime import datetime

    config = _config(tmp_path)
    JobRecords(tmp_path / "state").save("home", json.loads(json.dumps(RECORD)))
    state = State(tmp_path / "state")
    state.record_verification("file:///mnt/usb", {"started": "2026-11-21T00:00:00Z", "ok": True, "damaged": 0,
                                                  "drill": {"ok": True, "seconds": 3.0}})
    state.record_verification("file:///mnt/usb", {"started": "2026-11-22T00:00:00Z", "ok": False, "damaged": 1,
                                                  "drill": {"ok": False, "seconds": 4.0}})
    text = write_metrics(config, tmp_path / "state", FakeClock()).read_text()
    passed = datetime.fromisoformat("2026-11-21T00:00:00+00:00").timestamp()
    failed = datetime.fromisoformat("2026-11-22T00:00:00+00:00").timestamp()
    usb = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
           if '{btrsync_job="home",target="usb"}' in line and not line.startswith("#")}
    assert usb["btrsync_verify_last_run_timestamp_seconds"] == failed
    assert usb["btrsync_verify_last_success_timestamp_seconds"] == passed  # not the job's 2026-11-20
    assert usb["btrsync_drill_last_success_timestamp_seconds"] == passed  # not the job's 2026-11-01
    assert usb["btrsync_drill_success"] == 0


def test_a_job_run_that_fails_after_a_manual_success_keeps_that_success(tmp_path: Path) -> None:
    """The other order (found by a hostile review): a manual ``verify --drill`` passes, then the
    job's own verify and drill fail; they record in the state at the run's own time, so the state's
    summary is not newer than the job's, and its last success must still count."""
    from btrsync.jobs.metrics import _verification

    url, manual_ok, job_fail = "file:///mnt/usb", "2026-11-21T00:00:00Z", "2026-11-22T03:00:00Z"
    state = State(tmp_path / "state")
    state.record_verification(url, {"started": manual_ok, "ok": True, "damaged": 0, "drill": {"ok": True}})
    state.record_verification(url, {"started": job_fail, "ok": False, "damaged": 1})
    state.record_verification(url, {"started": job_fail, "ok": False, "drill": {"ok": False, "seconds": 4.0}})
    rec = {"url": url, "verify": {"time": job_fail, "ok": False, "damaged": 1},
           "verify_last_success": "2026-11-20T03:01:00Z",
           "drill": {"time": job_fail, "ok": False, "seconds": 4.0}, "drill_last_success": "2026-11-01T03:01:00Z"}
    verify, drill = _verification(rec, state)
    assert (verify["time"], verify["last_success"]) == (job_fail, manual_ok)
    assert (drill["time"], drill["last_success"]) == (job_fail, manual_ok)


def test_metrics_off_or_without_node_exporter_write_nothing(tmp_path: Path) -> None:
    assert write_metrics(config_from('metrics_dir = ""'), tmp_path, FakeClock()) is None
    assert write_metrics(config_from(""), tmp_path, FakeClock()) is None or \
        Path("/var/lib/prometheus/node-exporter").is_dir()


def test_every_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    missing = [name for name in metric_names() if f"`{name}`" not in doc]
    assert not missing, f"docs/metrics.md does not describe {missing}"


@pytest.mark.slow
def test_the_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", "alerts.yml"], cwd=ROOT / "monitoring", capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=ROOT / "monitoring",
                          capture_output=True, text=True, timeout=120)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_the_alert_rules_only_use_metrics_btrsync_writes() -> None:
    import re

    rules = (ROOT / "monitoring" / "alerts.yml").read_text()
    used = set(re.findall(r"\bbtrsync_[a-z_]+\b", rules)) - {"btrsync_job"}
    assert used and used <= set(metric_names()), used - set(metric_names())
