"""btrsync verify on real backups: each kind of damage found at the right level, with the exact exit
code and a message naming backup, chunk, object and what failed; dependents reported as affected;
slices, samples, the ledger and restore drills."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from btrsync.catalog import layout
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import World
from tests.support import tree
from tests.support.deaddrill import plant_dead_drill
from tests.support.repack import repack

pytestmark = pytest.mark.btrfs


def _chain(world: World, n: int = 3) -> list[str]:
    tree.populate(world.subvol, 5)
    with open(world.subvol / "big.bin", "wb") as f:
        f.write(os.urandom(600_000))  # a few segments of 256k
    world.snapshot()
    for g in range(1, n):
        tree.mutate(world.subvol, 5, g)
        world.snapshot()
    assert world.push().code == 0
    return [b["id"] for b in world.listing()]


def _verify(world: World, *args: str) -> tuple[int, dict, str]:
    run = world.cli("verify", "--from", world.url, "--json", *args)
    return run.code, json.loads(run.out) if run.out.strip() else {}, run.err


def _by_id(doc: dict) -> dict[str, dict]:
    return {b["backup_id"]: b for b in doc["backups"]}


def _segments(world: World, bid: str) -> list[Path]:
    return sorted(p for p in (world.target_dir / layout.data_prefix(bid)).iterdir()
                  if p.suffix != ".idx" and not p.name.startswith("files-"))


def _repo(world: World) -> Repository:
    return Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))


@pytest.mark.slow
def test_intact_backups_pass_every_level_without_root_needs_but_restore(world: World) -> None:
    ids = _chain(world)
    for level in ("catalog", "data", "stream"):
        code, doc, err = _verify(world, "--level", level)
        assert code == 0, err
        assert doc["summary"]["ok"] and {b["level"] for b in doc["backups"]} == {level}
    code, doc, _ = _verify(world, "--level", "catalog")
    assert doc["summary"]["bytes_read"] == 0  # the catalog level downloads no data
    code, doc, _ = _verify(world, "--level", "data")
    assert doc["summary"]["bytes_read"] == sum(b["stored_bytes"] for b in world.listing())
    assert [b["backup_id"] for b in doc["backups"]] == ids


def test_a_flipped_byte_is_found_and_its_dependents_are_affected(world: World) -> None:
    ids = _chain(world)
    seg = _segments(world, ids[0])[1]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x20
    seg.write_bytes(bytes(data))
    code, doc, err = _verify(world, "--level", "catalog")
    assert code == 0, err  # sizes are right: the catalog level cannot see it
    code, doc, err = _verify(world)
    assert code == 4
    reports = _by_id(doc)
    first = reports[ids[0]]
    assert first["result"] == "damaged" and first["problems"][0]["what"] == "hash"
    assert first["problems"][0]["where"] == layout.segment_key(ids[0], 1)
    assert "chunk " in first["problems"][0]["message"] and ids[0] in first["problems"][0]["message"]
    assert [reports[i]["result"] for i in ids[1:]] == ["affected", "affected"]
    run = world.cli("verify", "--from", world.url)
    assert run.code == 4 and ids[0] in run.err and "DAMAGED" in run.out and "AFFECTED" in run.out


def test_truncated_and_missing_segments_are_found_from_the_listing(world: World) -> None:
    ids = _chain(world)
    segs = _segments(world, ids[0])
    segs[0].write_bytes(segs[0].read_bytes()[:-10])
    segs[-1].unlink()
    code, doc, _ = _verify(world, "--level", "catalog")
    assert code == 4
    problems = {(p["what"], p["where"]) for p in _by_id(doc)[ids[0]]["problems"]}
    assert ("missing", layout.segment_key(ids[0], len(segs) - 1)) in problems
    assert doc["summary"]["bytes_read"] == 0


def test_a_deleted_parent_manifest_breaks_the_chain(world: World) -> None:
    ids = _chain(world)
    (world.target_dir / layout.manifest_key(ids[1])).unlink()
    code, doc, _ = _verify(world, "--level", "catalog")
    assert code == 4
    child = _by_id(doc)[ids[2]]
    assert child["problems"][0]["what"] == "chain" and ids[1] in child["problems"][0]["message"]
    assert doc["summary"]["orphaned_objects"] > 0  # the lost manifest's data is reported, not deleted
    assert (world.target_dir / layout.data_prefix(ids[1])).is_dir()


def test_a_manifest_copied_over_another_is_damage(world: World) -> None:
    ids = _chain(world)
    src, dst = (world.target_dir / layout.manifest_key(i) for i in ids[:2])
    dst.write_bytes(src.read_bytes())
    code, doc, _ = _verify(world, "--level", "catalog")
    assert code == 4
    assert _by_id(doc)[ids[1]]["problems"][0]["what"] == "manifest"
    assert _by_id(doc)[ids[2]]["result"] in ("damaged", "affected")


def test_a_wrong_crc_under_a_valid_tag_is_found_by_the_stream_level(world: World) -> None:
    ids = _chain(world, 1)

    def corrupt(raws: list[bytes]) -> list[bytes]:
        raw = bytearray(raws[0])
        raw[200] ^= 0x01  # inside the first commands: the CRC no longer matches
        return [bytes(raw), *raws[1:]]

    repack(_repo(world), ids[0], corrupt)
    assert _verify(world, "--level", "data")[0] == 0  # every tag and hash is right
    code, doc, _ = _verify(world, "--level", "stream")
    assert code == 4
    problem = _by_id(doc)[ids[0]]["problems"][0]
    assert problem["what"] == "stream" and ("crc" in problem["message"].lower() or "byte" in problem["message"])


def test_a_cut_off_stream_is_found_by_the_stream_level(world: World) -> None:
    ids = _chain(world, 1)
    repack(_repo(world), ids[0], lambda raws: raws[:-1])
    assert _verify(world, "--level", "data")[0] == 0
    code, doc, _ = _verify(world, "--level", "stream")
    assert code == 4 and _by_id(doc)[ids[0]]["problems"][0]["what"] == "stream"


def test_a_stream_stored_under_the_wrong_chain_link_is_found(world: World) -> None:
    """An incremental's stream replaced by the full's (both valid streams, sealed with the key)."""
    ids = _chain(world, 2)
    repo = _repo(world)
    from btrsync.catalog.segment_index import table_records
    from btrsync.pipeline.seal import ChunkOpener

    full = repo.load_manifest(ids[0])
    opener = ChunkOpener(repo.binding, ids[0])
    full_raws = [opener.open(i, repo.read_frame(ids[0], i, r), stored_xxh3=r.stored_xxh3, raw_size=r.raw_size,
                             raw_xxh3=r.raw_xxh3) for i, r in enumerate(table_records(repo, full))]
    repack(repo, ids[1], lambda _raws: full_raws)
    code, doc, _ = _verify(world, "--level", "stream")
    assert code == 4
    assert "SUBVOL" in _by_id(doc)[ids[1]]["problems"][0]["message"]


def test_slices_cover_everything_and_the_ledger_skips_what_was_verified(world: World) -> None:
    _chain(world)
    total = sum(b["stored_bytes"] for b in world.listing())
    read = sum(_verify(world, "--subset", f"{n}/3")[1]["summary"]["bytes_read"] for n in (1, 2, 3))
    assert read == total
    code, doc, _ = _verify(world, "--older-than", "30d")
    assert code == 0 and doc["summary"]["bytes_read"] == 0  # all verified just now
    code, doc, _ = _verify(world, "--sample", "1%")
    assert code == 0 and 0 < doc["summary"]["bytes_read"] < total


def test_max_duration_stops_cleanly_and_says_what_was_not_read(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """'--max-duration 0s' read nothing and said 'all intact, read 0 B'. A duration of 0 is
    refused now; a run stopped by its duration says how much it checked, never 'all intact'.
    The clock is injected: it jumps past the deadline once the first backup has been read."""
    from datetime import timedelta

    from btrsync.cli.app import render_verify
    from btrsync.ops.verify import Options, verify

    ids = _chain(world)
    code, doc, err = _verify(world, "--max-duration", "0s")
    assert code == 2 and "--max-duration must be longer than 0" in err, err
    repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    reads = []
    real_get = repo.target.get

    def counting_get(key, *args, **kwargs):  # noqa: ANN001, ANN202
        reads.append(key)
        return real_get(key, *args, **kwargs)

    repo.target.get = counting_get  # type: ignore[method-assign]
    now = [0.0]

    def clock() -> float:  # an hour passes with every segment read
        now[0] += 3600.0 if any(k.startswith("data/") and k[-6:].isdigit() for k in reads) else 0.0
        return now[0]

    report = verify(repo, None, Options(level="data", max_duration=timedelta(minutes=30)), clock=clock)
    results = {b.backup_id: b.result for b in report.backups}
    assert report.incomplete and not report.damaged and results[ids[0]] in ("ok", "incomplete"), results
    assert list(results.values()).count("incomplete") >= len(ids) - 1, results
    capsys.readouterr()
    render_verify(report, False)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "all intact" not in line and "nothing damaged in what was read" in line, line
    assert "stopped at --max-duration: run again to continue" in line


@pytest.mark.slow
def test_restore_drill_compares_with_the_local_snapshot_and_cleans_leftovers(world: World, tmp_path: Path) -> None:
    _chain(world, 2)
    scratch = tmp_path / "drills"
    scratch.mkdir()
    image, _, _ = plant_dead_drill(scratch)  # leftovers of a drill that was SIGKILLed
    code, doc, err = _verify(world, "--level", "restore", "--sample", "1", "--scratch-dir", str(scratch),
                             "--snapshot-dir", str(world.snapdir))
    assert code == 0, err
    drill = doc["summary"]["drill"]
    assert drill["ok"] and len(drill["drills"]) == 1
    assert drill["drills"][0]["compared_with"].startswith(str(world.snapdir))
    assert list(scratch.iterdir()) == []  # the dead drill's image and mount, and this drill's, are gone
    assert str(image) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    status = json.loads(world.cli("state", "show", "--json").out)
    assert status[0]["drill"]["ok"] and status[0]["verification"]["level"] == "restore"


def test_push_verify_rereads_what_it_wrote(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken upload path (here: every segment put corrupts one byte on the way) is caught by the
    same push with --verify data (exit 4), not months later by a restore."""
    tree.populate(world.subvol, 2)
    world.snapshot()
    run = world.push("--verify", "data", "--json")
    assert run.code == 0, run.err
    assert run.json()["verify"]["ok"] and run.json()["verify"]["bytes_read"] > 0
    original = LocalTarget.put

    def corrupting(self, key, parts):  # noqa: ANN001
        if "/data/" in f"/{key}" and not key.endswith(".idx"):
            data = bytearray(b"".join(bytes(p) for p in parts))
            data[len(data) // 2] ^= 1
            parts = [bytes(data)]
        return original(self, key, parts)

    monkeypatch.setattr(LocalTarget, "put", corrupting)
    tree.mutate(world.subvol, 2, 1)
    world.snapshot()
    run = world.push("--verify", "data")
    assert run.code == 4 and "upload path" in run.err


def test_push_parses_the_stream_records_changes_and_a_tree_summary(world: World, tmp_path: Path) -> None:
    ids = _chain(world, 2)
    rows = {r["id"]: r for r in world.listing()}
    assert rows[ids[0]]["tree"]["entries"] > 10 and rows[ids[1]]["tree"] is None
    assert rows[ids[0]]["changes"]["created"] > 0 and rows[ids[1]]["changes"]["data_bytes"] >= 0
    # a drill of the full without the original snapshot compares with its index and recorded summary
    code, doc, err = _verify(world, ids[0], "--level", "restore", "--scratch-dir", str(tmp_path / "d"))
    assert code == 0, err
    assert doc["summary"]["drill"]["drills"][0]["compared_with"] == \
        "the file indexes recorded at push time and the tree summary recorded at push time"


@pytest.mark.slow
def test_a_drill_of_an_incremental_without_its_snapshot_compares_with_the_chain_s_file_indexes(
        world: World, tmp_path: Path) -> None:
    ids = _chain(world, 3)
    code, doc, err = _verify(world, ids[-1], "--level", "restore", "--scratch-dir", str(tmp_path / "d"))
    assert code == 0, err
    assert doc["summary"]["drill"]["drills"][0]["compared_with"] == "the file indexes recorded at push time"
    # the middle link's index damaged: the drill cannot vouch for the restore and says which object
    part = world.target_dir / layout.data_prefix(ids[1]) / "files-000000"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 1
    part.write_bytes(bytes(data))
    code, doc, err = _verify(world, ids[-1], "--level", "restore", "--scratch-dir", str(tmp_path / "d"))
    assert code == 4, err
    problems = [p for b in doc["backups"] for p in b.get("problems", [])]
    assert any("the file index cannot be replayed" in str(p) and "files-000000" in str(p) for p in problems), doc


def test_a_stream_with_a_bad_crc_is_never_committed(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from btrsync.btrfs.send import SendProcess

    tree.populate(world.subvol, 3)
    world.snapshot()
    original = SendProcess.chunks

    def flipped(self, size):  # noqa: ANN001
        for i, chunk in enumerate(original(self, size)):
            if i == 0:
                chunk = chunk[:300] + bytes([chunk[300] ^ 1]) + chunk[301:]
            yield chunk

    monkeypatch.setattr(SendProcess, "chunks", flipped)
    run = world.push()
    assert run.code == 1 and "bad stream" in run.err and "crc" in run.err.lower()
    assert world.listing() == []
