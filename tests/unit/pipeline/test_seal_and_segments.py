"""Sealing chunks and packing segments, against the in-memory target."""

from __future__ import annotations

import os

import pytest

from btrsync.catalog.layout import segment_key
from btrsync.crypto.frames import Binding
from btrsync.crypto.keys import MasterKey
from btrsync.errors import DamageError
from btrsync.pipeline.ordered import ordered_map
from btrsync.pipeline.seal import ChunkOpener, ChunkSealer
from btrsync.pipeline.segments import _SegmentPut, write_segments
from btrsync.targets.memory import MemoryTarget

KEY = MasterKey(os.urandom(32))
BINDING = Binding(KEY, "repo")


def _chunks() -> list[bytes]:
    return [b"text " * 2000, os.urandom(10000), b"", b"z" * 1, os.urandom(5000) + b"a" * 5000]


def test_sealed_chunks_open_to_the_original_bytes() -> None:
    sealer, opener = ChunkSealer(BINDING, "bid", 3), ChunkOpener(BINDING, "bid")
    for seq, raw in enumerate(_chunks()):
        s = sealer((seq, raw))
        assert opener.open(seq, s.frame, stored_xxh3=s.stored_xxh3, raw_size=s.raw_size,
                           raw_xxh3=s.raw_xxh3) == raw


def test_compression_is_kept_only_when_it_helps() -> None:
    sealer = ChunkSealer(BINDING, "bid", 3)
    assert len(sealer((0, b"a" * 100000)).frame) < 1000
    noise = os.urandom(100000)
    assert len(sealer((1, noise)).frame) == len(noise) + 40  # stored raw: header + tag only


def test_opener_rejects_bytes_that_do_not_match_the_manifest() -> None:
    sealer, opener = ChunkSealer(BINDING, "bid", 3), ChunkOpener(BINDING, "bid")
    s = sealer((0, b"hello" * 100))
    with pytest.raises(DamageError, match="chunk 0 of backup bid.*xxh3"):
        opener.open(0, s.frame[:-1] + b"\0", stored_xxh3=s.stored_xxh3, raw_size=s.raw_size,
                    raw_xxh3=s.raw_xxh3)
    with pytest.raises(DamageError, match="size and hash"):
        opener.open(0, s.frame, stored_xxh3=s.stored_xxh3, raw_size=s.raw_size, raw_xxh3="0" * 32)


def test_ordered_map_keeps_order_and_bounds_the_window() -> None:
    in_flight, peak = 0, 0
    import threading

    lock = threading.Lock()

    def source():
        nonlocal in_flight, peak
        for i in range(200):
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            yield i

    out = []
    for r in ordered_map(lambda x: x * 2, source(), workers=3, window=5):
        with lock:
            in_flight -= 1
        out.append(r)
    assert out == [2 * i for i in range(200)]
    assert peak <= 6


