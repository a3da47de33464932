"""``btrsync systemd generate``: per job a oneshot service and its timer, plus one OnFailure unit.

- ``btrsync-JOB.service``: ``Type=oneshot``, ``btrsync run JOB``.  The key and the targets'
  credential files are handed over with ``LoadCredential=`` (the unit names only their paths;
  the service reads them from ``$CREDENTIALS_DIRECTORY``, which every command honours: a
  credential ``target-NAME`` replaces the ``credentials_file`` of target NAME, ``ssh-NAME`` its
  ``identity_file``).  Hardening: ``ProtectSystem=strict`` with ``ReadWritePaths=`` for what a run
  writes (state, metrics, snapshot directories, directory targets, the drill scratch, the hooks'
  ``read_write_paths``; the hooks' ``path`` is added to their PATH by btrsync, not to the unit's),
  ``PrivateTmp``, ``NoNewPrivileges``, a capability bounding set of what snapshot and send need
  (plus what ``btrfs receive`` needs when the job drills restores), idle CPU and I/O priority.
  ``KillMode=mixed``: ``systemctl stop`` sends SIGTERM to btrsync alone, which stops its own
  children and cleans up (exit 143) before the rest of the group is killed.
  ``RequiresMountsFor=`` the subvolumes, the snapshot directory and directory targets (so a
  ``noauto`` backup disk is mounted for the run; one that is not plugged in fails the unit, and
  its ``OnFailure=`` hooks run).
- ``btrsync-JOB.timer``: ``OnCalendar=`` the job's schedule, ``Persistent=true`` (a run missed
  while the machine was off happens at boot), ``RandomizedDelaySec=``.  A disabled job has no timer.
- ``btrsync-on-failure@.service``: ``OnFailure=`` of every job service: runs the job's
  ``on_failure`` hooks when the unit failed in a way btrsync could not report itself (killed,
  timed out, terminated, locked), and does nothing when btrsync already ran them; writable: the
  state directory and every job's hooks' ``read_write_paths`` (where those hooks write).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from btrsync.config.jobs import Job
from btrsync.config.model import Config
from btrsync.config.timespan import systemd_timespan
from btrsync.errors import ConfigError

FAILURE_UNIT = "btrsync-on-failure@.service"
BASE_CAPS = ("CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE", "CAP_FOWNER")
RECEIVE_CAPS = ("CAP_CHOWN", "CAP_FSETID", "CAP_MKNOD", "CAP_SETFCAP", "CAP_LINUX_IMMUTABLE",
                "CAP_SYS_CHROOT")  # btrfs receive --chroot (btrfs/receive.py)
# a unit's own /tmp and /var/tmp (PrivateTmp=): a drill scratch directory under them is bound in
PRIVATE_TMP = ("/tmp", "/var/tmp")
# LimitCORE=0: a core file of a unit holding the key would hold it in clear
HARDENING = """\
ProtectSystem=strict
PrivateTmp=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service @mount
SystemCallErrorNumber=EPERM
UMask=0077
LimitCORE=0
Nice=10
CPUSchedulingPolicy=batch
IOSchedulingClass=best-effort
"""


def service_name(job: str) -> str:
    return f"btrsync-{job}.service"


def job_of_unit(unit: str) -> str | None:
    m = re.fullmatch(r"btrsync-([A-Za-z0-9_-]+)\.service", unit)
    return m.group(1) if m else None


def exec_arg(arg: str) -> str:
    """One argument of ExecStart=: specifiers and variables escaped, quoted when needed."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r'[\s"\'\\;]', arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quoted(path: Path | str, prefix: str = "") -> str:
    """A path in a space-separated list setting: specifiers escaped, quoted when it has blanks."""
    text = prefix + str(path).replace("%", "%%")
    return f'"{text}"' if re.search(r"\s", text) else text


def _path_arg(path: Path | str) -> str:
    return _quoted(path, "-")


def default_btrsync() -> str:
    beside = Path(sys.executable).parent / "btrsync"
    if beside.exists():
        return str(beside)
    found = shutil.which("btrsync")
    return found or "/usr/bin/btrsync"


