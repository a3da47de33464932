"""The units of ``btrsync systemd generate``, started by a real systemd (tests/systemd/harness.py).

One boot for the module; each test installs the units for its configuration and starts them with
``systemctl``.  The data directory is bound at the same path, so the configuration names the same
paths on both sides; SeaweedFS listens on the host's loopback, which the container shares.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from btrsync.config.model import load_config
from btrsync.jobs.systemd import generate
from tests.support.loopfs import create_subvolume
from tests.systemd.conftest import Booted
from tests.targets.factories_s3 import TEST_BUCKET, seaweed

pytestmark = [pytest.mark.systemd, pytest.mark.btrfs]

BTRSYNC = str(Path(sys.executable).parent / "btrsync")


def host_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BTRSYNC, "--config", str(config), *args], capture_output=True, text=True, timeout=120,
                          check=False)


class Setup:
    """A job's files under the data directory: key, credentials, configuration, subvolume."""

    def __init__(self, booted: Booted, name: str) -> None:
        self.booted = booted
        self.name = name
        self.dir = booted.data / name
        self.secrets = self.dir / "secrets"
        self.secrets.mkdir(parents=True)
        self.secrets.chmod(0o700)
        self.key = self.secrets / "key"
        assert host_cli(self.dir / "none.toml", "key", "generate", str(self.key)).returncode == 0
        self.subvolume = create_subvolume(booted.fs / name)
        (self.subvolume / "file").write_bytes(os.urandom(300_000))
        self.snapdir = booted.fs / f"{name}.snapshots"
        self.snapdir.mkdir()
        self.state = self.dir / "state"
        self.metrics = self.dir / "metrics"
        self.config = self.dir / "config.toml"

    def write(self, targets: str, job: str = "") -> Path:
        self.config.write_text(f"""
key_file = "{self.key}"
state_dir = "{self.state}"
metrics_dir = "{self.metrics}"
{targets}
[jobs.{self.name}]
subvolumes = ["{self.subvolume}"]
snapshot_dir = "{self.snapdir}"
schedule = "daily"
{job}
""")
        return self.config

    def units(self, **kwargs: Any) -> dict[str, str]:
        config = load_config(self.config, explicit=True)
        return generate(config, list(config.jobs.jobs.values()), config_path=self.config, btrsync=BTRSYNC, **kwargs)

    def record(self) -> dict[str, Any]:
        return json.loads((self.state / "jobs" / f"{self.name}.json").read_text())  # type: ignore[no-any-return]

    def backups(self, target: str) -> list[dict[str, Any]]:
        proc = host_cli(self.config, "list", "--from", target, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]


def started(booted: Booted, unit: str) -> dict[str, str]:
    c = booted.container
    proc = c.start_unit(unit)
    props = c.show(unit, "ActiveState", "Result", "ExecMainStatus")
    props["journal"] = c.journal(unit)
    props["rc"] = str(proc.returncode)
    return props


def test_a_generated_job_unit_runs_end_to_end_with_its_credentials_and_sandbox(
        booted: Booted, request: pytest.FixtureRequest) -> None:
    s = Setup(booted, "home")
    server = seaweed(request)
    creds = server.account.write_credentials_file(s.secrets / "s3.credentials")
    usb = s.dir / "usb"
    usb.mkdir()
    s.write(f"""
[targets.usb]
url = "file://{usb}"
[targets.s3]
url = "s3://{TEST_BUCKET}/systemd-{uuid.uuid4().hex[:12]}"
endpoint = "{server.account.endpoint}"
region = "{server.account.region}"
credentials_file = "{creds}"
""", "targets = [\"usb\", \"s3\"]\nverify = { level = \"data\" }\n")
    for target in ("usb", "s3"):
        proc = host_cli(s.config, "init", "--to", target)
        assert proc.returncode == 0, proc.stderr
    units = s.units()
    # the secrets are readable by systemd (PID 1), never by the service: only LoadCredential= gets them
    units["btrsync-home.service.d/secrets.conf"] = f"[Service]\nInaccessiblePaths={s.secrets}\n"
    (booted.container.units / "btrsync-home.service.d").mkdir()
    booted.container.install(units)

    result = started(booted, "btrsync-home.service")
    assert result["rc"] == "0" and result["Result"] == "success", result["journal"]
    record = s.record()
    assert record["last_run"]["status"] == "ok", record
    assert {t: r["last_run"]["status"] for t, r in record["targets"].items()} == {"usb": "ok", "s3": "ok"}
    assert len(s.backups("usb")) == 1 and len(s.backups("s3")) == 1
    assert (s.metrics / "btrsync.prom").exists(), result["journal"]

    # without the credentials the same unit fails: the drop-in is what the test claims it is
    units["btrsync-home.service.d/secrets.conf"] += "LoadCredential=\n"
    booted.container.install({"btrsync-home.service.d/secrets.conf": units["btrsync-home.service.d/secrets.conf"]})
    booted.container.reset("btrsync-home.service")
    result = started(booted, "btrsync-home.service")
    assert result["rc"] != "0" and result["Result"] == "exit-code", result["journal"]


