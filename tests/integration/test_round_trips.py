"""Round trips of a push to a distant store: the reads that do not depend on each other are made at
once, and a push never reads back the manifest it committed itself.

On B2 or S3 from another continent every request a push waits for costs 50-150 ms; a small daily
incremental is mostly such waits.  The B2-rules proxy holds every request (``latency``) and
records which requests were in flight together, so these tests see what the client did at once,
not how long it took.
"""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import World, add_target
from tests.support import tree
from tests.support.b2proxy import Seen
from tests.targets.factories_s3 import TEST_BUCKET, fresh_b2_proxy, seaweed_settings

pytestmark = pytest.mark.btrfs

LATENCY = 0.15  # seconds the proxy holds each request: longer than starting a thread takes


def _at_once(alongside: list[tuple[Seen, tuple[Seen, ...]]], *wanted: tuple[str, str]) -> bool:
    """Whether requests matching each (op, path fragment) of ``wanted`` were in flight together."""
    def matches(seen: Seen, want: tuple[str, str]) -> bool:
        return seen.op == want[0] and want[1] in seen.path

    for seen, others in alongside:
        group = (seen, *others)
        if all(any(matches(s, want) for s in group) for want in wanted):
            return True
    return False


@pytest.fixture
def distant(world: World, request: pytest.FixtureRequest, tmp_path) -> World:
    world.proxy = proxy = fresh_b2_proxy(request)  # type: ignore[attr-defined]
    add_target(world, "b2", f"s3://{TEST_BUCKET}/it-{uuid.uuid4().hex[:12]}",
               seaweed_settings(request, tmp_path, via_proxy=True), chunk_size="1M", segment_size="4M")
    tree.populate(world.subvol, 1)
    world.snapshot()
    assert world.push().code == 0
    (world.subvol / "today.txt").write_text("one more day\n")
    world.snapshot()
    proxy.reset()
    proxy.latency = LATENCY
    return world


def test_an_incremental_push_makes_its_independent_reads_at_once(distant: World) -> None:
    run = distant.push()
    assert run.code == 0, run.err
    proxy = distant.proxy  # type: ignore[attr-defined]
    met = proxy.alongside
    # opening the repository: the bucket check beside the marker's GET and the catalog's listing
    assert _at_once(met, ("HeadBucket", ""), ("GetObject", "btrsync-repo.json"), ("ListObjectsV2", "")), \
        [s.op for s, _ in met]
    # under the lease: is it committed already, beside the listing of what earlier attempts left
    assert _at_once(met, ("HeadObject", "/manifest"), ("ListObjectsV2", "")), [s.op for s, _ in met]
    # the stream has ended: the file index goes up beside the last segment and its index
    assert _at_once(met, ("PutObject", "/files-"), ("PutObject", "/000000")), [s.op for s, _ in met]
    # right before the commit: the upload check, the parent's presence, the unfinished uploads and
    # whether the lease is still this push's
    assert _at_once(met, ("ListObjectsV2", ""), ("HeadObject", "/manifest"), ("ListMultipartUploads", ""),
                    ("GetObject", ".lease")), [s.op for s, _ in met]
    # taken: read, written; read before the commit (beside the checks above); released: read
    # (whose it is) beside the listing of its versions, then deleted (two round trips)
    leases = [s.op for s, _ in met if ".lease" in s.path]
    assert leases[:3] == ["GetObject", "PutObject", "GetObject"] and leases[-1] == "DeleteObject", leases
    assert sorted(leases[3:5]) == ["GetObject", "ListObjectVersions"] and len(leases) == 6, leases
    assert _at_once([(s, o) for s, o in met if ".lease" in s.path], ("GetObject", ".lease"),
                    ("ListObjectVersions", ".lease")), leases
    assert not proxy.rejected
    proxy.reset()
    proxy.latency = LATENCY
    first, second = distant.listing()  # list, like receive, restore and verify, lists beside the marker too
    assert second["kind"] == "incremental" and second["parent"] == first["id"], second
    assert _at_once(proxy.alongside, ("GetObject", "btrsync-repo.json"), ("ListObjectsV2", "")), \
        [s.op for s, _ in proxy.alongside]


def test_a_push_never_reads_back_the_manifest_it_committed(distant: World) -> None:
    """The commit stores the sealed manifest in the catalog cache under the version the store gave
    it; the next push's listing shows that version, so planning reads no manifest at all."""
    proxy = distant.proxy  # type: ignore[attr-defined]
    proxy.latency = 0.0
    assert distant.push().code == 0
    (distant.subvol / "today.txt").write_text("and another\n")
    distant.snapshot()
    proxy.reset()
    assert distant.push().code == 0
    manifests = [s.path for s in proxy.ops("GetObject") if s.path.split("?")[0].endswith("/manifest")]
    assert manifests == [], manifests
    assert len(distant.listing()) == 3


