"""The NixOS module's units, as the module renders them, started by a real systemd.

The module is evaluated with nixpkgs' lib (tests/nix/nixeval.py); its units become unit files
the way NixOS writes them, with what NixOS adds: ``Environment=PATH=`` of the unit's ``path``
plus NixOS's defaults (coreutils, findutils, grep, sed, systemd), and the package as
``makeWrapper`` builds it (``bin/btrsync`` with nix/package.nix's tools in front of PATH).  The
host's /usr plays the store: each package is a directory of links to the programs of the Debian
packages holding them (``nix_like_path``), so a tool neither the unit nor the package declares
is missing, and the test fails, as it would on NixOS.  tmpfiles rules are applied by hand.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.nix.nixeval import HERE, find_lib, run_nix, unit_files, wrapped_tools
from tests.support.loopfs import create_subvolume
from tests.systemd.conftest import Booted
from tests.systemd.harness import NIXOS_BASE_PATH, nix_like_path
from tests.systemd.test_generated_units import BTRSYNC, host_cli, started
from tests.targets.factories_s3 import TEST_BUCKET, seaweed

pytestmark = [pytest.mark.systemd, pytest.mark.btrfs]
CONFIG_PATH = Path("/etc/btrsync/config.toml")
STORE = re.compile(r"^/nix/store/[0-9a-z]{32}-")


def wrapped_package(farm: Path) -> Path:
    """``$out`` of the package as makeWrapper makes it: bin/btrsync runs the real one with the
    package's tools in front of PATH (``--prefix PATH : ...``)."""
    out = farm / "btrsync"
    (out / "bin").mkdir(parents=True)
    tools = nix_like_path(farm, wrapped_tools())
    wrapper = out / "bin" / "btrsync"
    wrapper.write_text(f'#!/usr/bin/sh\nPATH="{tools}${{PATH:+:$PATH}}" exec "{BTRSYNC}" "$@"\n')
    wrapper.chmod(0o755)
    return out


def evaluate(module: Path, prefix: Path) -> dict[str, Any]:
    out = run_nix(["--eval", "--strict", "--json", str(HERE / "eval.nix"), "--arg", "lib", find_lib(),
                   "--argstr", "btrsyncPrefix", str(prefix), "--arg", "modules", f"[ {module} ]"])
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def install(booted: Booted, host: dict[str, Any], farm: Path) -> dict[str, str]:
    """The host's units into the container as NixOS would write them; its config.toml and tmpfiles."""
    c = booted.container
    files = unit_files(host)
    for name, unit in host["services"].items():
        packages = [p["name"] if isinstance(p, dict) else str(p) for p in unit.get("path", [])]
        path = nix_like_path(farm, [*packages, *NIXOS_BASE_PATH])
        text = files[f"{name}.service"]
        files[f"{name}.service"] = text.replace("[Service]\n", f"[Service]\nEnvironment=PATH={path}\n", 1)
    # store paths of packages in the settings (hooks.path) -> the same programs of the host's /usr
    for job in host["settings"].get("jobs", {}).values():
        hooks = job.get("hooks", {})
        hooks["path"] = [nix_like_path(farm, [STORE.sub("", p).removesuffix("/bin")]) if STORE.match(p) else p
                         for p in hooks.get("path", [])]
    config = farm / "config.toml"
    config.write_text(tomli_w.dumps(host["settings"]))
    c.run(["mkdir", "-p", str(CONFIG_PATH.parent)])
    c.run(["cp", str(config), str(CONFIG_PATH)])
    for rule in host["tmpfiles"]:
        kind, path, mode, *_ = rule.split()
        assert kind == "d", rule
        c.run(["mkdir", "-p", "-m", mode, path])
    c.install(files)
    return files


