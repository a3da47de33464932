"""``btrsync run`` end to end on loopback btrfs: two jobs, a directory target and SeaweedFS,
several runs at simulated times (``--now``), failing targets, windows, hooks, overlapping runs,
and SIGTERM of a run.  After each run the snapshots, the targets' backups, the prunes, the
metrics file (checked by promtool) and ``status`` are checked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from btrsync.locking import target_lock
from tests.integration.conftest import CONFIG, T0, Run, World, toml_table
from tests.support import tree
from tests.support.loopfs import create_subvolume
from tests.targets.factories_s3 import TEST_BUCKET, seaweed_settings

pytestmark = pytest.mark.btrfs

PROMTOOL = shutil.which("promtool")


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def configure(world: World, jobs: str, *, top: str = "", targets: dict[str, dict[str, Any]] | None = None) -> None:
    """The world's config: run settings, [push] of the tests, targets (usb = the world's
    directory target), then the jobs."""
    text = f'metrics_dir = "{world.state.parent / "metrics"}"\n{top}\n{CONFIG}\n'
    text += toml_table("usb", {"url": f"file://{world.target_dir}"})
    for name, settings in (targets or {}).items():
        text += "\n" + toml_table(name, settings)
    world.config.write_text(text + "\n" + jobs)


def run(world: World, *args: str, now: float | None = None) -> Run:
    extra = ["--now", at(now)] if now is not None else []
    return world.cli("run", *args, "--json", *extra)


def outcome(result: Run) -> dict[str, Any]:
    return {j["job"]: j for j in result.json()["jobs"]}


def metrics(world: World) -> str:
    text = (world.state.parent / "metrics" / "btrsync.prom").read_text()
    if PROMTOOL:
        proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    elif os.environ.get("CI"):
        pytest.fail("promtool is missing (Debian package prometheus; scripts/bootstrap installs it)")
    return text


def sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            metric, value = line.rsplit(" ", 1)
            got = metric[len(name):].strip("{}")
            if ",".join(sorted(got.split(","))) == want:
                return float(value)
    return None


def status(world: World, now: float) -> dict[tuple[str, str], dict[str, Any]]:
    result = world.cli("status", "--json", "--now", at(now))
    assert result.code == 0, result.err
    return {(r["job"], r["target"]): r for r in result.json()}


def snapshots(world: World, name: str) -> list[str]:
    return sorted(p.name for p in world.snapdir.iterdir() if p.name.startswith(name + "."))


def listing(world: World, target: str) -> list[dict[str, Any]]:
    result = world.cli("list", "--from", target, "--json")
    assert result.code == 0, result.err
    return result.json()


@pytest.fixture
def two_jobs(world: World, request: pytest.FixtureRequest, tmp_path: Path) -> World:
    """Jobs 'data' (→ usb and s3, SeaweedFS) and 'logs' (→ usb), with retention everywhere."""
    create_subvolume(world.src / "logs")
    tree.populate(world.subvol, 7)
    (world.src / "logs" / "app.log").write_bytes(os.urandom(100_000))
    s3 = {"url": f"s3://{TEST_BUCKET}/run-{uuid.uuid4().hex[:12]}", **seaweed_settings(request, tmp_path)}
    jobs = f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
schedule = "hourly"
snapshots = {{ keep_last = 3 }}
verify = {{ level = "data", drill_every = "1d", scratch_dir = "{tmp_path / 'drills'}" }}
targets.usb = {{ retention = {{ keep_last = 2 }}, max_chain = 0 }}
targets.s3 = {{ retention = {{ keep_last = 3 }}, bwlimit = "64M" }}

[jobs.logs]
subvolumes = ["{world.src / 'logs'}"]
snapshot_dir = "{world.snapdir}"
snapshots = {{ keep_last = 2 }}
targets.usb = {{ retention = {{ keep_last = 2 }}, max_chain = 0 }}
"""
    configure(world, jobs, targets={"s3": s3})
    assert world.cli("init", "--to", "s3").code == 0
    return world


