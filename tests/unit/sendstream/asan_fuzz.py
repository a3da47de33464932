"""Fuzz an instrumented build of the C parser; run by test_asan.py in a subprocess.

    python asan_fuzz.py PATH/TO/_native.so SECONDS

The instrumented module is registered as ``btrsync.sendstream._native`` before anything imports
that name, so the stream builders and the parser selection use it too. Exits 0 when every check
passed; AddressSanitizer / UBSan abort the process (non-zero) on the first memory error.
"""

from __future__ import annotations

import importlib.util
import random
import struct
import sys
import time


def load(path: str):  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("btrsync.sendstream._native", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    native = load(sys.argv[1])
    seconds = float(sys.argv[2])
    from btrsync.sendstream import _pyparser, parser
    from btrsync.sendstream.format import MAX_BODY_V2, StreamError
    from tests.unit.sendstream import fuzz
    from tests.unit.sendstream import streams as S

    assert parser.NativeStreamParser is native.StreamParser, "the instrumented build is not in use"
    rng = random.Random(1234)

    # CRC32C, both implementations, odd lengths and alignments, against the Python one
    blob = rng.randbytes(100_000)
    crcs = [native.crc32c_sw] + ([native.crc32c_hw] if native.crc32c_hardware_available else [])
    for _ in range(300):
        a = rng.randrange(len(blob))
        b = a + rng.choice([0, 1, 7, 8, 9, 255, 768, 769, 24577, rng.randrange(len(blob) - a + 1)])
        piece = memoryview(blob)[a:b]
        want = _pyparser.crc32c(piece, 99)
        assert all(fn(piece, 99) == want for fn in crcs)

    corpus = fuzz.sample_streams() | fuzz.real_streams()
    # valid streams in every chunking, from bytes, bytearray and memoryview slices
    for data in corpus.values():
        want = S.outcome(parser.PyStreamParser, [data])
        for size in (1, 7, 4096, 1 << 22):
            if size == 1 and len(data) > 100_000:
                continue
            chunks = [bytearray(c) if i % 2 else memoryview(c) for i, c in enumerate(S.every(data, size))]
            assert S.outcome(native.StreamParser, chunks) == want
    # the largest v2 command, and one byte more
    head = S.attr("path", b"f") + S.attr("file_offset", S.u64(0)) + b"\x13\x00"
    big = S.minimal(2, S.command("write", head + bytes(MAX_BODY_V2 - len(head))))
    assert S.outcome(native.StreamParser, S.every(big, 1 << 16))[1] is None
    p = native.StreamParser()
    try:
        p.feed(S.header(2) + S.subvol() + struct.pack("<IHI", MAX_BODY_V2 + 1, 15, 0))
        raise AssertionError("oversized command accepted")
    except StreamError:
        pass

    # the fuzz loop: both implementations on small inputs, the C one alone on the rest
    gen = fuzz.inputs(rng, corpus)
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _, data = next(gen)
        chunks = fuzz.random_chunks(data, rng)
        got = S.outcome(native.StreamParser, chunks)
        if len(data) < 8000:
            assert got == S.outcome(parser.PyStreamParser, chunks), data[:100]
        n += 1
    print(f"asan fuzz: {n} inputs, crc {native.crc32c_implementation()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