def _job_source(booted: Booted, name: str, subvolume_name: str, size: int) -> tuple[Path, Path, Path, Path]:
    """A job's places: ``data`` (the test's directory in the container's data) with a 0700
    ``secrets`` holding a new key, and a subvolume of ``size`` random bytes with its snapshot
    directory.  Returns data, the key, the subvolume and the snapshot directory."""
    data = booted.data / name
    secrets = data / "secrets"
    secrets.mkdir(parents=True, mode=0o700)
    key = secrets / "key"
    assert host_cli(data / "none.toml", "key", "generate", str(key)).returncode == 0
    subvolume = create_subvolume(booted.fs / subvolume_name)
    (subvolume / "file").write_bytes(os.urandom(size))
    snapshots = booted.fs / f"{subvolume_name}.snapshots"
    snapshots.mkdir()
    return data, key, subvolume, snapshots


def test_the_nixos_job_unit_runs_end_to_end_with_only_what_it_declares(booted: Booted) -> None:
    data, key, subvolume, snapshots = _job_source(booted, "nixos", "nixos", 200_000)
    usb = data / "usb"
    usb.mkdir()
    (data / "hooks").mkdir()
    module = data / "host.nix"
    module.write_text(f"""
{{
  services.btrsync = {{
    enable = true;
    keyFile = "{key}";
    stateDir = "{data / 'state'}";
    monitoring.metricsDir = "{data / 'metrics'}";
    targets.usb = {{ url = "file://{usb}"; initialize = true; }};
    jobs.nixos = {{
      subvolumes = [ "{subvolume}" ];
      snapshotDir = "{snapshots}";
      targets.usb = {{ }};
      verify.drillEvery = "1d";
      verify.scratchDir = "{data / 'scratch'}";
      # the sleep lock is btrsync's own while the job runs: a hook sees it in logind's list
      inhibitsSleep = true;
      hooks.pre = [ [ "sh" "-c" "systemd-inhibit --list --no-pager --no-legend > {data / 'hooks' / 'inhibitors'}" ] ];
      hooks.readWritePaths = [ "{data / 'hooks'}" ];
    }};
  }};
}}
""")
    farm = data / "nix"
    host = evaluate(module, wrapped_package(farm))
    assert host["assertions"] == []
    files = install(booted, host, farm)
    assert f"ExecStart={farm}/btrsync/bin/btrsync --config {CONFIG_PATH}" in files["btrsync-nixos.service"]
    # the secrets are PID 1's to read, not the service's: only LoadCredential= hands the key over
    c = booted.container
    (c.units / "btrsync-nixos.service.d").mkdir()
    c.install({"btrsync-nixos.service.d/secrets.conf": f"[Service]\nInaccessiblePaths={key.parent}\n"})

    # the first run creates the repository (initialize), pushes, verifies and drills
    result = started(booted, "btrsync-nixos.service")
    assert result["rc"] == "0" and result["Result"] == "success", result["journal"]
    record = json.loads((data / "state" / "jobs" / "nixos.json").read_text())
    assert record["last_run"]["status"] == "ok", result["journal"]
    assert record["targets"]["usb"]["drill"]["ok"], (record, result["journal"])
    assert (usb / "btrsync-repo.json").exists() and (data / "metrics" / "btrsync.prom").exists()
    held = [line for line in (data / "hooks" / "inhibitors").read_text().splitlines() if "btrsync" in line]
    assert len(held) == 1 and "job nixos runs" in held[0] and "sleep" in held[0], held
    assert "sleep not inhibited" not in result["journal"]
    # the second run finds its repository and does not make another
    c.reset("btrsync-nixos.service")
    result = started(booted, "btrsync-nixos.service")
    assert result["rc"] == "0", result["journal"]
    assert "already at" in result["journal"] and "nothing to do" in result["journal"], result["journal"]
    listed = host_cli(farm / "config.toml", "list", "--from", "usb", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 2, listed.stderr


def test_a_tool_the_unit_does_not_declare_is_missing(booted: Booted) -> None:
    """The PATH of these units is what NixOS gives them: a hook calling a program no package of the
    unit, of NixOS's defaults or of btrsync's wrapper provides ('file') is not found, and the run
    fails; the same hook with the program's directory in hooks.path runs."""
    data = booted.data / "nixos-path"
    data.mkdir()
    subvolume = create_subvolume(booted.fs / "nixospath")
    snapshots = booted.fs / "nixospath.snapshots"
    snapshots.mkdir()
    marker = data / "hook"
    module = data / "host.nix"
    module.write_text(f"""
{{
  services.btrsync = {{
    enable = true;
    stateDir = "{data / 'state'}";
    monitoring.enable = false;
    jobs.nixospath = {{
      subvolumes = [ "{subvolume}" ];
      snapshotDir = "{snapshots}";
      hooks.pre = [ [ "sh" "-c" "file --version > {marker}" ] ];
      hooks.readWritePaths = [ "{data}" ];
    }};
  }};
}}
""")
    farm = data / "nix"
    host = evaluate(module, wrapped_package(farm))
    install(booted, host, farm)
    result = started(booted, "btrsync-nixospath.service")
    assert result["rc"] == "1", result["journal"]
    assert "file: not found" in result["journal"], result["journal"]
    assert not marker.exists() or marker.read_text() == ""

    # declared on the hooks' PATH (the NixOS option takes packages: here the Debian package's bin)
    module.write_text(module.read_text().replace(
        "hooks.readWritePaths", f'hooks.path = [ "{farm / "file" / "bin"}" ];\n      hooks.readWritePaths'))
    (farm / "file" / "bin").mkdir(parents=True)
    (farm / "file" / "bin" / "file").symlink_to("/usr/bin/file")
    host = evaluate(module, farm / "btrsync")
    install(booted, host, farm)
    booted.container.reset("btrsync-nixospath.service")
    result = started(booted, "btrsync-nixospath.service")
    assert result["rc"] == "0", result["journal"]
    assert marker.read_text().startswith("file-")


def _status(farm: Path, target: str) -> dict[str, Any]:
    proc = host_cli(farm / "config.toml", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in json.loads(proc.stdout) if r["target"] == target]
    assert len(rows) == 1, proc.stdout
    return rows[0]  # type: ignore[no-any-return]


def _metric(metrics: Path, name: str, target: str) -> float:
    lines = [line for line in metrics.read_text().splitlines()
             if line.startswith(name + "{") and f'target="{target}"' in line]
    assert len(lines) == 1, (name, metrics.read_text())
    return float(lines[0].rsplit(" ", 1)[1])


@pytest.mark.slow
def test_the_nixos_timers_and_verification_units_run_and_a_damaged_backup_fails_the_verification(
        booted: Booted, request: pytest.FixtureRequest) -> None:
    """The module's timers are loaded with their OnCalendar= and a next elapse; the job's timer
    catches up a run missed while the machine was off (Persistent=), which makes the first backup
    on a 'noauto' backup disk it mounts.  ``btrsync-verify-<name>`` mounts the disk too and
    verifies the backup for real (data, and a restore drill through a loop device with the unit's
    capabilities and PATH; and of an S3 target through the credentials LoadCredential= hands it)
    and records the result where status and the metrics read it.  On a
    damaged backup the verification unit fails with exit 4 and starts the host's ``onFailure``
    units."""
    data, key, subvolume, snapshots = _job_source(booted, "nixos-verify", "nixver", 300_000)
    secrets = key.parent
    # the backup disk: a 'noauto' mount (a bind mount of 'disk' here) at 'mnt', mounted by the units
    mnt, usb = data / "mnt", data / "disk" / "usb"  # the repository: the container's mnt/usb, the host's disk/usb
    mnt.mkdir()
    usb.mkdir(parents=True)
    notified = data / "notified"
    metrics = data / "metrics"
    server = seaweed(request)
    creds = server.account.write_credentials_file(secrets / "s3.credentials")
    module = data / "host.nix"
    module.write_text(f"""
{{
  services.btrsync = {{
    enable = true;
    keyFile = "{key}";
    stateDir = "{data / 'state'}";
    monitoring.metricsDir = "{metrics}";
    onFailure = [ "btrsync-test-notify@%n.service" ];
    targets.usb = {{ url = "file://{mnt / 'usb'}"; initialize = true; }};
    targets.s3 = {{
      url = "s3://{TEST_BUCKET}/nixos-verify-{uuid.uuid4().hex[:12]}";
      endpoint = "{server.account.endpoint}";
      region = "{server.account.region}";
      credentialsFile = "{creds}";
      initialize = true;
    }};
    jobs.nixver = {{
      subvolumes = [ "{subvolume}" ];
      snapshotDir = "{snapshots}";
      targets.usb = {{ }};
      targets.s3 = {{ }};
      schedule = "*-*-* 01:30:00";
    }};
    # a timer of its own calendar over the schedule (as services.restic.backups.<name>.timerConfig)
    jobs.nixcal = {{
      subvolumes = [ "{create_subvolume(booted.fs / 'nixcal')}" ];
      snapshotDir = "{booted.fs / 'nixcal.snapshots'}";
      timerConfig.OnCalendar = [ "" "Mon..Fri 01:30" "Sat 04:00" ];
    }};
    verifications.usbdata = {{ target = "usb"; level = "data"; schedule = "Sun 03:00"; }};
    verifications.s3data = {{ target = "s3"; level = "data"; }};
    verifications.usbdrill = {{ target = "usb"; level = "restore"; sample = "1"; schedule = "monthly";
                                snapshotDirs = [ "{snapshots}" ]; }};
  }};
}}
""")
    farm = data / "nix"
    host = evaluate(module, wrapped_package(farm))
    assert host["assertions"] == []
    install(booted, host, farm)
    c = booted.container
    # a host's notification unit, as a user of services.btrsync.onFailure would have one
    mount = c.run(["systemd-escape", "--path", "--suffix=mount", str(mnt)]).stdout.strip()
    # the secrets are PID 1's to read, not the services': only LoadCredential= hands them over
    for unit in ("btrsync-nixver.service", "btrsync-verify-s3data.service"):
        (c.units / f"{unit}.d").mkdir()
        (c.units / f"{unit}.d" / "secrets.conf").write_text(f"[Service]\nInaccessiblePaths={secrets}\n")
    c.install({"btrsync-test-notify@.service":
               f"[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo %i >> {notified}'\n",
               mount: f"[Mount]\nWhat={data / 'disk'}\nWhere={mnt}\nType=none\nOptions=bind\n"})

    def unmounted() -> None:
        c.systemctl("stop", mount)
        assert c.run(["mountpoint", "-q", str(mnt)], check=False).returncode != 0

    # the timers: loaded, each with its calendar and a next elapse; the job's missed a run three days ago
    c.run(["mkdir", "-p", "/var/lib/systemd/timers"])
    c.run(["touch", "-d", "3 days ago", "/var/lib/systemd/timers/stamp-btrsync-nixver.timer"])
    for timer, calendar in (("btrsync-nixver.timer", "*-*-* 01:30:00"),
                            ("btrsync-verify-usbdata.timer", "Sun *-*-* 03:00:00"),
                            ("btrsync-verify-usbdrill.timer", "*-*-01 00:00:00")):
        c.systemctl("start", timer)
        props = c.show(timer, "LoadState", "ActiveState", "TimersCalendar", "Persistent")
        assert props["LoadState"] == "loaded" and props["ActiveState"] == "active", props
        assert f"OnCalendar={calendar} ;" in props["TimersCalendar"] and props["Persistent"] == "yes", props
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        props = c.show("btrsync-nixver.service", "ActiveState", "InvocationID")
        if props["InvocationID"] and props["ActiveState"] in ("inactive", "failed"):
            break
        time.sleep(0.2)
    journal = c.journal("btrsync-nixver.service")
    assert c.show("btrsync-nixver.service", "Result")["Result"] == "success", journal
    record = json.loads((data / "state" / "jobs" / "nixver.json").read_text())
    assert record["last_run"]["status"] == "ok", journal
    listed = host_cli(farm / "config.toml", "list", "--from", f"file://{usb}", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1, (listed.stderr, journal)
    assert {t: r["last_run"]["status"] for t, r in record["targets"].items()} == {"usb": "ok", "s3": "ok"}, journal
    # after the catch-up every timer waits for its next calendar time, listed with it
    for timer, when in (("btrsync-nixver.timer", r"\S+ \S+ 01:30:00"), ("btrsync-verify-usbdata.timer", r"Sun \S+ 03:00:00"),
                        ("btrsync-verify-usbdrill.timer", r"\S+ \d{4}-\d\d-01 00:00:00")):
        calendar = c.show(timer, "TimersCalendar")["TimersCalendar"]
        assert re.search(f"next_elapse={when} ", calendar), (timer, calendar)
        listed_timer = json.loads(c.systemctl("list-timers", "--all", "--output=json", timer).stdout)
        assert len(listed_timer) == 1 and listed_timer[0]["next"] > time.time() * 1e6, listed_timer

    # the verification units verify the backup, and status and the metrics say so
    for unit in ("btrsync-verify-usbdata.service", "btrsync-verify-usbdrill.service", "btrsync-verify-s3data.service"):
        unmounted()
        result = started(booted, unit)
        assert result["rc"] == "0" and result["Result"] == "success", result["journal"]
    row = _status(farm, "usb")
    assert row["verify_ok"] is True and row["last_verify"], row
    assert row["drill_ok"] is True and row["last_drill"], row
    row = _status(farm, "s3")
    assert row["verify_ok"] is True, row  # the unit's verification, after the run's own
    assert datetime.fromisoformat(row["last_verify"]) > datetime.fromisoformat(record["last_run"]["finished"]), row
    for target in ("usb", "s3"):
        assert _metric(metrics / "btrsync.prom", "btrsync_verify_damaged_backups", target) == 0
    verified_at = _metric(metrics / "btrsync.prom", "btrsync_verify_last_success_timestamp_seconds", "usb")
    assert verified_at > 0
    assert not notified.exists()

    # one damaged segment: the data verification fails the unit with exit 4 and notifies
    segments = sorted(p for p in usb.glob("data/*/*") if p.is_file() and p.suffix != ".idx"
                      and not p.name.startswith("files-"))
    assert segments, sorted(str(p) for p in usb.rglob("*"))
    with segments[0].open("r+b") as f:
        f.seek(segments[0].stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    unmounted()
    result = started(booted, "btrsync-verify-usbdata.service")
    assert result["rc"] != "0" and result["Result"] == "exit-code" and result["ExecMainStatus"] == "4", result
    assert "damaged" in result["journal"], result["journal"]
    time.sleep(0.5)  # OnFailure= queues the notification as the unit fails
    assert c.wait_inactive("btrsync-test-notify@btrsync-verify-usbdata.service.service") == "inactive"
    assert notified.read_text().splitlines() == ["btrsync-verify-usbdata.service"]
    row = _status(farm, "usb")
    assert row["verify_ok"] is False and row["verify_damaged"] == 1, row
    assert _metric(metrics / "btrsync.prom", "btrsync_verify_damaged_backups", "usb") == 1
    # the failed verification is no success (the newest success known may be an older one: the
    # target's state keeps only its last verification, and the job's record has its run's)
    assert _metric(metrics / "btrsync.prom", "btrsync_verify_last_success_timestamp_seconds", "usb") <= verified_at
    # timerConfig.OnCalendar replaces the schedule: the reset and both calendars, nothing else
    c.systemctl("start", "btrsync-nixcal.timer")
    calendar = c.systemctl("show", "btrsync-nixcal.timer", "--property=TimersCalendar").stdout  # one line each
    assert sorted(re.findall(r"OnCalendar=([^;]+) ;", calendar)) == ["Mon..Fri *-*-* 01:30:00", "Sat *-*-* 04:00:00"], \
        calendar
    for timer in ("btrsync-nixver.timer", "btrsync-nixcal.timer", "btrsync-verify-usbdata.timer",
                  "btrsync-verify-usbdrill.timer"):
        c.systemctl("stop", timer)


@pytest.mark.slow
def test_a_failing_nixos_job_starts_the_modules_on_failure_unit_which_runs_the_hooks_once(booted: Booted) -> None:
    """``btrsync-on-failure@`` as the module renders it: started by the job unit's OnFailure=, it
    runs the job's on_failure hooks when the run could not (killed), with the hooks' PATH (sh from
    hooks.path) and their declared writable path, and does not run them again when the run did
    (a failing pre hook).  The host's own ``onFailure`` units are started too."""
    data = booted.data / "nixos-fail"
    data.mkdir()
    hooks = data / "hooks"  # declared in hooks.readWritePaths, not btrsync's state directory
    hooks.mkdir()
    subvolume = create_subvolume(booted.fs / "nixfail")
    snapshots = booted.fs / "nixfail.snapshots"
    snapshots.mkdir()
    flag, running, fail = data / "kill-me", hooks / "running", data / "fail-me"
    marker, notified = hooks / "failures", data / "notified"
    module = data / "host.nix"
    module.write_text(f"""
{{
  services.btrsync = {{
    enable = true;
    stateDir = "{data / 'state'}";
    monitoring.enable = false;
    onFailure = [ "btrsync-test-notify@%n.service" ];
    jobs.nixfail = {{
      subvolumes = [ "{subvolume}" ];
      snapshotDir = "{snapshots}";
      hooks.pre = [ [ "sh" "-c" "if [ -e {flag} ]; then touch {running}; sleep 60; fi; ! [ -e {fail} ]" ] ];
      hooks.onFailure = [ [ "sh" "-c" "echo \\"$BTRSYNC_STATUS $BTRSYNC_ERROR\\" >> {marker}" ] ];
      hooks.readWritePaths = [ "{hooks}" ];
    }};
  }};
}}
""")
    farm = data / "nix"
    host = evaluate(module, wrapped_package(farm))
    assert host["assertions"] == []
    install(booted, host, farm)
    c = booted.container
    c.install({"btrsync-test-notify@.service":
               f"[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo %i >> {notified}'\n"})
    unit, handler = "btrsync-nixfail.service", "btrsync-on-failure@btrsync-nixfail.service.service"
    notify = "btrsync-test-notify@btrsync-nixfail.service.service"

    def settled() -> None:
        time.sleep(0.5)  # OnFailure= queues the handlers as the unit fails
        assert c.wait_inactive(handler) == "inactive", c.journal(handler)
        assert c.wait_inactive(notify) == "inactive", c.journal(notify)

    # btrsync killed while its pre hook runs: btrsync-on-failure@ runs the hooks
    flag.touch()
    c.systemctl("start", "--no-block", unit)
    deadline = time.monotonic() + 30
    while not running.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running.exists(), c.journal(unit)
    c.systemctl("kill", "--kill-who=main", "--signal=KILL", unit)  # btrsync, as the OOM killer would
    assert c.wait_inactive(unit) == "failed"
    settled()
    assert c.show(unit, "Result")["Result"] == "signal"
    assert c.show(handler, "Result")["Result"] == "success", c.journal(handler)
    runs = marker.read_text().splitlines() if marker.exists() else []
    assert len(runs) == 1 and f"systemd unit {unit} failed" in runs[0], (runs, c.journal(handler))
    assert notified.read_text().splitlines() == [unit]

    # a pre hook fails: the run records the failure and runs the hooks; the handler runs, not them
    flag.unlink()
    fail.touch()
    c.reset(unit, handler, notify)
    result = started(booted, unit)
    assert result["rc"] != "0" and result["Result"] == "exit-code", result["journal"]
    settled()
    assert c.show(handler, "Result")["Result"] == "success", c.journal(handler)
    assert c.show(handler, "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"] != "0"
    runs = marker.read_text().splitlines()
    assert len(runs) == 2 and runs[1].startswith("failed "), (runs, result["journal"])
    assert notified.read_text().splitlines() == [unit, unit]