def test_two_jobs_two_targets_over_several_runs_snapshot_push_prune_and_report(two_jobs: World) -> None:
    """Four hourly runs of --all: snapshots, pushes to both targets, prunes per target and of the
    local snapshots, records, metrics and status after each."""
    world = two_jobs
    for hour in range(4):
        if hour:
            tree.mutate(world.subvol, 7, hour)
        result = run(world, "--all", now=hour)
        assert result.code == 0, result.err
        jobs = outcome(result)
        assert jobs["data"]["status"] == "ok" and jobs["logs"]["status"] == "ok"
        data = {t["name"]: t for t in jobs["data"]["targets"]}
        assert {t: data[t]["status"] for t in data} == {"usb": "ok", "s3": "ok"}
        assert [b["status"] for b in data["s3"]["backups"]] == ["ok"]  # one new snapshot each run
        assert data["s3"]["verify"]["ok"] and data["s3"]["verify"]["level"] == "data"
        if hour == 0:  # a restore drill of the newest backup on each target, then not again for a day
            assert data["usb"]["drill"]["ok"] and data["s3"]["drill"]["ok"], data["s3"]["drill"]
            assert data["s3"]["drill"]["level"] == "restore"
        else:
            assert data["usb"]["drill"] is None
        assert len(snapshots(world, "data")) == min(hour + 1, 3)
        assert len(snapshots(world, "logs")) == min(hour + 1, 2)
        assert len(listing(world, "usb")) == min(hour + 1, 2) + min(hour + 1, 2)  # data + logs
        s3_backups = listing(world, "s3")  # one chain: keep_last = 3 keeps its full too
        assert len(s3_backups) == hour + 1 and {b["subvolume"] for b in s3_backups} == {"data"}
        text = metrics(world)
        assert sample(text, "btrsync_job_last_run_status", btrsync_job="data", status="ok") == 1
        assert sample(text, "btrsync_target_backups", btrsync_job="data", target="s3", subvolume="data") == \
            hour + 1
        newest = sample(text, "btrsync_target_newest_backup_timestamp_seconds", btrsync_job="data", target="usb",
                        subvolume="data")
        assert newest == (T0 + timedelta(hours=hour)).timestamp()
        assert sample(text, "btrsync_job_runs_total", btrsync_job="data", status="ok") == hour + 1
        rows = status(world, hour + 0.5)
        assert {k: r["verdict"] for k, r in rows.items()} == {("data", "usb"): "ok", ("data", "s3"): "ok",
                                                               ("logs", "usb"): "ok"}
    assert sample(text, "btrsync_retention_deleted_backups_total", btrsync_job="data", target="usb") == 2
    assert sample(text, "btrsync_snapshots_deleted_total", btrsync_job="data") == 1
    assert sample(text, "btrsync_target_chain_depth", btrsync_job="data", target="s3", subvolume="data") == 3
    assert sample(text, "btrsync_target_used_bytes", target="usb") > 0
    assert sample(text, "btrsync_target_free_bytes", target="usb") > 0
    assert sample(text, "btrsync_verify_last_success_timestamp_seconds", btrsync_job="data", target="s3")
    assert sample(text, "btrsync_drill_success", btrsync_job="data", target="s3") == 1
    check = world.cli("status", "--check", "--now", at(4))
    assert check.code == 0 and check.out.startswith("BTRSYNC OK"), check.out
    stale = world.cli("status", "--check", "--now", at(40))
    assert stale.code == 2 and "stale" in stale.out, stale.out


