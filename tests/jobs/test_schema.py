"""[jobs.NAME]: validation names the file, the job and the key; the schema is one source of truth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from btrsync.cli.main import main
from btrsync.config.schema import json_schema, reference_markdown
from btrsync.errors import ConfigError
from tests.jobs.conftest import config_from

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scheduling.md"

GOOD = """
metrics_dir = "/srv/metrics"
max_parallel_jobs = 2

[targets.usb]
url = "file:///mnt/usb"
[targets.b2]
url = "s3://bucket/host"
credentials_file = "/etc/btrsync/b2.credentials"

[retention.profiles.standard]
snapshots = { keep_hourly = 24 }
backups = { keep_daily = 14 }
targets.b2 = { keep_monthly = 12 }

[jobs.home]
subvolumes = ["/home"]
snapshot_dir = "/.snapshots"
schedule = "hourly"
randomized_delay = "10m"
timezone = "Europe/Berlin"
window = ["Mon-Fri 22:00-06:00", "Sat-Sun 00:00-24:00"]
retention = "standard"
targets.usb = {}
targets.b2 = { every = "daily", bwlimit = "5M" }
verify = { level = "data", sample = "10%", drill_every = "30d" }
hooks = { pre = [["/usr/local/bin/dump-db"]], timeout = "2m", pre_failure = "continue" }