def test_ordered_map_propagates_the_first_error() -> None:
    def boom(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x

    with pytest.raises(ValueError, match="seven"):
        list(ordered_map(boom, range(100), workers=2, window=4))


def test_segments_split_on_size_and_record_offsets() -> None:
    target = MemoryTarget()
    sealer = ChunkSealer(BINDING, "bid", 0)
    sealed = [sealer((i, os.urandom(1000))) for i in range(10)]
    records: list = []
    count = write_segments(target, "bid", iter(sealed), segment_size=3 * 1040,
                           on_segment=lambda n, recs: records.extend(recs))
    assert count == 4 and [r.segment for r in records] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    for rec, s in zip(records, sealed, strict=True):
        seg = target.objects[segment_key("bid", rec.segment)]
        assert seg[rec.offset : rec.offset + rec.stored_size] == s.frame


def test_a_chunk_larger_than_a_segment_gets_its_own_segment() -> None:
    target = MemoryTarget()
    sealer = ChunkSealer(BINDING, "bid", 0)
    records: list = []
    count = write_segments(target, "bid", iter([sealer((0, os.urandom(5000)))]), segment_size=100,
                           on_segment=lambda n, recs: records.extend(recs))
    assert count == 1 and records[0].stored_size == 5040


def test_segments_are_acknowledged_in_order_after_they_are_stored() -> None:
    target = MemoryTarget()
    sealer = ChunkSealer(BINDING, "bid", 0)
    acked: list[tuple[int, bool]] = []
    records: list = []

    def on_segment(n, recs):
        acked.append((n, segment_key("bid", n) in target.objects))
        records.extend(recs)

    nxt = write_segments(target, "bid", (sealer((i, os.urandom(1000))) for i in range(20)),
                                  segment_size=2100, first_segment=5, on_segment=on_segment)
    assert nxt == 15 and acked == [(n, True) for n in range(5, 15)]
    assert [r.segment for r in records] == [5 + i // 2 for i in range(20)]


def test_a_refused_segment_is_never_started() -> None:
    """``may_start`` (the run's window_end = "stop") is asked before each segment; its refusal
    ends the writing at that boundary with nothing of the refused segment stored."""
    target = MemoryTarget()
    sealer = ChunkSealer(BINDING, "bid", 0)
    asked: list[int] = []

    def may_start(n: int) -> None:
        asked.append(n)
        if n == 3:
            raise RuntimeError("window closed")

    with pytest.raises(RuntimeError, match="window closed"):
        write_segments(target, "bid", (sealer((i, os.urandom(1000))) for i in range(20)),
                       segment_size=2100, first_segment=1, may_start=may_start)
    assert asked == [1, 2, 3]
    assert segment_key("bid", 3) not in target.objects and segment_key("bid", 1) in target.objects


def test_a_failing_producer_leaves_no_partial_segment() -> None:
    target = MemoryTarget()
    sealer = ChunkSealer(BINDING, "bid", 0)

    def sealed():
        for i in range(7):
            yield sealer((i, os.urandom(1000)))
        raise OSError("btrfs send died")

    with pytest.raises(OSError, match="send died"):
        write_segments(target, "bid", sealed(), segment_size=3 * 1040)
    # the unfinished third segment is gone; the two complete ones may have landed
    assert sorted(target.objects) == [segment_key("bid", 0), segment_key("bid", 1)]
    assert all(len(v) == 3 * 1040 for v in target.objects.values())


def test_an_abort_ends_a_put_waiting_for_its_next_frame_without_a_wake_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal raised in the producer inside ``Queue.put`` can lose the queue's wake-up; the
    abort's cancel flag alone must end the put that waits for its next frame (it once waited for
    good, and the command with it)."""
    import threading

    monkeypatch.setattr(_SegmentPut, "abort", lambda self: self.cancel.set())  # no word through the queue
    target = MemoryTarget()
    sealer = ChunkSealer(BINDING, "bid", 0)

    def sealed():
        yield sealer((0, os.urandom(1000)))
        raise OSError("btrfs send died")

    failed: list[BaseException] = []

    def run() -> None:
        try:
            write_segments(target, "bid", sealed(), segment_size=10 * 1040)
        except OSError as exc:
            failed.append(exc)

    writer = threading.Thread(target=run, daemon=True)
    writer.start()
    writer.join(timeout=10)
    assert not writer.is_alive(), "the put waited for a wake-up that never came"
    assert [str(e) for e in failed] == ["btrfs send died"]
    assert target.objects == {}  # the unfinished segment was discarded


def test_an_abort_wakes_a_put_that_waits_for_bandwidth() -> None:
    """A throttled put sleeping in the token bucket is woken by the abort (SIGTERM, a failed
    send) instead of finishing a wait of one frame divided by the rate: here 1,040 s."""
    import threading

    from btrsync.pipeline.throttle import TokenBucket

    class Clock:
        def __init__(self) -> None:
            self.waiting = threading.Event()
            self.woken: list[bool] = []

        def monotonic(self) -> float:
            return 0.0

        def sleep(self, seconds: float) -> None:
            raise AssertionError("a put with an abort event must not sleep blindly")

        def wait(self, event: threading.Event, seconds: float) -> bool:
            assert seconds >= 1000
            self.waiting.set()
            self.woken.append(event.wait(60))  # False only if the abort never reached the put
            return self.woken[-1]

    clock = Clock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock, initial=0)
    target = MemoryTarget()
    sealer = ChunkSealer(BINDING, "bid", 0)

    def sealed():
        yield sealer((0, os.urandom(1000)))
        assert clock.waiting.wait(60)
        raise OSError("terminated")

    with pytest.raises(OSError, match="terminated"):
        write_segments(target, "bid", sealed(), segment_size=1 << 20, bucket=bucket)
    assert clock.woken == [True] and target.objects == {}


def test_a_failing_put_stops_the_producer_with_its_error() -> None:
    from btrsync.targets.errors import QuotaExceeded

    class FullTarget(MemoryTarget):
        def put(self, key, parts):
            for i, _ in enumerate(parts):
                if i == 2:
                    raise QuotaExceeded("target full")
            return super().put(key, [])

    sealer = ChunkSealer(BINDING, "bid", 0)
    produced = []

    def sealed():
        for i in range(1000):
            produced.append(i)
            yield sealer((i, os.urandom(1000)))

    with pytest.raises(QuotaExceeded):
        write_segments(FullTarget(), "bid", sealed(), segment_size=1 << 30)
    assert len(produced) < 20  # the producer was stopped, not run to the end


def test_a_segment_is_acknowledged_as_soon_as_it_is_durable() -> None:
    """Segment 1's ``on_segment`` (the push writes its index there) runs while the producer still
    fills segment 2: it never waits for a later segment to be started or written."""
    import threading

    target = MemoryTarget()
    sealer = ChunkSealer(BINDING, "bid", 0)
    acked = {n: threading.Event() for n in range(4)}
    seen_early: list[bool] = []

    def produce():
        for i in range(8):  # two chunks per segment
            if i == 5:  # segment 2 has one chunk; segments 0 and 1 are ended
                seen_early.append(acked[1].wait(timeout=30))
            yield sealer((i, os.urandom(1000)))

    write_segments(target, "bid", produce(), segment_size=2100,
                   on_segment=lambda n, recs: acked[n].set())
    assert seen_early == [True]
    assert all(e.is_set() for e in acked.values())


def test_a_chunk_that_does_not_compress_skips_zstd_and_is_stored_raw() -> None:
    sealer, opener = ChunkSealer(BINDING, "bid", 3), ChunkOpener(BINDING, "bid")
    noise = os.urandom(4 << 20)
    s = sealer((0, noise))
    assert len(s.frame) == len(noise) + 40  # header + tag: stored raw
    assert getattr(sealer._local, "compressor", None) is None  # the level-3 compressor never ran
    assert opener.open(0, s.frame, stored_xxh3=s.stored_xxh3, raw_size=s.raw_size, raw_xxh3=s.raw_xxh3) == noise


def test_a_chunk_that_compresses_is_compressed() -> None:
    sealer = ChunkSealer(BINDING, "bid", 3)
    text = b"".join(b"line %d of a log that compresses well\n" % i for i in range(120_000))
    assert len(text) > 4 << 20
    assert len(sealer((0, text)).frame) < len(text) // 3


def test_the_compression_flag_is_authenticated() -> None:
    """Flipping FLAG_ZSTD in a frame's header (so that a reader would decompress raw bytes, or
    hand out compressed ones) fails authentication, not only the hash of the restored bytes."""
    from btrsync.errors import ChunkDamageError
    from btrsync.pipeline.seal import xxh3

    sealer, opener = ChunkSealer(BINDING, "bid", 3), ChunkOpener(BINDING, "bid")
    for seq, raw in enumerate([os.urandom(1 << 20), b"compressible " * 100_000]):
        s = sealer((seq, raw))
        forged = bytearray(s.frame)
        forged[4] ^= 0x01  # the flags byte after the 4-byte magic: FLAG_ZSTD
        with pytest.raises(ChunkDamageError, match="failed authentication") as err:
            opener.open(seq, bytes(forged), stored_xxh3=xxh3(bytes(forged)), raw_size=s.raw_size,
                        raw_xxh3=s.raw_xxh3)
        assert err.value.kind == "tag"