def test_a_percent_encoded_directory_target_is_writable_in_the_unit(booted: Booted) -> None:
    """file://…/usb%20disk is the directory 'usb disk': ReadWritePaths= must name it decoded, or
    ProtectSystem=strict keeps the real target read-only and the push fails."""
    s = Setup(booted, "pct")
    usb = s.dir / "usb disk"
    usb.mkdir()
    s.write(f'[targets.usb]\nurl = "file://{str(usb).replace(" ", "%20")}"\n', 'targets = ["usb"]\n')
    assert host_cli(s.config, "init", "--to", "usb").returncode == 0
    booted.container.install(s.units())
    result = started(booted, "btrsync-pct.service")
    assert result["rc"] == "0" and result["Result"] == "success", result["journal"]
    assert len(s.backups("usb")) == 1


def test_hooks_run_in_the_sandbox_with_their_watchdog(booted: Booted) -> None:
    """Hooks run under the unit's SystemCallFilter= (the watchdog's prctl, a python child) and
    ProtectSystem=strict: they write where the unit may, and nowhere else."""
    s = Setup(booted, "hooks")
    usb = s.dir / "usb"
    usb.mkdir()
    outside = s.dir / "outside"
    marker = s.state / "pre-hook"
    hooks = (f'hooks = {{ pre_failure = "continue", pre = ['
             f'["sh", "-c", "echo $BTRSYNC_JOB > {marker}"], ["touch", "{outside}"]] }}')
    s.write(f'[targets.usb]\nurl = "file://{usb}"\n', f'targets = ["usb"]\n{hooks}\n')
    assert host_cli(s.config, "init", "--to", "usb").returncode == 0
    booted.container.install(s.units())
    result = started(booted, "btrsync-hooks.service")
    assert result["rc"] == "0" and result["Result"] == "success", result["journal"]
    assert marker.read_text() == "hooks\n"
    assert not outside.exists() and "Read-only file system" in result["journal"], result["journal"]


def test_a_pre_hook_writes_to_a_declared_writable_path_with_its_own_path(booted: Booted) -> None:
    """A database dump before the snapshot: ``pg_dumpall`` found on the hooks' ``path`` (not the
    unit's), writing into a directory the job declares in ``hooks.read_write_paths``.  Without the
    declaration the same unit fails: the sandbox keeps the directory read-only."""
    s = Setup(booted, "dump")
    usb = s.dir / "usb"
    usb.mkdir()
    db = s.dir / "srv" / "db"  # /srv/db of a real host
    db.mkdir(parents=True)
    bindir = s.dir / "pgbin"
    bindir.mkdir()
    dump = bindir / "pg_dumpall"
    dump.write_text('#!/bin/sh\n[ "$1" = -f ] || exit 64\necho "-- dump of $BTRSYNC_JOB" > "$2"\n')
    dump.chmod(0o755)

    def job(writable: str) -> str:
        return (f'targets = ["usb"]\nhooks = {{ pre = [["pg_dumpall", "-f", "{db}/dump.sql"]], '
                f'path = ["{bindir}"]{writable} }}\n')

    target = f'[targets.usb]\nurl = "file://{usb}"\n'
    c = booted.container

    s.write(target, job(f', read_write_paths = ["{db}"]'))
    assert host_cli(s.config, "init", "--to", "usb").returncode == 0
    units = s.units()
    assert f"-{db}" in units["btrsync-dump.service"]
    assert str(bindir) not in units["btrsync-dump.service"]  # the unit's own PATH is not extended
    c.install(units)
    result = started(booted, "btrsync-dump.service")
    assert result["rc"] == "0" and result["Result"] == "success", result["journal"]
    assert (db / "dump.sql").read_text() == "-- dump of dump\n"
    assert s.record()["last_run"]["status"] == "ok"

    (db / "dump.sql").unlink()
    s.write(target, job(""))
    c.install(s.units())
    c.reset("btrsync-dump.service")
    result = started(booted, "btrsync-dump.service")
    assert result["rc"] == "1" and result["Result"] == "exit-code", result["journal"]
    assert not (db / "dump.sql").exists()
    assert "Read-only file system" in result["journal"], result["journal"]
    assert s.record()["last_run"]["status"] == "failed"