[jobs.logs]
subvolumes = ["/var/log"]
snapshot_dir = "/.snapshots"
targets = ["usb"]
snapshots = { keep_last = 5 }
enabled = false
"""


def test_a_full_job_configuration_resolves_profiles_windows_and_schedules() -> None:
    config = config_from(GOOD)
    assert config.jobs.max_parallel_jobs == 2 and str(config.jobs.metrics_dir) == "/srv/metrics"
    home = config.jobs.jobs["home"]
    assert home.snapshot_policy is not None and home.snapshot_policy.keep_hourly == 24
    usb, b2 = home.target("usb"), home.target("b2")
    assert usb.retention.keep_daily == 14 and usb.retention_text == "profile standard"
    assert b2.retention.keep_monthly == 12  # the profile's override for this target
    assert b2.every is not None and b2.every.period == "daily" and b2.bwlimit.default == 5 << 20
    assert home.window.tz.key == "Europe/Berlin" and len(home.window.windows) == 2
    assert b2.verify.level == "data" and b2.verify.sample == "10%"
    assert home.hooks.pre_failure == "continue" and home.lock_wait.total_seconds() == 0
    logs = config.jobs.jobs["logs"]
    assert not logs.enabled and [t.name for t in logs.targets] == ["usb"]
    assert logs.snapshot_policy.keep_last == 5 and usb.retention is not None
    assert [j.name for j in config.jobs.select([], all_jobs=True)] == ["home"]


@pytest.mark.parametrize(("snippet", "message"), [
    ('subvolumes = ["home"]', r"\[jobs\.bad\] subvolumes\.0: must be an absolute path"),
    ('bogus = 1', r"\[jobs\.bad\] bogus: unknown setting"),
    ('window = ["Mon-Fri 22:00"]', r"\[jobs\.bad\] window: bad window 'Mon-Fri 22:00'"),
    ('targets.nas = {}', r"\[jobs\.bad\] targets\.nas: no \[targets\.nas\] in the configuration"),
    ('targets.usb = { every = "sometimes" }', r"\[jobs\.bad\] targets\.usb\.every: 'sometimes' is neither"),
    ('targets.usb = { retention = "nope" }', r"\[jobs\.bad\] targets\.usb retention: no profile named 'nope'"),
    ('targets.usb = { retention = { keep_dayly = 3 } }', r"\[jobs\.bad\] targets\.usb retention: .*keep_dayly"),
    ('hooks = { pre = [[]] }', r"\[jobs\.bad\] hooks\.pre\.0: a hook is a non-empty argv list"),
    ('hooks = { timeout = "soon" }', r"\[jobs\.bad\] hooks\.timeout: not a duration: 'soon'"),
    ('verify = { level = "deep" }', r"\[jobs\.bad\] verify\.level: Input should be"),
    ('verify = { sample = "lots" }', r"\[jobs\.bad\] verify\.sample: "),
    ('timezone = "Mars/Olympus"', r"\[jobs\.bad\] timezone: unknown timezone 'Mars/Olympus'"),
    ('window_end = "later"', r"\[jobs\.bad\] window_end: Input should be 'continue' or 'stop'"),
    ('snapshot_dir = "/s\\nExecStartPre=/bin/evil"', r"\[jobs\.bad\] snapshot_dir: must not contain control"),
    ('lock_wait = "99999999999d"', r"\[jobs\.bad\] lock_wait: a duration of at most 10 years"),
])
def test_every_error_names_the_file_the_job_and_the_key(snippet: str, message: str) -> None:
    base = {"subvolumes": 'subvolumes = ["/data"]', "snapshot_dir": 'snapshot_dir = "/s"'}
    lines = [v for k, v in base.items() if not snippet.startswith(k)] + [snippet]
    text = '[targets.usb]\nurl = "file:///u"\n[jobs.bad]\n' + "\n".join(lines)
    with pytest.raises(ConfigError) as info:
        config_from(text, Path("/etc/btrsync/config.toml"))
    assert str(info.value).startswith("/etc/btrsync/config.toml [jobs.bad] ")
    assert re.search(message, str(info.value)), str(info.value)


def test_all_problems_are_reported_at_once_and_a_missing_key_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        config_from('[jobs.a]\nsubvolumes = ["/x"]\n[jobs.b]\nsnapshot_dir = "/s"\nsubvolumes = []\n')
    lines = str(info.value).splitlines()
    assert "configuration [jobs.a] snapshot_dir: required setting missing" in lines
    assert any(line.startswith("configuration [jobs.b] subvolumes:") for line in lines)
    with pytest.raises(ConfigError, match=r"\(top level\) max_parallel_jobs"):
        config_from("max_parallel_jobs = 0\n")
    with pytest.raises(ConfigError, match=r"\[jobs.a b\]: a job name is letters"):
        config_from('[jobs."a b"]\nsubvolumes = ["/x"]\nsnapshot_dir = "/s"\n')
    with pytest.raises(ConfigError, match=r"\[jobs.--all\]: a job name is letters.*not starting with '-'"):
        config_from('[jobs."--all"]\nsubvolumes = ["/x"]\nsnapshot_dir = "/s"\n')


def test_two_subvolumes_meeting_under_one_snapshot_name_are_refused() -> None:
    """Snapshots are named after the subvolume's last path component: /home and /srv/home in one
    snapshot_dir (or one subvolume in two jobs) would be one history, pushed, restored and pruned
    as one: one's backups sent as increments on the other's and pruned as its."""
    base = '[targets.usb]\nurl = "file:///u"\n'
    with pytest.raises(ConfigError) as info:
        config_from(base + '[jobs.a]\nsubvolumes = ["/home", "/srv/home/"]\nsnapshot_dir = "/s"\ntargets = ["usb"]\n')
    assert "/home in [jobs.a] and /srv/home in [jobs.a] would both be snapshotted as home.<time> in /s" in str(info.value)
    with pytest.raises(ConfigError, match=r"/data in \[jobs.a\] and /data in \[jobs.b\]"):
        config_from(base + '[jobs.a]\nsubvolumes = ["/data"]\nsnapshot_dir = "/s"\ntargets = ["usb"]\n'
                    '[jobs.b]\nsubvolumes = ["/data"]\nsnapshot_dir = "/s/"\ntargets = ["usb"]\n')
    config = config_from(base + '[jobs.a]\nsubvolumes = ["/home"]\nsnapshot_dir = "/s"\ntargets = ["usb"]\n'
                         '[jobs.b]\nsubvolumes = ["/srv/home"]\nsnapshot_dir = "/t"\ntargets = ["usb"]\n')
    assert set(config.jobs.jobs) == {"a", "b"}


def test_config_check_exits_2_naming_the_problem_and_prints_secrets_only_as_paths(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text(GOOD.replace('[targets.usb]\nurl = "file:///mnt/usb"',
                                 '[targets.usb]\nurl = "file:///mnt/usb"\nsecret_access_key = "hunter2"'))
    # a setting no file target reads is refused, named, its value never shown
    assert main(["--config", str(path), "config", "check", "--json"]) == 2
    err = capsys.readouterr().err
    assert "[targets.usb] secret_access_key: unknown setting" in err and "hunter2" not in err
    path.write_text(GOOD)
    assert main(["--config", str(path), "config", "check", "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert "hunter2" not in out and doc["targets"]["b2"]["credentials_file"] == "/etc/btrsync/b2.credentials"
    assert doc["jobs"]["home"]["targets"]["b2"]["retention"].startswith("keep_monthly=12")
    assert doc["jobs"]["logs"]["enabled"] is False
    assert main(["--config", str(path), "config", "check"]) == 0
    human = capsys.readouterr()
    assert "[jobs.home.targets.b2]" in human.out and "is valid: 2 job(s)" in human.err
    path.write_text(GOOD.replace('schedule = "hourly"', 'schedule = "hourly"\nwindows = []'))
    assert main(["--config", str(path), "config", "check"]) == 2
    assert f"{path} [jobs.home] windows: unknown setting" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_the_json_schema_describes_every_job_key() -> None:
    schema = json_schema()
    job = schema["$defs"]["JobModel"]
    assert set(job["properties"]) >= {"subvolumes", "snapshot_dir", "window", "targets", "hooks", "verify"}
    assert job["required"] == ["subvolumes", "snapshot_dir"]
    assert schema["properties"]["max_parallel_jobs"]["default"] == 1


def test_the_configuration_reference_in_the_docs_is_generated_from_the_schema() -> None:
    text = DOCS.read_text()
    begin, end = "<!-- BEGIN GENERATED REFERENCE -->\n", "<!-- END GENERATED REFERENCE -->"
    assert begin in text and end in text, "docs/scheduling.md lost its reference markers"
    current = text.split(begin, 1)[1].split(end, 1)[0]
    assert current.strip() == reference_markdown().strip(), (
        "docs/scheduling.md is out of date: regenerate the block with "
        "python -c 'from btrsync.config.schema import reference_markdown; print(reference_markdown())'")