def test_a_failing_target_gives_exit_3_the_other_target_is_backed_up_and_pruned(two_jobs: World) -> None:
    """usb unmounted: job data is partial (s3 gets its backup and its prune), job logs fails,
    the run exits 3, local snapshots are not pruned; the next run with usb back catches up."""
    world = two_jobs
    for hour in range(3):
        assert run(world, "--all", now=hour).code == 0
    hidden = world.target_dir.with_name("unmounted")
    world.target_dir.rename(hidden)
    result = run(world, "--all", now=3)
    assert result.code == 3, result.err
    jobs = outcome(result)
    assert jobs["data"]["status"] == "partial" and jobs["logs"]["status"] == "failed"
    data = {t["name"]: t for t in jobs["data"]["targets"]}
    assert data["usb"]["status"] == "failed" and "no btrsync repository" in data["usb"]["error"] or \
        "does not exist" in data["usb"]["error"]
    assert "not pruned" in data["usb"]["prune_skipped"]
    assert data["s3"]["status"] == "ok" and data["s3"]["prune_skipped"] is None
    assert listing(world, "s3")[-1]["snapshot"] == "data.20261120T060000Z"
    assert "skipped" in jobs["data"]["local_prune_skipped"]
    assert len(snapshots(world, "data")) == 4  # keep_last = 3, but usb still needs its parent chain
    rows = status(world, 3.5)
    assert rows[("data", "usb")]["verdict"] == "failing" and rows[("data", "usb")]["failures_since_success"] == 1
    assert rows[("data", "s3")]["verdict"] == "ok"
    text = metrics(world)
    assert sample(text, "btrsync_target_consecutive_failures", btrsync_job="data", target="usb") == 1
    assert sample(text, "btrsync_target_last_run_status", btrsync_job="data", target="usb", status="failed") == 1
    assert sample(text, "btrsync_job_last_run_exit_code", btrsync_job="data") == 3
    check = world.cli("status", "--check", "--now", at(3.5))
    assert check.code == 1 and "failing" in check.out, check.out
    hidden.rename(world.target_dir)
    result = run(world, "--all", now=4)
    assert result.code == 0, result.err
    data = {t["name"]: t for t in outcome(result)["data"]["targets"]}
    assert len(data["usb"]["backups"]) == 2  # the snapshot it missed, and the new one
    assert len(snapshots(world, "data")) == 3 and len(listing(world, "usb")) == 2 + 2
    assert status(world, 4.5)[("data", "usb")]["verdict"] == "ok"