def test_a_drill_runs_in_its_unit_and_shares_the_scratch_directory(booted: Booted) -> None:
    """A restore drill inside the unit: loop device, mount, btrfs receive under the capability set and
    the system call filter.  The default scratch directory is under /var/tmp, which PrivateTmp=
    makes private to the unit: a leftover of a killed drill there must still be found and removed."""
    s = Setup(booted, "drill")
    usb = s.dir / "usb"
    usb.mkdir()
    s.write(f'[targets.usb]\nurl = "file://{usb}"\n', 'targets = ["usb"]\nverify = { drill_every = "1d" }\n')
    assert host_cli(s.config, "init", "--to", "usb").returncode == 0
    c = booted.container
    c.run(["mkdir", "-p", "/var/tmp/btrsync-drills"])
    c.run(["touch", "/var/tmp/btrsync-drills/btrsync-drill-leftover.img"])
    c.install(s.units())
    result = started(booted, "btrsync-drill.service")
    assert result["rc"] == "0" and result["Result"] == "success", result["journal"]
    drill = s.record()["targets"]["usb"]["drill"]
    assert drill["ok"] and drill["level"] == "restore", drill
    assert "btrsync-drill-leftover.img" in result["journal"]  # removed, and said
    assert c.run(["ls", "-A", "/var/tmp/btrsync-drills"]).stdout.strip() == ""
    # no loop device left on a scratch image of the unit (those of drills that tests on other
    # workers run at the same time have their own directories)
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
    assert [line for line in loops if "btrsync-drills/btrsync-drill" in line] == []


class FailingJob:
    """A job whose on_failure hook appends to a marker file; its unit can be made to fail or be killed."""

    def __init__(self, booted: Booted, name: str) -> None:
        self.s = s = Setup(booted, name)
        self.c = booted.container
        self.unit = f"btrsync-{name}.service"
        self.handler = f"btrsync-on-failure@{self.unit}.service"
        self.marker = s.dir / "failures"
        self.flag, self.running = s.dir / "kill-me", s.dir / "running"
        hooks = (f'hooks = {{ on_failure = [["sh", "-c", '
                 f'"echo \\"$BTRSYNC_STATUS $BTRSYNC_ERROR\\" >> {self.marker}"]], '
                 f'pre = [["sh", "-c", "if [ -e {self.flag} ]; then touch {self.running}; sleep 60; fi"]] }}')
        s.write(f'[targets.usb]\nurl = "file://{s.dir / "usb"}"\n', f'targets = ["usb"]\n{hooks}\n')
        self.units = s.units()
        # the hook writes its marker beside the job's files: writable for this test
        for unit in (self.unit, "btrsync-on-failure@.service"):
            (self.c.units / f"{unit}.d").mkdir(exist_ok=True)
            self.units[f"{unit}.d/marker.conf"] = f"[Service]\nReadWritePaths={s.dir}\n"
        self.c.install(self.units)

    def start(self, *, killed: bool = False) -> dict[str, str]:
        """Start the unit; ``killed``: SIGKILL it while its pre hook runs (an OOM kill, say)."""
        self.c.reset(self.unit, self.handler)
        if not killed:
            self.flag.unlink(missing_ok=True)
            result = started(self.s.booted, self.unit)
        else:
            self.flag.touch()
            self.running.unlink(missing_ok=True)
            self.c.systemctl("start", "--no-block", self.unit)
            deadline = time.monotonic() + 30
            while not self.running.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            self.c.systemctl("kill", "--signal=KILL", self.unit)
            self.c.wait_inactive(self.unit)
            result = self.c.show(self.unit, "ActiveState", "Result", "ExecMainStatus")
            result["journal"] = self.c.journal(self.unit)
        time.sleep(0.5)  # OnFailure= queues the handler as the unit fails
        assert self.c.wait_inactive(self.handler) == "inactive"
        return result

    def hook_runs(self) -> list[str]:
        return self.marker.read_text().splitlines() if self.marker.exists() else []


