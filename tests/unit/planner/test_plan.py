"""The push planner: parents by uuid, chain caps, untrusted snapshots, reasons."""

from __future__ import annotations

from dataclasses import dataclass

from btrsync.planner.plan import plan_push


@dataclass(frozen=True)
class Snap:
    name: str
    uuid: str


@dataclass(frozen=True)
class Held:
    backup_id: str
    snapshot_uuid: str
    depth: int


SNAPS = [Snap(f"s{i}", f"u{i}") for i in range(6)]


def _plan(held, snaps=SNAPS, max_chain=30, trusted=None):
    return plan_push(snaps, held, max_chain=max_chain, backup_id_for=lambda s: "id-" + s.name, skip={s.name: "untrusted" for s in snaps if trusted is not None and s.name not in trusted})


def test_empty_target_gets_a_full_then_a_chain() -> None:
    plan = _plan([])
    assert [(s.snapshot.name, s.kind, s.parent and s.parent.name, s.depth) for s in plan.steps] == [
        ("s0", "full", None, 0), ("s1", "incremental", "s0", 1), ("s2", "incremental", "s1", 2),
        ("s3", "incremental", "s2", 3), ("s4", "incremental", "s3", 4), ("s5", "incremental", "s4", 5)]
    assert plan.steps[1].parent_backup_id == "id-s0"
    assert "no snapshot is held" in plan.steps[0].reason


def test_parent_is_the_newest_common_snapshot_by_uuid_not_name() -> None:
    held = [Held("b0", "u0", 0), Held("b2", "u2", 1)]
    plan = _plan(held, [Snap("s0", "u0"), Snap("s1", "u1"), Snap("s2", "u2"), Snap("s3", "u3")])
    # s1 is missing: it goes on s0; s3 goes on s2, the newest held
    assert [(s.snapshot.name, s.parent.name, s.parent_backup_id, s.depth) for s in plan.steps] == [
        ("s1", "s0", "b0", 1), ("s3", "s2", "b2", 2)]


def test_a_renamed_snapshot_is_still_recognised_by_uuid() -> None:
    plan = _plan([Held("b", "u0", 0)], [Snap("renamed", "u0"), Snap("s1", "u1")])
    assert plan.steps[0].parent.name == "renamed"


def test_max_chain_forces_a_full() -> None:
    plan = _plan([], max_chain=2)
    assert [s.kind for s in plan.steps] == ["full", "incremental", "incremental", "full", "incremental",
                                            "incremental"]
    assert "max-chain 2" in plan.steps[3].reason
    assert max(s.depth for s in plan.steps) == 2


def test_max_chain_counts_depth_already_on_the_target() -> None:
    plan = _plan([Held("b", "u0", 5)], [Snap("s0", "u0"), Snap("s1", "u1")], max_chain=5)
    assert plan.steps[0].kind == "full"


def test_max_chain_zero_sends_only_fulls() -> None:
    assert {s.kind for s in _plan([], max_chain=0).steps} == {"full"}


def test_untrusted_snapshots_are_skipped_and_never_parents() -> None:
    plan = _plan([Held("b0", "u0", 0)], SNAPS[:3], trusted=["s0", "s2"])
    assert [s.snapshot.name for s in plan.skipped] == ["s1"]
    assert [(s.snapshot.name, s.parent.name) for s in plan.steps] == [("s2", "s0")]


def test_everything_held_means_nothing_to_do() -> None:
    plan = _plan([Held(f"b{i}", f"u{i}", i) for i in range(6)])
    assert plan.steps == () and len(plan.up_to_date) == 6


def test_planning_100k_snapshots_is_linear() -> None:
    snaps = [Snap(f"s{i}", f"u{i}") for i in range(100_000)]
    held = [Held(f"b{i}", f"u{i}", i % 30) for i in range(0, 100_000, 2)]
    plan = _plan(held, snaps)
    assert len(plan.steps) == 50_000