def _file_target_dir(url: str) -> str | None:
    """The directory of a ``file://`` target, percent-decoded as btrsync opens it (``repo%201``)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        return None
    return unquote(parts.path).rstrip("/") or "/"


def _under_private_tmp(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in PRIVATE_TMP)


def check_calendar(job: Job) -> None:
    """Ask ``systemd-analyze calendar`` about the job's schedule, when it is installed."""
    check_calendars([job])


def check_calendars(jobs: Sequence[Job], where: str = "") -> str | None:
    """Ask ``systemd-analyze calendar`` about each job's schedule (``config check`` and ``systemd
    generate``): ``ConfigError`` naming every one it refuses; without the tool, the sentence
    saying that they could not be checked (None when they were)."""
    if not jobs:
        return None
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return (f"{where + ': ' if where else ''}schedule of {', '.join(f'[jobs.{j.name}]' for j in jobs)} not checked: systemd-analyze is not "
                "installed here (the timer refuses a bad one when the units are loaded)")
    problems = []
    for job in jobs:
        proc = subprocess.run([tool, "calendar", job.schedule], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            problems.append(f"{where + ' ' if where else ''}[jobs.{job.name}] schedule {job.schedule!r} is not a systemd calendar "
                            f"expression: {proc.stderr.strip() or proc.stdout.strip()} (see systemd.time(7))")
    if problems:
        raise ConfigError("\n".join(problems))
    return None


def _make_dirs(config: Config, scratch: Sequence[str] = ()) -> list[str]:
    """ExecStartPre= lines making btrsync's own directories.  '+': outside the sandbox, where
    ProtectSystem=strict would refuse it; ReadWritePaths= skips a directory missing when the service
    starts, so btrsync could not make them itself."""
    mkdir = shutil.which("mkdir") or "/bin/mkdir"
    dirs = [("0700", str(config.state_dir))]
    if config.jobs.metrics_dir is not None:
        dirs.append(("0755", str(config.jobs.metrics_dir)))
    dirs += [("0700", d) for d in scratch]
    unique: dict[str, str] = {}
    for mode, d in dirs:
        unique.setdefault(d, mode)
    return [f"ExecStartPre=+{exec_arg(mkdir)} -p -m {mode} {exec_arg(d)}" for d, mode in unique.items()]


def credentials(config: Config, job: Job) -> list[tuple[str, str]]:
    """(credential name, source path) for the key and the job's targets' credential files."""
    creds = []
    if config.key_file is not None:
        creds.append(("key", str(config.key_file)))
    for jt in job.targets:
        _url, settings = config.target(jt.name)
        if settings.get("credentials_file"):
            creds.append((f"target-{jt.name}", str(settings["credentials_file"])))
        if settings.get("identity_file"):
            creds.append((f"ssh-{jt.name}", str(settings["identity_file"])))
    return creds


def service_unit(config: Config, job: Job, *, config_path: Path, btrsync: str) -> str:
    creds = credentials(config, job)
    remote = False
    scratch: list[str] = []
    writable = [str(config.state_dir), str(job.snapshot_dir)]
    mounts = [str(job.snapshot_dir), *map(str, job.subvolumes)]
    if config.jobs.metrics_dir is not None:
        writable.append(str(config.jobs.metrics_dir))
    drills = any(t.verify.drill_every and t.verify.drill_level == "restore" or t.verify.level == "restore"
                 for t in job.targets)
    for jt in job.targets:
        url, _settings = config.target(jt.name)
        local = _file_target_dir(url)
        if local is None:
            remote = True
        else:
            # RequiresMountsFor= mounts a 'noauto' backup disk for the run; the price: an unplugged
            # one fails the whole unit (OnFailure runs). WantsMountsFor= (systemd 256) would not.
            writable.append(local)
            mounts.append(local)
        if drills:
            writable.append(str(jt.verify.scratch_dir))
            scratch.append(str(jt.verify.scratch_dir))
    # where the job's hooks write (a database dump): declared, or read-only like the rest
    writable += job.hooks.read_write_paths
    argv = [btrsync, "--config", str(config_path)]
    if any(name == "key" for name, _ in creds):
        argv += ["--key-file", "%d/key"]
    # initialize = true: a repository is created where there is none yet, in the unit's sandbox
    # (never over another one, nor where this host knew one: 'init --if-empty')
    inits = [[*argv, "init", "--to", jt.name, "--if-empty"] for jt in job.targets
             if config.targets.get(jt.name, {}).get("initialize") is True]
    argv += ["run", job.name]
    caps = BASE_CAPS + (RECEIVE_CAPS if drills else ())
    lines = [
        "# generated by 'btrsync systemd generate'; edit the configuration and generate again",
        "[Unit]",
        f"Description=btrsync backup job {job.name}",
        "OnFailure=btrsync-on-failure@%n.service",
        "RequiresMountsFor=" + " ".join(_quoted(m) for m in dict.fromkeys(mounts)),
    ]
    if remote:
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        "",
        "[Service]",
        "Type=oneshot",
        *_make_dirs(config, list(dict.fromkeys(scratch))),
        *("ExecStartPre=" + " ".join(exec_arg(a) if a != "%d/key" else a for a in init) for init in inits),
        "ExecStart=" + " ".join(exec_arg(a) if a != "%d/key" else a for a in argv),
    ]
    lines += [f"LoadCredential={name}:{path.replace('%', '%%')}" for name, path in creds]
    lines += [
        "KillMode=mixed",
        "TimeoutStopSec=5min",
        "ReadWritePaths=" + " ".join(_path_arg(p) for p in dict.fromkeys(writable)),
    ]
    # the drill lock and the leftover cleanup are shared between units (jobs, verifications, a
    # manual verify): a scratch directory under the unit's private /tmp or /var/tmp is the host's
    shared = [d for d in dict.fromkeys(scratch) if _under_private_tmp(d)]
    if shared:
        lines.append("BindPaths=" + " ".join(_path_arg(d) for d in shared))
    lines += [
        "CapabilityBoundingSet=" + " ".join(caps),
        HARDENING.rstrip("\n"),
    ]
    return "\n".join(lines) + "\n"


