"""``config check`` refuses what would be silently wrong at run time: a schedule systemd does not
understand, a window that never opens, a misspelt setting of a target."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from btrsync.cli.main import main
from btrsync.targets import settings as target_settings
from tests.jobs.test_systemd import CONFIG, analyze


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    code = main(["--config", str(path), "config", "check"])
    return code, capsys.readouterr().err


def test_a_schedule_systemd_does_not_understand_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    analyze()
    text = CONFIG.format(tmp=tmp_path)
    code, err = check(tmp_path, text.replace("Mon..Fri *-*-* 02:30:00", "every tuesday-ish"), capsys)
    assert code == 2, err
    assert f"{tmp_path}/config.toml [jobs.home] schedule 'every tuesday-ish' is not a systemd calendar" in err
    code, err = check(tmp_path, text, capsys)
    assert code == 0 and "not checked" not in err, err


def test_without_systemd_analyze_the_schedule_is_said_to_be_unchecked(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    assert shutil.which("systemd-analyze") is None
    text = CONFIG.format(tmp=tmp_path).replace("Mon..Fri *-*-* 02:30:00", "every tuesday-ish")
    code, err = check(tmp_path, text, capsys)
    assert code == 0, err
    assert "schedule of [jobs.home], [jobs.logs] not checked: systemd-analyze is not installed" in err


@pytest.mark.parametrize("window", ['["22:00-22:00"]', '["Mon-Fri 22:00-06:00", "Sat 08:00-08:00"]'])
def test_a_window_that_never_opens_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], window: str) -> None:
    text = CONFIG.format(tmp=tmp_path).replace('randomized_delay = "15m"', f'randomized_delay = "15m"\nwindow = {window}')
    code, err = check(tmp_path, text, capsys)
    assert code == 2 and "[jobs.home] window" in err and "never opens" in err, err
    # and as a target's own window
    text = CONFIG.format(tmp=tmp_path).replace('targets = ["usb", "b2", "nas"]',
                                               f'targets.usb = {{ window = {window} }}')
    code, err = check(tmp_path, text, capsys)
    assert code == 2 and "targets.usb.window" in err and "never opens" in err, err


@pytest.mark.parametrize(("target", "typo", "said"), [
    ("usb", "qouta", "unknown setting (did you mean 'quota'?)"),
    ("b2", "credentails_file", "unknown setting (did you mean 'credentials_file'?)"),
    ("nas", "identiy_file", "unknown setting (did you mean 'identity_file'?)"),
    ("usb", "credentials_file", "unknown setting of file targets (it is one of s3 targets)"),
    ("usb", "endpoint", "unknown setting of file targets (it is one of s3 targets)"),
    ("b2", "spool_dir", "unknown setting of s3 targets (it is one of ssh targets)"),
])
def test_an_unknown_target_setting_is_refused_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          target: str, typo: str, said: str) -> None:
    text = CONFIG.format(tmp=tmp_path).replace(f"[targets.{target}]\n", f'[targets.{target}]\n{typo} = "1T"\n')
    code, err = check(tmp_path, text, capsys)
    assert code == 2, err
    assert f"[targets.{target}] {typo}: {said}" in err, err


def test_every_documented_kind_of_setting_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = CONFIG.format(tmp=tmp_path)
    text = text.replace("[targets.usb]\n", '[targets.usb]\nquota = "1T"\nchain = "linear"\nfull_threshold = 0.4\n')
    text = text.replace("[targets.b2]\n", '[targets.b2]\nendpoint = "https://s3.us-west-004.backblazeb2.com"\n'
                                          'part-size = "64M"\nmax_attempts = 3\n')
    text = text.replace("[targets.nas]\n", '[targets.nas]\nknown_hosts_file = "/etc/k"\nspool_dir = "/var/cache/s"\n'
                                           'rsync_options = ["--whole-file"]\nio_timeout = 60\n')
    code, err = check(tmp_path, text, capsys)
    assert code == 0, err


def test_the_lists_are_what_the_targets_read() -> None:
    from btrsync.targets.s3.settings import S3Settings
    from btrsync.targets.ssh.target import SshTarget
    from btrsync.targets.url import parse_url

    assert tuple(f.name for f in dataclasses.fields(S3Settings)) == target_settings.S3
    # every ssh setting reader refuses a name that is not listed: building a target reads them all
    everything = {"user": "u", "port": 22, "identity_file": "/k", "known_hosts_file": "/h", "ssh_config": "/c",
                  "ssh_options": ["-4"], "strict_host_key_checking": "yes", "connect_timeout": 5,
                  "server_alive_interval": 5, "control_persist": 5, "spool_dir": "/s", "rsync_options": [],
                  "io_timeout": 5, "remote_rsync": "rsync", "max_attempts": 2}
    assert set(everything) == set(target_settings.SSH)
    SshTarget.from_url(parse_url("ssh://nas/srv/b"), everything)
    from btrsync.targets.ssh.settings import setting_str

    with pytest.raises(AssertionError, match="not listed"):
        setting_str({}, "hostname")


def test_reading_the_configuration_does_not_import_boto3() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import sys, btrsync.config.model as m; "
                           "m.parse_config({'targets': {'b2': {'url': 's3://b/p', 'endpoint': 'x'}}}); "
                           "print('boto3' in sys.modules or 'botocore' in sys.modules)"], capture_output=True, text=True, check=True,
                          env={**os.environ})
    assert proc.stdout.strip() == "False"