def test_a_failing_run_starts_the_on_failure_unit_which_runs_the_hooks_once(booted: Booted) -> None:
    """A run btrsync could not report (killed) gets its on_failure hooks from btrsync-on-failure@,
    started by OnFailure=; a run that failed (target disk missing) runs them itself, and then
    btrsync-on-failure@ runs, but does not run them twice."""
    job = FailingJob(booted, "fails")
    result = job.start(killed=True)
    assert result["Result"] == "signal", result
    assert job.c.show(job.handler, "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"] != "0"
    runs = job.hook_runs()
    assert len(runs) == 1 and "systemd unit btrsync-fails.service failed" in runs[0], job.c.journal(job.handler)

    result = job.start()
    assert result["Result"] == "exit-code" and result["ExecMainStatus"] == "1", result["journal"]
    assert job.c.show(job.handler, "Result")["Result"] == "success"
    runs = job.hook_runs()
    assert len(runs) == 2 and "does not exist (is the disk mounted?)" in runs[1], runs


def test_a_run_killed_after_a_failed_run_still_gets_its_failure_hooks(booted: Booted) -> None:
    """A killed run writes no record: the last one is the failed run's, whose hooks ran.  The
    handler tells the two apart by the invocation ($MONITOR_INVOCATION_ID, systemd >= 251)."""
    job = FailingJob(booted, "refails")
    job.start()
    assert len(job.hook_runs()) == 1
    assert job.start(killed=True)["Result"] == "signal"
    assert len(job.hook_runs()) == 2, job.c.journal(job.handler)


def test_a_missing_key_file_fails_the_unit_with_243_credentials_and_runs_the_hooks(booted: Booted) -> None:
    """What a host sees when the secrets manager has not written the key yet (OpNix without its
    token on a new host, docs/nixos.md): LoadCredential= cannot read it, the unit fails before
    btrsync starts (243/CREDENTIALS), and btrsync-on-failure@ runs the job's on_failure hooks."""
    job = FailingJob(booted, "nokey")
    (job.s.dir / "usb").mkdir()
    assert host_cli(job.s.config, "init", "--to", "usb").returncode == 0
    aside = job.s.key.with_name("key.aside")
    job.s.key.rename(aside)
    try:
        result = job.start()
    finally:
        aside.rename(job.s.key)
    assert result["Result"] == "exit-code", result
    status = job.c.systemctl("status", job.unit, check=False).stdout
    assert "243/CREDENTIALS" in status, status
    assert "Failed to set up credentials" in result["journal"] or "credential" in result["journal"].lower(), result
    runs = job.hook_runs()
    assert len(runs) == 1 and f"systemd unit {job.unit} failed" in runs[0], job.c.journal(job.handler)
    # with the key back, the same unit runs
    job.c.reset(job.unit)
    assert started(booted, job.unit)["rc"] == "0"


def inhibitors(booted: Booted) -> str:
    """``systemd-inhibit --list`` in the container (logind runs there: dbus and systemd-logind)."""
    return booted.container.run(["systemd-inhibit", "--list", "--no-pager", "--no-legend"]).stdout