def timer_unit(job: Job) -> str:
    return "\n".join([
        "# generated by 'btrsync systemd generate'; edit the configuration and generate again",
        "[Unit]",
        f"Description=btrsync backup job {job.name} ({job.schedule})",
        "",
        "[Timer]",
        f"OnCalendar={job.schedule}",
        "Persistent=true",
        f"RandomizedDelaySec={systemd_timespan(job.randomized_delay)}",
        f"Unit={service_name(job.name)}",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]) + "\n"


def failure_unit(config: Config, *, config_path: Path, btrsync: str) -> str:
    argv = [btrsync, "--config", str(config_path), "systemd", "on-failure"]
    return "\n".join([
        "# generated by 'btrsync systemd generate'",
        "[Unit]",
        "Description=btrsync: on_failure hooks of the failed unit %i",
        "Wants=network-online.target",  # hooks that notify over the network
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        *_make_dirs(config)[:1],
        "ExecStart=" + " ".join(exec_arg(a) for a in argv) + " %i",
        # it runs the on_failure hooks of a killed run: they write where the job's hooks may
        "ReadWritePaths=" + " ".join(_path_arg(p) for p in dict.fromkeys(
            [str(config.state_dir), *(str(p) for j in config.jobs.jobs.values() for p in j.hooks.read_write_paths)])),
        HARDENING.rstrip("\n"),
    ]) + "\n"


def generate(config: Config, jobs: list[Job], *, config_path: Path, btrsync: str | None = None,
             check: bool = True) -> dict[str, str]:
    """File name -> content of every unit for ``jobs``."""
    btrsync = btrsync or default_btrsync()
    config_path = config_path.absolute()
    units: dict[str, str] = {FAILURE_UNIT: failure_unit(config, config_path=config_path, btrsync=btrsync)}
    if check:
        check_calendars(jobs)
    for job in jobs:
        units[service_name(job.name)] = service_unit(config, job, config_path=config_path, btrsync=btrsync)
        if job.enabled:
            units[f"btrsync-{job.name}.timer"] = timer_unit(job)
    return units


def write_units(units: dict[str, str], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units.items():
        path = directory / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
        written.append(path)
    return written