def _single_job(world: World, extra: str = "", target: str = "{}", top: str = "") -> None:
    if not any(world.subvol.iterdir()):
        tree.populate(world.subvol, 3)
    configure(world, f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
timezone = "UTC"
targets.usb = {target}
{extra}
""", top=top)


def test_outside_its_window_a_job_is_skipped_with_a_reason_and_a_metric(world: World) -> None:
    _single_job(world, 'window = ["Mon-Fri 22:00-06:00", "Sat-Sun 00:00-24:00"]')
    inside = run(world, "data", now=0)  # Friday 03:00 UTC: Thursday night's window
    assert inside.code == 0 and outcome(inside)["data"]["status"] == "ok", inside.err
    outside = run(world, "data", now=9)  # Friday 12:00
    assert outside.code == 0
    job = outcome(outside)["data"]
    assert job["status"] == "skipped" and "outside the backup window" in job["reason"]
    assert "opens Fri 2026-11-20 22:00" in job["reason"]
    assert len(snapshots(world, "data")) == 1
    text = metrics(world)
    assert sample(text, "btrsync_job_last_run_status", btrsync_job="data", status="skipped") == 1
    weekend = run(world, "data", now=30)  # Saturday 09:00
    assert outcome(weekend)["data"]["status"] == "ok"


def test_a_push_past_the_window_end_stops_at_a_segment_boundary_and_resumes(world: World) -> None:
    """window_end = "stop": the window closes once the first segment is durable; the push stops
    before the next one (no manifest, the run is partial), the next run resumes from the segments."""
    from btrsync.config.model import load_config
    from btrsync.jobs.runner import RunEnv, run_jobs

    from btrsync.cli.cmd_run import render, summary

    hook_error = world.state.parent / "hook-error"
    _single_job(world, 'window = ["Fri 00:00-06:00"]\nwindow_end = "stop"\n'
                f'hooks = {{ on_failure = [["sh", "-c", "printf %s \\"$BTRSYNC_ERROR\\" > {hook_error}"]] }}')
    (world.subvol / "big").write_bytes(os.urandom(1_500_000))  # > 5 segments of 256k
    config = load_config(world.config, explicit=True)
    inside, outside = T0, T0 + timedelta(hours=4)

    class ClosingClock:
        """Inside the window until the first segment of the backup is on the target."""

        def now(self):  # noqa: ANN202
            return outside if any(world.target_dir.glob("data/*/000000.idx")) else inside

        def monotonic(self) -> float:
            return time.monotonic()

        def sleep(self, seconds: float) -> None:
            time.sleep(seconds)

    from btrsync.cli.app import App

    app = App(world.config, True, world.key, world.state, False)
    env = RunEnv(config, world.state, lambda name, write: app.repository(name, write=write), ClosingClock())
    report = run_jobs(env, [config.jobs.jobs["data"]])
    target = report.jobs[0].targets[0]
    # as asked, but this run's backup is not complete: partial (exit 3, on_failure), never "ok"
    assert target.status == "stopped" and "closed" in target.reason
    assert report.jobs[0].status == "partial" and report.exit_code == 3
    assert not any(world.target_dir.glob("backups/*/manifest"))
    kept = sorted(p.name for p in world.target_dir.glob("data/*/0*") if not p.name.endswith(".idx"))
    assert 1 <= len(kept) < 6
    assert "skipped" in report.jobs[0].local_prune_skipped
    # the hook, the final line and the table say why; no backup is counted for the stopped push
    # (before: an empty BTRSYNC_ERROR, "data partial: partial", BACKUPS 1 with 0 B sent)
    assert "usb: stopped: the window Fri 00:00-06:00 (UTC) closed during the push" in hook_error.read_text()
    assert summary(report) == ("1 of 1 job(s) not ok: data partial: usb: stopped: the window Fri 00:00-06:00 (UTC) "
                               "closed during the push; the next run resumes it")
    world.capsys.readouterr()
    render(report, False)
    [row] = [line.split() for line in world.capsys.readouterr().out.splitlines() if line.startswith("data ")]
    assert row[2:4] == ["stopped", "0"], row
    result = run(world, "data", now=1)  # still Friday's window
    assert result.code == 0, result.err
    backups = outcome(result)["data"]["targets"][0]["backups"]
    assert [b["status"] for b in backups] == ["ok", "ok"] and backups[0]["resumed_bytes"] > 0


def test_hooks_get_the_job_in_their_environment_and_failure_policies_apply(world: World, tmp_path: Path) -> None:
    out = tmp_path / "hooks"
    out.mkdir()
    dump = f"env | grep ^BTRSYNC_ | sort > {out}/$BTRSYNC_HOOK.env"
    hooks = (f'hooks = {{ pre = [["sh", "-c", "{dump}"]], post = [["sh", "-c", "{dump}"]], '
             f'on_success = [["sh", "-c", "{dump}"]], on_failure = [["sh", "-c", "{dump}"]] }}')
    _single_job(world, hooks)
    result = run(world, "data", now=0)
    assert result.code == 0, result.err
    pre = dict(line.split("=", 1) for line in (out / "pre.env").read_text().splitlines())
    post = dict(line.split("=", 1) for line in (out / "post.env").read_text().splitlines())
    assert pre["BTRSYNC_JOB"] == "data" and pre["BTRSYNC_STATUS"] == "running" and pre["BTRSYNC_TARGETS"] == "usb"
    assert post["BTRSYNC_STATUS"] == "ok" and post["BTRSYNC_SNAPSHOTS"].startswith("data.20261120T030000Z")
    assert int(post["BTRSYNC_STORED_BYTES"]) > 0 and int(post["BTRSYNC_STREAM_BYTES"]) > 0
    assert (out / "on_success.env").exists() and not (out / "on_failure.env").exists()
    assert "BTRSYNC_KEY_FILE" not in post

    # a failing pre hook skips the job: no snapshot, exit 1, on_failure told why
    (out / "on_success.env").unlink()
    hooks = (f'hooks = {{ pre = [["sh", "-c", "echo cannot dump the database; exit 7"]], '
             f'on_failure = [["sh", "-c", "{dump}"]], timeout = "10s" }}')
    _single_job(world, hooks)
    result = run(world, "data", now=1)
    assert result.code == 1
    job = outcome(result)["data"]
    assert job["status"] == "failed" and "exited 7" in job["error"] and "cannot dump" in job["error"]
    assert len(snapshots(world, "data")) == 1
    failure = dict(line.split("=", 1) for line in (out / "on_failure.env").read_text().splitlines())
    assert failure["BTRSYNC_STATUS"] == "failed" and "exited 7" in failure["BTRSYNC_ERROR"]

    # pre_failure = "continue": logged, the job runs; a hanging hook is killed at its timeout
    hooks = ('hooks = { pre = [["sh", "-c", "exit 1"], ["sleep", "60"]], timeout = "1s", '
             'pre_failure = "continue" }')
    _single_job(world, hooks)
    t0 = time.monotonic()
    result = run(world, "data", now=2)
    assert result.code == 0, result.err
    assert time.monotonic() - t0 < 30
    assert len(snapshots(world, "data")) == 2


@pytest.mark.slow
def test_a_held_job_lock_gives_exit_11_or_a_wait_and_a_manual_push_lock_too(world: World) -> None:
    _single_job(world)
    with target_lock(world.state, "job data"):
        held = run(world, "data", now=0)
        assert held.code == 11 and outcome(held)["data"]["status"] == "locked"
        t0 = time.monotonic()
        waited = world.cli("run", "data", "--wait", "1s", "--now", at(0))
        assert waited.code == 11 and time.monotonic() - t0 >= 0.9 and "waited 1s" in waited.err
    repo_id = json.loads((world.target_dir / "btrsync-repo.json").read_text())["repo_id"]
    with target_lock(world.state, f"repository {repo_id}"):  # what a manual push holds
        result = run(world, "data", now=0)
        assert result.code == 11, result.err
        assert outcome(result)["data"]["targets"][0]["status"] == "locked"
    assert run(world, "data", now=1).code == 0


@pytest.mark.slow
def test_sigterm_of_a_run_leaves_no_lock_no_half_state_and_the_next_run_resumes(world: World) -> None:
    """systemctl stop: SIGTERM in the middle of a push.  Exit 143, the record says terminated, no
    manifest, no lease, no lock; the next run resumes the backup from its durable segments."""
    _single_job(world, target='{ bwlimit = "512k" }')
    (world.subvol / "big").write_bytes(os.urandom(2_000_000))
    argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
            "--key-file", str(world.key), "run", "data", "--now", at(0)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(world.target_dir.glob("data/*/000001.idx")):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert not any(world.target_dir.glob("backups/*/manifest")) and not any(world.target_dir.glob("locks/*"))
    record = json.loads((world.state / "jobs" / "data.json").read_text())
    assert record["last_run"]["status"] == "terminated" and record["last_run"]["exit_code"] == 143
    text = metrics(world)
    assert sample(text, "btrsync_job_last_run_status", btrsync_job="data", status="terminated") == 1
    with target_lock(world.state, "job data"):  # free: the kernel released it with the process
        pass
    _single_job(world)  # no bandwidth limit now
    result = run(world, "data", now=0.5)
    assert result.code == 0, result.err
    backups = outcome(result)["data"]["targets"][0]["backups"]
    assert backups[0]["status"] == "ok" and backups[0]["resumed_bytes"] > 0


def test_dry_run_prints_the_plan_and_changes_nothing(world: World, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    _single_job(world, f'hooks = {{ pre = [["touch", "{marker}"]] }}\nsnapshots = {{ keep_last = 1 }}')
    assert run(world, "data", now=0).code == 0
    marker.unlink()
    before = sorted(p.name for p in world.target_dir.rglob("*"))
    record = (world.state / "jobs" / "data.json").read_text()
    world.snapshot()  # a snapshot the target lacks
    result = run(world, "data", "--dry-run", now=1)
    assert result.code == 0, result.err
    job = outcome(result)["data"]
    # the snapshot the target lacks, then the one the run would take, on it
    would_take = f"data.{(T0 + timedelta(hours=1)).strftime('%Y%m%dT%H%M%SZ')}"
    plan = job["targets"][0]["plan"]
    assert job["dry_run"] and [(p["kind"], p["snapshot"]) for p in plan] == [
        ("incremental", world.snapshots[-1].name), ("incremental", would_take)], plan
    assert plan[1]["parent"] == world.snapshots[-1].name
    assert job["snapshots"] == [would_take] and job["status"] == "ok"
    assert job["hooks"] == [{"kind": "pre", "argv": ["touch", str(marker)], "ran": False}]
    assert not marker.exists()
    assert sorted(p.name for p in world.target_dir.rglob("*")) == before
    assert (world.state / "jobs" / "data.json").read_text() == record
    assert len(snapshots(world, "data")) == 2
    human = world.cli("run", "data", "--dry-run", "--now", at(1))
    assert human.code == 0 and "PLANNED" in human.out and "would run hooks pre: touch" in human.err
    assert f"would take snapshots {would_take}" in human.err


def test_dry_run_plans_with_the_snapshot_the_run_would_take(world: World) -> None:
    """A new job's dry run showed its target 'failed' and advised 'snapshot create'; an existing
    job with nothing new showed PLANNED 0 although the real run pushes the snapshot it takes.
    The dry run now plans that snapshot (named as the run names it) and the real run then
    pushes exactly what was planned."""
    _single_job(world)
    first = run(world, "data", "--dry-run", now=0)
    assert first.code == 0, first.err
    job = outcome(first)["data"]
    [step] = job["targets"][0]["plan"]
    assert (step["kind"], step["parent"], job["targets"][0]["status"]) == ("full", None, "ok"), job
    assert snapshots(world, "data") == [] and not list(world.target_dir.glob("backups/*"))
    real = run(world, "data", now=0)
    assert real.code == 0, real.err
    assert [b["backup_id"].rsplit("-", 1)[0] for b in outcome(real)["data"]["targets"][0]["backups"]] == \
        [step["snapshot"]] == snapshots(world, "data")
    # nothing new locally: the next run still pushes the snapshot it takes, an incremental on the last
    again = outcome(run(world, "data", "--dry-run", now=1))["data"]
    [step] = again["targets"][0]["plan"]
    assert (step["kind"], step["parent"]) == ("incremental", snapshots(world, "data")[0]), again
    # the snapshot directory gone: the dry run says the run would fail to snapshot, as the run would
    world.snapdir.rename(world.snapdir.with_name("moved"))
    broken = run(world, "data", "--dry-run", now=2)
    assert broken.code == 1 and "would fail" in outcome(broken)["data"]["error"], broken.out


def test_manual_push_prune_and_verify_rewrite_the_metrics_too(world: World) -> None:
    _single_job(world, "snapshots = { keep_last = 5 }")
    assert run(world, "data", now=0).code == 0
    prom = world.state.parent / "metrics" / "btrsync.prom"
    assert sample(metrics(world), "btrsync_target_backups", btrsync_job="data", target="usb", subvolume="data") == 1
    world.snapshots.append(world.snapdir / "placeholder")  # world.snapshot() names by count: T0 + 1h
    world.snapshot()
    assert world.push("--max-chain", "0").code == 0  # a full: the prune below can delete the first
    text = metrics(world)
    assert sample(text, "btrsync_target_backups", btrsync_job="data", target="usb", subvolume="data") == 2
    assert world.cli("verify", "--from", world.url, "--level", "catalog").code == 0
    assert sample(metrics(world), "btrsync_verify_damaged_backups", btrsync_job="data", target="usb") == 0
    written = prom.stat().st_mtime_ns
    assert world.cli("prune", "--from", world.url, "--keep-last", "1").code == 0
    text = metrics(world)
    assert prom.stat().st_mtime_ns >= written
    assert sample(text, "btrsync_target_backups", btrsync_job="data", target="usb", subvolume="data") == 1
    assert sample(text, "btrsync_retention_deleted_backups_total", btrsync_job="data", target="usb") == 1


def _drill_without_scratch(world: World, tmp_path: Path, *, drill_every: str, target: str) -> None:
    """A job whose drills cannot run: their scratch directory is a file."""
    scratch = tmp_path / "not-a-directory"
    scratch.write_text("")
    configure(world, f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
verify = {{ level = "data", drill_every = "{drill_every}", scratch_dir = "{scratch}" }}
targets.usb = {target}
""")


