"""The units of ``btrsync systemd generate``, started by a real systemd (tests/systemd/harness.py).

One boot for the module; each test installs the units for its configuration and starts them with
``systemctl``.  The data directory is bound at the same path, so the configuration names the same
paths on both sides; SeaweedFS listens on the host's loopback, which the container shares.
"""

from __future__ import annotations

import json
import os
import subprocess
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
    assert "btrsync-drill" not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