def test_a_backup_committed_meanwhile_is_left_whole(world: World) -> None:
    """The check whether the backup is committed already runs beside the listing of its data: when
    another push committed it after this one planned, nothing of it is deleted (its segments are
    no leftovers) and it restores."""
    from btrsync.catalog.repository import Repository
    from btrsync.crypto.keys import load_key_file
    from btrsync.ops.push.run import push, push_step
    from btrsync.ops.push.settings import PushSettings
    from btrsync.targets.local import LocalTarget

    tree.populate(world.subvol, 2)
    world.snapshot()
    repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    settings = PushSettings(chunk_size=64 << 10, segment_size=256 << 10)
    [step] = push(world.subvol, world.snapdir, repo, settings, dry_run=True).plan.steps
    assert world.push().code == 0  # the other push
    before = world.data_files()
    outcome, manifest = push_step(repo, step, "data", world.subvol, settings)
    assert manifest is None and "committed meanwhile" in str(outcome.error), outcome
    assert world.data_files() == before
    assert world.receive("latest").code == 0


def test_a_receive_reads_every_link_s_first_index_at_once(distant: World) -> None:
    """A chain is received or restored one link after another, but the first segment index of every link is read
    at the start, at once: one round trip instead of one per link before its first chunk."""
    proxy = distant.proxy  # type: ignore[attr-defined]
    proxy.latency = 0.0
    assert distant.push().code == 0
    proxy.reset()
    proxy.latency = LATENCY
    run = distant.receive("latest")
    assert run.code == 0, run.err
    ids = [b["id"] for b in distant.listing()]
    indexes = [("GetObject", f"/data/{bid}/000000.idx") for bid in ids]
    assert _at_once(proxy.alongside, *indexes), [s.path for s, _ in proxy.alongside]
    # the small links (one segment, a few KiB: the two days) are read whole with them; the full
    # (two segments) chunk by chunk at its turn
    days = [("GetObject", f"/data/{bid}/000000") for bid in ids[1:]]
    assert _at_once(proxy.alongside, *indexes, *days), [s.path for s, _ in proxy.alongside]
    day_reads = [s.path for s in proxy.ops("GetObject") if any(f"/data/{bid}/000000" in s.path and
                                                               ".idx" not in s.path for bid in ids[1:])]
    assert len(day_reads) == len(ids) - 1, day_reads  # each read once: the receive read none again
    # a restore of the whole tree (onto any filesystem) replays every link the same way
    proxy.reset()
    proxy.latency = LATENCY
    (distant.restore / "files").mkdir()
    run = distant.cli("restore", "latest", "--from", distant.url, "--to", str(distant.restore / "files"))
    assert run.code == 0, run.err
    assert _at_once(proxy.alongside, *indexes), [s.path for s, _ in proxy.alongside]


def test_a_missing_index_of_a_later_link_fails_at_its_turn(world: World) -> None:
    """Read ahead or not, a link whose first index is gone is damage when that link's turn comes:
    the links before it are received, and the error names the index."""
    tree.populate(world.subvol, 3)
    for _ in range(3):
        world.snapshot()
        assert world.push().code == 0
        (world.subvol / f"more-{len(world.snapshots)}.txt").write_text("x" * 5000)
    ids = [b["id"] for b in world.listing()]
    (world.target_dir / "data" / ids[2] / "000000.idx").unlink()
    run = world.receive("latest")
    assert run.code != 0 and f"data/{ids[2]}/000000.idx" in run.err, run.err
    received = sorted(p.name for p in world.restore.iterdir())
    assert received == sorted(s.name for s in world.snapshots[:2]), received


def test_only_a_planner_uses_the_listing_taken_beside_the_marker(world: World) -> None:
    """prune and clean call catalog() without ``ahead``: a backup committed after the repository
    was opened must never look absent to them (its parent prunable, its data orphaned)."""
    from btrsync.catalog.repository import Repository
    from btrsync.crypto.keys import load_key_file
    from btrsync.targets.local import LocalTarget

    def another_backup(n: int) -> None:
        (world.subvol / f"day-{n}.txt").write_text(f"day {n}\n")
        world.snapshot()
        assert world.push().code == 0

    tree.populate(world.subvol, 4)
    another_backup(0)
    key = load_key_file(world.key)
    repo = Repository.open(LocalTarget(world.target_dir), key, listing=True)
    another_backup(1)
    assert len(repo.catalog().manifests) == 2  # prune, clean: listed now
    repo = Repository.open(LocalTarget(world.target_dir), key, listing=True)
    another_backup(2)
    assert len(repo.catalog(ahead=True).manifests) == 2  # a push's plan: the listing beside the marker
    assert len(repo.catalog(ahead=True).manifests) == 3  # once only