def test_stop_mid_push_is_recorded_as_terminated_and_the_next_start_resumes(booted: Booted) -> None:
    """With ``inhibit_sleep``: btrsync holds logind's sleep lock itself, so SIGTERM still reaches it."""
    s = Setup(booted, "stop")
    (s.subvolume / "big").write_bytes(os.urandom(4 << 20))
    usb = s.dir / "usb"
    usb.mkdir()
    push = '[push]\nchunk_size = "64k"\nsegment_size = "192k"\n'
    slow = push + 'bwlimit = "400k"\n'
    job = 'targets = ["usb"]\ninhibit_sleep = true\n'
    s.write(f'{slow}[targets.usb]\nurl = "file://{usb}"\n', job)
    assert host_cli(s.config, "init", "--to", "usb").returncode == 0
    c = booted.container
    c.install(s.units())
    assert "btrsync" not in inhibitors(booted)
    c.systemctl("start", "--no-block", "btrsync-stop.service")
    deadline = time.monotonic() + 30
    while not list((usb).rglob("*.lease")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # a few segments are durable
    held = [line for line in inhibitors(booted).splitlines() if "btrsync" in line]
    assert len(held) == 1 and "sleep" in held[0] and "job stop runs" in held[0] and "block" in held[0], held
    assert "sleep not inhibited" not in c.journal("btrsync-stop.service")
    t0 = time.monotonic()
    c.systemctl("stop", "btrsync-stop.service")
    stopped_in = time.monotonic() - t0
    props = c.show("btrsync-stop.service", "Result", "ExecMainStatus")
    assert props["ExecMainStatus"] == "143", (props, c.journal("btrsync-stop.service"))
    assert stopped_in < 20
    assert s.record()["last_run"]["status"] == "terminated"
    assert "btrsync" not in inhibitors(booted)  # the lock went with the process
    # the segments made durable before the stop: a resume keeps them, it does not send them again
    durable = {p: p.stat().st_ino for p in usb.glob("data/*/[0-9]*")}
    assert durable, sorted(str(p) for p in usb.rglob("*"))
    s.write(f'{push}[targets.usb]\nurl = "file://{usb}"\n', job)
    c.reset("btrsync-stop.service")
    result = started(booted, "btrsync-stop.service")
    assert result["rc"] == "0", result["journal"]
    assert s.record()["last_run"]["status"] == "ok", result["journal"]
    # the stopped backup completed (the next run's own snapshot follows it), from its durable segments
    stopped = {p.parent.name for p in durable}
    assert stopped <= {b["id"] for b in s.backups("usb")} and len(s.backups("usb")) == 2
    kept = [p for p, ino in durable.items() if p.exists() and p.stat().st_ino == ino]
    assert len(kept) >= len(durable) // 2, (len(kept), len(durable))  # a fresh push rewrites them all


def test_the_timer_is_listed_and_catches_up_a_missed_run(booted: Booted) -> None:
    s = Setup(booted, "timer")
    usb = s.dir / "usb"
    usb.mkdir()
    s.write(f'[targets.usb]\nurl = "file://{usb}"\n', 'targets = ["usb"]\n')
    assert host_cli(s.config, "init", "--to", "usb").returncode == 0
    c = booted.container
    c.install(s.units())
    # the timer last elapsed three days ago (Persistent= keeps that in a stamp file): a run was missed
    c.run(["mkdir", "-p", "/var/lib/systemd/timers"])
    c.run(["touch", "-d", "3 days ago", "/var/lib/systemd/timers/stamp-btrsync-timer.timer"])
    c.systemctl("start", "btrsync-timer.timer")
    listed = c.systemctl("list-timers", "--all", "--no-legend", "btrsync-timer.timer").stdout
    assert "btrsync-timer.timer" in listed and "btrsync-timer.service" in listed, listed
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if c.show("btrsync-timer.service", "Result", "ActiveState", "ExecMainStatus")["ActiveState"] == "inactive" \
                and (s.state / "jobs" / "timer.json").exists():
            break
        time.sleep(0.2)
    assert s.record()["last_run"]["status"] == "ok", c.journal("btrsync-timer.service")
    assert len(s.backups("usb")) == 1
    # and the next run is tomorrow (schedule "daily")
    listed = c.systemctl("list-timers", "--all", "--no-legend", "--output=json", "btrsync-timer.timer").stdout
    timer = json.loads(listed)[0]
    assert timer["next"] and timer["last"] and timer["next"] - timer["last"] < 86_400_000_000 + 60_000_000, timer


def test_a_drill_needs_only_what_the_nixos_package_puts_on_path(booted: Booted) -> None:
    """On NixOS a unit's PATH is coreutils, findutils, grep, sed and systemd, and the wrapped btrsync
    adds what nix/package.nix lists: a drill (losetup, mount, umount, mountpoint, btrfs) must run
    with exactly that."""
    from tests.nix.nixeval import wrapped_tools
    from tests.systemd.harness import NIXOS_BASE_PATH, nix_like_path

    s = Setup(booted, "narrow")
    usb = s.dir / "usb"
    usb.mkdir()
    s.write(f'[targets.usb]\nurl = "file://{usb}"\n',
            f'targets = ["usb"]\nverify = {{ drill_every = "1d", scratch_dir = "{s.dir / "scratch"}" }}\n')
    assert host_cli(s.config, "init", "--to", "usb").returncode == 0
    path = nix_like_path(s.dir / "nix", [*wrapped_tools(), *NIXOS_BASE_PATH])
    units = s.units()
    (booted.container.units / "btrsync-narrow.service.d").mkdir()
    units["btrsync-narrow.service.d/path.conf"] = f"[Service]\nEnvironment=PATH={path}\n"
    booted.container.install(units)
    result = started(booted, "btrsync-narrow.service")
    assert result["rc"] == "0", result["journal"]
    drill = s.record()["targets"]["usb"]["drill"]
    assert drill["ok"] and drill["level"] == "restore", (drill, result["journal"])
