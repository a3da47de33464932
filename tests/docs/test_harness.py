"""The doc test's own machinery can fail: markers, path mapping and the bash session (no root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.docblocks import PathMap, parse_doc
from tests.support.docrun import DocFailure, Session

DOC = """# Title

```sh
echo unmarked
```

<!-- not-run: needs a real B2 bucket -->
```sh
b2 key create
```

<!-- doc-test: setup=backups expect-exit=2 -->

```bash
false
```

```toml
a = 1
```

- a list item

  <!-- doc-test: file=/etc/btrsync/config.toml -->
  ```toml
  key = "x"
  ```

```console
$ echo one \\
    two
one two
$ true
```
"""


def test_blocks_and_markers() -> None:
    parsed = parse_doc("d.md", DOC)
    assert parsed.problems == []
    sh, excused, failing, toml, cfg, console = parsed.blocks
    assert (sh.runs, sh.line, sh.text) == (True, 4, "echo unmarked")
    assert (excused.runs, excused.not_run) == (False, "needs a real B2 bucket")
    assert (failing.setups, failing.expect_exit, failing.line) == (["backups"], 2, 15)
    assert not toml.runs and not toml.is_shell
    assert cfg.options == {"file": "/etc/btrsync/config.toml"} and cfg.text == 'key = "x"'
    assert console.script().split("\n") == ["echo one \\", "    two", "", "true"]


@pytest.mark.parametrize("text, problem", [
    ("<!-- not-run: -->\n```sh\nx\n```\n", "needs a reason"),
    ("<!-- doc-test: setup=a sometimes=1 -->\n```sh\nx\n```\n", "unknown doc-test option 'sometimes'"),
    ("<!-- doc-test: setup -->\n```sh\nx\n```\n", "not KEY=VALUE"),
    ("<!-- not-run: needs a printer -->\nsome text\n```sh\nx\n```\n", "not directly above a code block"),
    ("<!-- not-run: needs a printer -->\n<!-- doc-test: setup=data -->\n```sh\nx\n```\n", "not both"),
    ("<!-- not run: because -->\n```sh\nx\n```\n", "malformed marker"),
    ("<!-- doc-test: file=/x -->\n```sh\nx\n```\n", "file= is for configuration blocks"),
    ("```sh\nx\n", "never closed"),
])
def test_marker_problems(text: str, problem: str) -> None:
    problems = parse_doc("d.md", text).problems
    assert any(problem in p for p in problems), problems


def test_path_mapping() -> None:
    m = PathMap(Path("/W"), devices={"/dev/sdX": "/dev/loop7", "/dev/sdX2": "/dev/loop7p2"})
    line = ("btrsync push /data --snapshot-dir /data/.snapshots --to file:///mnt/usb/backups "
            "--key-file=/root/backup.key; mv /data.rollback-x /data; mkfs.btrfs /dev/sdX2; sfdisk /dev/sdX")
    assert m.map_line(line) == (
        "btrsync push /W/data --snapshot-dir /W/data/.snapshots --to file:///W/mnt/usb/backups "
        "--key-file=/W/root/backup.key; mv /W/data.rollback-x /W/data; mkfs.btrfs /dev/loop7p2; sfdisk /dev/loop7")
    # not a placeholder: other words, URLs' hosts, variables
    assert m.map_line("ls $DIR/data s3://bucket/data ssh://host/srv/x /database") == \
        "ls $DIR/data s3://bucket/data ssh://host/srv/x /database"
    # a heredoc body is file content, left as written
    text = "cat > /mnt/new/etc/fstab <<EOF\nUUID=x /home btrfs subvol=home 0 0\nEOF\nls /home"
    assert m.map_shell(text).split("\n") == [
        "cat > /W/mnt/new/etc/fstab <<EOF", "UUID=x /home btrfs subvol=home 0 0", "EOF", "ls /W/home"]


def test_unmapped_paths_are_found() -> None:
    m = PathMap(Path("/W"), devices={"/dev/sdX": "/dev/loop7"})
    text = ("cp x /etc/fstab   # not /etc/passwd: a comment\nls /dev/null /proc/mounts /dev/sdX /data\n"
            "cat <<'E'\n/etc/shadow\nE\nrm -rf /var/lib/dpkg")
    assert m.unmapped(text) == ["/etc/fstab", "/var/lib/dpkg"]


def _session(tmp_path: Path, doc: str) -> Session:
    blocks = [b for b in parse_doc("d.md", doc).blocks if b.runs]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    return Session(blocks, PathMap(tmp_path / "W"), tmp_path, env, cwd=tmp_path, timeout=20)


def test_session_carries_state_and_reports_the_failing_line(tmp_path: Path) -> None:
    doc = "```sh\nGREETING=hello\n```\n\ntext\n\n```sh\necho \"$GREETING\"\ntrue\nfalse\necho never\n```\n"
    with pytest.raises(DocFailure) as failure:
        _session(tmp_path, doc).run()
    message = str(failure.value)
    assert message.startswith("d.md:10: `false` exited 1"), message
    assert "hello" in message and "never" not in message


def test_session_catches_unbound_variables_and_failing_lists(tmp_path: Path) -> None:
    with pytest.raises(DocFailure) as failure:
        _session(tmp_path, "```sh\ntrue\necho $NOPE\n```\n").run()
    assert "d.md:3: NOPE: unbound variable" in str(failure.value)
    with pytest.raises(DocFailure) as failure:
        _session(tmp_path, "```sh\ntrue\nfalse && true\n```\n").run()
    assert str(failure.value).startswith("d.md:2: the block ended with exit status 1"), str(failure.value)
    with pytest.raises(DocFailure) as failure:
        _session(tmp_path, "```sh\nfalse | true\necho after\n```\n").run()
    assert str(failure.value).startswith("d.md:2: `true` exited 1"), str(failure.value)  # bash names the last


def test_session_expected_exit(tmp_path: Path) -> None:
    ok = "<!-- doc-test: expect-exit=3 -->\n```sh\nexit 3\n```\n\n```sh\necho next\n```\n"
    assert "next" in _session(tmp_path, ok).run()
    wrong = "<!-- doc-test: expect-exit=3 -->\n```sh\ntrue\n```\n"
    with pytest.raises(DocFailure, match="expected exit 3"):
        _session(tmp_path, wrong).run()


def test_session_timeout(tmp_path: Path) -> None:
    session = _session(tmp_path, "```sh\nsleep 30\n```\n")
    session.timeout = 1
    with pytest.raises(DocFailure, match="did not finish within 1 s"):
        session.run()