def test_a_drill_that_cannot_run_fails_the_target_but_never_calls_it_damaged(world: World, tmp_path: Path) -> None:
    """The drill's scratch directory is a file (a typo in the config, a disk not mounted): the run
    recorded the target as "damaged", the operator's signal to distrust every backup on it.
    Nothing was found damaged: the target "failed", the drill metric says so, exit 1."""
    tree.populate(world.subvol, 3)
    _drill_without_scratch(world, tmp_path, drill_every="1d", target="{ max_chain = 0 }")
    result = run(world, "data", now=0)
    assert result.code == 1, result.err
    [target] = outcome(result)["data"]["targets"]
    assert target["status"] == "failed", target
    assert target["verify"]["ok"] and target["drill"]["damaged"] == 0 and not target["drill"]["ok"], target
    assert "restore drill did not complete" in target["error"], target["error"]
    assert "drill found damage" not in target["error"], target["error"]
    text = metrics(world)
    assert sample(text, "btrsync_drill_success", btrsync_job="data", target="usb") == 0
    assert sample(text, "btrsync_target_last_run_status", btrsync_job="data", target="usb", status="damaged") == 0


@pytest.mark.slow
def test_a_new_backup_that_fails_verification_never_gets_the_old_chain_pruned(world: World, tmp_path: Path) -> None:
    """The run pruned the target before verifying what it had just sent: with keep_last = 1 the
    old, good backup was gone by the time verification found the new one unreadable.  Now the
    target is verified first and pruned only when that passed."""
    import errno

    from tests.support.faultfs import mounted_for_test

    with mounted_for_test(tmp_path / "fault") as fs:
        world.target_dir = fs.mountpoint
        world.init()
        tree.populate(world.subvol, 3)
        configure(world, f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
verify = {{ level = "data" }}
targets.usb = {{ max_chain = 0, retention = {{ keep_last = 1 }} }}
""")
        first = run(world, "data", now=0)
        assert first.code == 0, first.err
        fs.fail("read", "data/*", errno.EIO)  # the disk starts failing reads of what it stores
        second = run(world, "data", now=1)
        assert second.code == 1, second.err
        [target] = outcome(second)["data"]["targets"]
        assert target["status"] == "failed" and target["pruned"] == [], target
        assert target["prune_skipped"] == "not pruned: verification failed this run", target
        assert fs.hits()
        fs.clear()
        assert len(listing(world, "usb")) == 2


def test_a_backup_dated_in_the_future_fails_the_runs_it_blocks_and_status_says_so(world: World) -> None:
    """A run while the clock was two days ahead left a backup dated then: every later snapshot
    was "older than the newest backup", not sent, and the run said ok (on_success fired, the
    stale alert could not fire on a negative age).  Now such a run fails, naming the clock."""
    _single_job(world)
    ahead = run(world, "data", now=48)
    assert ahead.code == 0, ahead.err
    blocked = run(world, "data", now=1)
    assert blocked.code == 1, blocked.err
    [target] = outcome(blocked)["data"]["targets"]
    assert target["status"] == "failed" and "was not sent" in target["error"], target
    assert "was a clock ahead" in target["error"], target["error"]
    row = status(world, 1)[("data", "usb")]
    assert row["verdict"] == "stale", row
    check = world.cli("status", "--check", "--now", at(1))
    assert check.code == 2 and "in the future" in check.out, check.out
    fixed = world.cli("push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", world.url, "--backfill")
    assert fixed.code == 0, fixed.err
    assert len(listing(world, "usb")) == 2


def test_a_read_only_state_directory_is_a_failure_with_a_message_not_a_traceback(world: World) -> None:
    _single_job(world)
    assert run(world, "data", now=0).code == 0
    subprocess.run(["mount", "--bind", str(world.state), str(world.state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(world.state)], check=True)
        result = run(world, "data", now=1)
        assert result.code == 1, (result.code, result.err)
        assert "Traceback" not in result.err and "Read-only file system" in result.err, result.err
    finally:
        subprocess.run(["umount", str(world.state)], check=True)


def test_a_sigterm_while_the_metrics_are_written_leaves_the_finished_run_recorded_once(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemctl stop landing while a finished run wrote its metrics: the run, recorded "ok", was
    recorded again as "terminated", both counters went up, and the OnFailure hooks ran for a
    backup that had succeeded."""
    from btrsync.jobs import runner
    from btrsync.jobs.records import JobRecords

    _single_job(world)

    def stopped(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises in this thread first

    monkeypatch.setattr(runner, "write_metrics_safely", stopped)
    result = run(world, "data", now=0)
    assert result.code == 143, result.err
    doc = JobRecords(world.state).load("data")
    assert doc["last_run"]["status"] == "ok" and doc["runs_total"] == {"ok": 1}, doc["last_run"]


@pytest.mark.parametrize("drop", [None, "CAP_SYS_CHROOT"])
@pytest.mark.slow
def test_a_drill_runs_with_only_the_capabilities_the_unit_grants(world: World, tmp_path: Path,
                                                                 drop: str | None) -> None:
    """The generated unit bounds the capabilities (CapabilityBoundingSet=); a drill needs every
    one btrfs receive uses: --chroot needs CAP_SYS_CHROOT, and without it every drill of a
    unit failed with 'failed to chroot: Operation not permitted'."""
    from btrsync.jobs.systemd import BASE_CAPS, RECEIVE_CAPS

    caps = [c for c in BASE_CAPS + RECEIVE_CAPS if c != drop]
    tree.populate(world.subvol, 2)
    world.snapshot()
    assert world.push().code == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    bounding = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    argv = ["setpriv", f"--bounding-set={bounding}", sys.executable, "-m", "btrsync",
            "--config", str(world.config), "--state-dir", str(world.state), "--key-file", str(world.key),
            "verify", "--from", world.url, "--level", "restore", "--scratch-dir", str(scratch)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if drop is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and "chroot" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_drill_that_cannot_run_does_not_stop_retention(world: World, tmp_path: Path) -> None:
    """Pruning waits for what was pushed to verify; a drill that could not run at all (its scratch
    directory is a file) says nothing of the backups, and must not keep the target from ever being
    pruned (it would grow until full while the scratch problem lasts)."""
    tree.populate(world.subvol, 2)
    _drill_without_scratch(world, tmp_path, drill_every="1h", target="{ max_chain = 0, retention = { keep_last = 1 } }")
    assert run(world, "data", now=0).code == 1
    second = run(world, "data", now=2)
    [target] = outcome(second)["data"]["targets"]
    assert target["verify"]["ok"] and not target["drill"]["ok"] and target["drill"]["damaged"] == 0, target
    assert len(target["pruned"]) == 1 and len(listing(world, "usb")) == 1, target


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_hook_does_not_outlive_a_run_killed_with_sigkill(world: World, tmp_path: Path) -> None:
    """SIGKILL of 'run' during a pre hook (the OOM killer, 'kill -9', a container stopped) left the
    hook and what it started running as orphans, still dumping a database or holding a lock. The
    hook's watchdog ends its process group when the run dies, TERM first (the hook may clean up)."""
    from tests.integration.test_signals import Child

    pids, trapped = tmp_path / "pids", tmp_path / "trapped"
    hook = (f"trap 'echo term > {trapped}; exit 1' TERM; sleep 300 & echo $$ $! > {pids}.tmp; "
            f"mv {pids}.tmp {pids}; wait")
    _single_job(world, f'hooks = {{ pre = [["sh", "-c", "{hook}"]], timeout = "1h" }}')
    child = Child(world, "run", "data")
    deadline = time.monotonic() + 60
    while not pids.exists():
        assert child.proc.poll() is None, child.stderr()
        assert time.monotonic() < deadline, "the hook never started"
        time.sleep(0.01)
    shell, sleeper = (int(p) for p in pids.read_text().split())
    child.proc.kill()
    child.proc.wait()
    deadline = time.monotonic() + 30  # a bound on the reaping, not a guess of how long it takes
    while (_alive(shell) or _alive(sleeper)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(shell) and not _alive(sleeper), "the hook outlived the killed run"
    assert trapped.read_text() == "term\n"  # SIGTERM first, as at a timeout
    assert snapshots(world, "data") == []  # the run never got past its pre hook


@pytest.mark.slow
def test_a_run_that_waited_for_the_repository_plans_on_a_new_listing(world: World) -> None:
    """A run lists the catalog beside the marker's read; when it then waits for the repository's
    lock, what was committed meanwhile must count: its push plans on a new listing (on the old
    one it would send its snapshot again and fail on 'committed meanwhile')."""
    from btrsync.catalog.repository import Repository
    from btrsync.crypto.keys import load_key_file
    from btrsync.ops.push.run import push
    from btrsync.ops.push.settings import PushSettings
    from btrsync.targets.local import LocalTarget

    _single_job(world)
    assert run(world, "data", now=0).code == 0
    repo_id = json.loads((world.target_dir / "btrsync-repo.json").read_text())["repo_id"]
    argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
            "--key-file", str(world.key), "run", "data", "--wait", "60s", "--now", at(1)]
    before = set(world.snapdir.iterdir())
    with target_lock(world.state, f"repository {repo_id}"):  # another push of this host holds it
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while set(world.snapdir.iterdir()) == before:  # the run takes its snapshot first
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(1.5)  # then opens the repository (listing beside the marker) and waits for the lock
        repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
        [sent] = push(world.subvol, world.snapdir, repo, PushSettings(chunk_size=64 << 10)).results
        assert sent.status == "ok", sent.error  # the other push sends the run's new snapshot meanwhile
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert len(world.listing()) == 2
