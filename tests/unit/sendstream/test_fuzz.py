"""Fuzzing: hostile input never crashes either parser, never hangs, and both always agree.

Each input (random bytes, raw and structural mutations of sample and real streams) is fed to both
implementations in the same random chunks; the outcome (events, error reason and offset, bytes
consumed, commands) must be identical, and an error must be a StreamError, nothing else. The time
budget is PARSER_FUZZ_SECONDS per test (default 4; the suite runs four of them). Each test draws
a random seed, printed on failure; PARSER_FUZZ_SEED=N replays it.
"""

from __future__ import annotations

import os
import random

import pytest

from btrsync.sendstream import parser
from btrsync.sendstream.format import StreamError
from tests.unit.sendstream import fuzz
from tests.unit.sendstream import streams as S

SECONDS = float(os.environ.get("PARSER_FUZZ_SECONDS", "4"))
SEED = os.environ.get("PARSER_FUZZ_SEED")
REAL = fuzz.real_streams()
SAMPLES = fuzz.sample_streams()


def _rng(name: str) -> random.Random:
    seed = int(SEED) if SEED else random.randrange(2**32)
    rng = random.Random(f"{name}-{seed}")
    rng.seed_value = seed  # type: ignore[attr-defined]
    return rng


def _check(data: bytes, rng: random.Random, stats: dict[str, int]) -> None:
    where = f"PARSER_FUZZ_SEED={rng.seed_value} (input {sum(stats.values())})"  # type: ignore[attr-defined]
    chunks = fuzz.random_chunks(data, rng)
    try:
        py = S.outcome(parser.PyStreamParser, chunks)
        if parser.native_available:
            native = S.outcome(parser.NativeStreamParser, chunks)
            assert native == py, f"implementations differ on {data[:200]!r}..."
    except BaseException as exc:
        raise AssertionError(f"{where}: {exc!r}") from exc
    stats["ok" if py[1] is None else py[1][0].split(" ")[0]] = stats.get(
        "ok" if py[1] is None else py[1][0].split(" ")[0], 0) + 1


@pytest.mark.slow
def test_real_streams_parse_in_both_implementations() -> None:
    assert set(REAL) == {"v1-full", "v1-incremental", "v2-compressed-full",
                         "v2-compressed-incremental"}
    for name, data in REAL.items():
        expected = S.outcome(parser.PyStreamParser, [data])
        assert expected[1] is None, (name, expected[1])
        cmds = {e[0] for e in expected[0]}
        assert ("encoded_write" in cmds) == name.startswith("v2")
        assert ("snapshot" in cmds) == name.endswith("incremental")
        for size in (1, 7, 4 << 20):
            if size == 1 and len(data) > 200_000:
                continue
            chunks = S.every(data, size)
            assert S.outcome(parser.PyStreamParser, chunks) == expected
            if parser.native_available:
                assert S.outcome(parser.NativeStreamParser, chunks) == expected


@pytest.mark.parametrize("corpus", ["samples", "real"])
@pytest.mark.slow
def test_mutated_streams(corpus) -> None:
    rng = _rng(f"mutated-{corpus}")
    source = SAMPLES if corpus == "samples" else REAL
    gen = fuzz.inputs(rng, source)
    stats: dict[str, int] = {}
    n = fuzz.run_for(SECONDS, lambda: _check(next(gen)[1], rng, stats), at_least=50)
    assert sum(stats.values()) == n
    assert n >= 50
    # the mutations reach past the CRC into the attribute checks
    assert stats.get("CRC32C", 0) < n


@pytest.mark.slow
def test_random_bytes() -> None:
    rng = _rng("random")
    stats: dict[str, int] = {}

    def step() -> None:
        data = rng.randbytes(rng.randrange(0, 2000))
        if rng.random() < 0.7:
            data = S.header(rng.randrange(0, 5)) + data
        _check(data, rng, stats)

    fuzz.run_for(SECONDS / 2, step, at_least=100)


def test_hostile_lengths_do_not_make_the_parser_wait_or_grow(Parser) -> None:
    # a header claiming 4 GiB: refused at once, not after reading (or buffering) 4 GiB
    p = Parser()
    with pytest.raises(StreamError, match="exceeds the limit"):
        p.feed(S.header(2) + S.subvol() + b"\xff\xff\xff\xff\x0f\x00\x00\x00\x00\x00")
    # thousands of tiny attributes fed one byte at a time: parsed in linear time, and refused
    # for the first duplicate once the command's CRC is known to be right
    body = S.attr("path", b"x") + S.attr("otime", bytes(12)) * 3000
    data = S.minimal(2, S.command("unlink", body))
    p = Parser()
    with pytest.raises(StreamError, match="duplicate attribute otime") as info:
        for i in range(len(data)):
            p.feed(data[i:i + 1])
    start = len(S.header(2)) + len(S.subvol())
    assert info.value.offset == start + 10 + len(S.attr("path", b"x")) + 16
    assert p.bytes == start + 10 + len(body)
