"""``status`` tells each target's own story after real runs: a target skipped as not due is not
failing because another target's drill could not run, and a drill that could not run is a
failure of its target, never damage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import World
from tests.integration.test_run import at, configure, outcome, run
from tests.support import tree

pytestmark = pytest.mark.btrfs


@pytest.mark.slow
def test_each_target_has_its_own_status_and_a_drill_that_could_not_run_is_no_damage(
        world: World, tmp_path: Path) -> None:
    """usb's drills cannot run (their scratch directory is a file); usb2 is pushed daily and
    skipped as not due on the second run.  status showed usb2 FAILING and --check named it, and
    usb "VERIFIED ... DAMAGE" (verify_ok false) though its data verification had passed."""
    tree.populate(world.subvol, 3)
    second = tmp_path / "second"
    second.mkdir()
    assert world.cli("init", "--to", f"file://{second}").code == 0
    scratch = tmp_path / "not-a-directory"
    scratch.write_text("")
    configure(world, f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
timezone = "UTC"
verify = {{ level = "data", drill_every = "1h", scratch_dir = "{scratch}" }}
targets.usb = {{ max_chain = 0 }}
targets.usb2 = {{ every = "daily", verify = {{ level = "data" }} }}
""", targets={"usb2": {"url": f"file://{second}"}})
    first = run(world, "data", now=0)
    assert first.code == 3, first.err
    again = run(world, "data", now=1.5)  # the drill is due again, usb2 is not
    targets = {t["name"]: t for t in outcome(again)["data"]["targets"]}
    assert targets["usb"]["status"] == "failed" and targets["usb2"]["status"] == "skipped", targets
    assert targets["usb"]["verify"]["ok"] and not targets["usb"]["drill"]["ok"], targets["usb"]

    result = world.cli("status", "--json", "--now", at(1.5))
    assert result.code == 0, result.err
    rows = {r["target"]: r for r in result.json()}
    assert rows["usb"]["verdict"] == "failing", rows["usb"]
    assert rows["usb"]["verify_ok"] is True, rows["usb"]  # the data verification passed
    assert rows["usb"]["drill_ok"] is False and rows["usb"]["drill_damaged"] == 0, rows["usb"]
    assert rows["usb2"]["verdict"] == "ok", rows["usb2"]
    assert "restore drill did not complete" in (rows["usb"]["note"] or ""), rows["usb"]

    table = world.cli("status", "--now", at(1.5))
    usb_line = next(line for line in table.out.splitlines() if line.split()[1] == "usb")
    usb2_line = next(line for line in table.out.splitlines() if line.split()[1] == "usb2")
    assert "DAMAGE" not in usb_line and "FAILED" in usb_line, table.out
    assert "FAILING" not in usb2_line, table.out

    check = world.cli("status", "--check", "--now", at(1.5))
    assert check.code == 1, check.out + check.err
    assert "data/usb failing" in check.out and "usb2" not in check.out, check.out


def test_a_truncated_run_record_is_unknown_and_the_next_run_keeps_it_aside(world: World) -> None:
    """A truncated jobs/data.json made status say NEVER with exit 0, and the next run overwrote
    the history and the failure count without a word."""
    tree.populate(world.subvol, 3)
    configure(world, f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
targets.usb = {{}}
""")
    assert run(world, "data", now=0).code == 0
    record = world.state / "jobs" / "data.json"
    damaged = record.read_bytes()[:100]
    record.write_bytes(damaged)
    result = world.cli("status", "--json", "--now", at(0.5))
    assert result.code == 0 and result.json()[0]["verdict"] == "unknown", result.out
    check = world.cli("status", "--check", "--now", at(0.5))
    assert check.code == 3 and check.out.startswith("BTRSYNC UNKNOWN - data/usb unknown: the run record"), check.out
    again = run(world, "data", now=1)
    assert again.code == 0, again.err
    [aside] = (world.state / "jobs").glob("data.json.damaged-*")
    assert aside.read_bytes() == damaged
    assert str(aside) in again.err and "a new record begins" in again.err, again.err
    assert world.cli("status", "--check", "--now", at(1)).code == 0
