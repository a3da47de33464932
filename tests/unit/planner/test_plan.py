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


class _Reads:
    """Counts how often the planner reads each snapshot's uuid and each held backup's snapshot uuid:
    work per item that stays bounded as the lists grow is what makes planning linear (a lookup by
    scanning would read them len(snapshots) x len(held) times)."""

    def __init__(self) -> None:
        self.count = 0


class _CountedSnap:
    def __init__(self, name: str, uuid: str, reads: _Reads) -> None:
        self.name, self._uuid, self._reads = name, uuid, reads

    @property
    def uuid(self) -> str:
        self._reads.count += 1
        return self._uuid


class _CountedHeld:
    def __init__(self, backup_id: str, snapshot_uuid: str, depth: int, reads: _Reads) -> None:
        self.backup_id, self._uuid, self.depth, self._reads = backup_id, snapshot_uuid, depth, reads

    @property
    def snapshot_uuid(self) -> str:
        self._reads.count += 1
        return self._uuid


def test_planning_100k_snapshots_is_linear() -> None:
    """Every other snapshot of 100,000 is held (at depths 0..28): each of the others goes on the one
    before it, except where that would pass max-chain; reading each uuid a bounded number of times."""
    n = 100_000
    reads = _Reads()
    snaps = [_CountedSnap(f"s{i}", f"u{i}", reads) for i in range(n)]
    held = [_CountedHeld(f"b{i}", f"u{i}", i % 30, reads) for i in range(0, n, 2)]
    for max_chain in (30, 25):
        reads.count = 0
        plan = plan_push(snaps, held, max_chain=max_chain, backup_id_for=lambda s: "id-" + s.name)
        assert reads.count <= 2 * (len(snaps) + len(held)), reads.count
        assert [s.name for s in plan.up_to_date] == [f"s{i}" for i in range(0, n, 2)]
        assert plan.skipped == ()
        # each new snapshot s(i+1) goes on s(i), held as b(i) at depth i % 30, unless that passes max-chain
        expected = []
        for i in range(0, n, 2):
            depth = i % 30 + 1
            if depth > max_chain:
                expected.append((f"s{i + 1}", "full", None, None, 0))
            else:
                expected.append((f"s{i + 1}", "incremental", f"s{i}", f"b{i}", depth))
        got = [(s.snapshot.name, s.kind, s.parent and s.parent.name, s.parent_backup_id, s.depth)
               for s in plan.steps]
        assert got == expected
        fulls = [name for name, kind, *_ in got if kind == "full"]
        if max_chain == 30:
            assert fulls == []
        else:  # held at depth 26 or 28: s27, s29, s57, s59, ...
            assert fulls[:4] == ["s27", "s29", "s57", "s59"] and len(fulls) == 6666
