"""Mutations of send streams for fuzzing the parsers (used by test_fuzz.py and asan_fuzz.py).

Three kinds of inputs: random bytes (behind a valid header or not), raw mutations of valid
streams (bit flips, overwrites, insertions, deletions, duplications, truncation, splicing; the
CRC catches most of them), and structural mutations that re-frame the commands with correct
CRCs afterwards, so that the attribute checks behind the CRC are exercised too.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.unit.sendstream import streams as S

DATA_DIR = Path(__file__).parent / "data"


def real_streams() -> dict[str, bytes]:
    """The small real streams recorded from loopback btrfs (data/make_streams.py)."""
    import zstandard

    out = {}
    for path in sorted(DATA_DIR.glob("*.stream.zst")):
        out[path.name.removesuffix(".stream.zst")] = zstandard.ZstdDecompressor().decompress(
            path.read_bytes(), max_output_size=64 << 20)
    return out


def sample_streams() -> dict[str, bytes]:
    out = {}
    for version in (1, 2, 3):
        out[f"sample-v{version}"] = S.SampleStream(version, version, write_size=700).data()
        out[f"snapshot-v{version}"] = S.SampleStream(version, 10 + version, snapshot=True,
                                                     write_size=50).data()
    return out


def commands(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A valid stream as (header, [(cmd, body)])."""
    head, pos, out = data[:17], 17, []
    while pos < len(data):
        length, cmd, _crc = struct.unpack_from("<IHI", data, pos)
        out.append((cmd, data[pos + 10:pos + 10 + length]))
        pos += 10 + length
    return head, out


def tlvs(body: bytes, version: int) -> list[tuple[int, bytes]]:
    """A command body as its attributes (as far as it has any: earlier mutations may have cut it)."""
    out, pos = [], 0
    while len(body) - pos >= 2:
        (t,) = struct.unpack_from("<H", body, pos)
        if t == 19 and version >= 2:
            out.append((t, body[pos + 2:]))
            break
        if len(body) - pos < 4:
            break
        (n,) = struct.unpack_from("<H", body, pos + 2)
        out.append((t, body[pos + 4:pos + 4 + n]))
        pos += 4 + n
    return out


def raw_mutation(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        if not b:
            b += rng.randbytes(rng.randint(1, 40))
            continue
        op = rng.randrange(9)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, 1, rng.randrange(256)])
        elif op == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 64))
        elif op == 3:
            del b[i:i + rng.randint(1, 64)]
        elif op == 4:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 200)]
        elif op == 5:
            del b[i:]
        elif op == 6:
            other = rng.choice(corpus)
            b = b[:i] + other[rng.randrange(len(other)):]
        elif op == 7:  # a plausible u32 (length field) anywhere
            b[i:i + 4] = struct.pack("<I", rng.choice([0, 1, 0xFFFF, 0x10000, 0xFFFFFFFF, 16 << 20,
                                                       (16 << 20) + 1, rng.getrandbits(32)]))
        else:
            b += rng.randbytes(rng.randint(1, 30))
    return bytes(b)


def structural_mutation(data: bytes, rng: random.Random) -> bytes:
    """Change commands or attributes, then frame them again with right lengths and CRCs (mostly)."""
    head, cmds = commands(data)
    version = struct.unpack_from("<I", head, 13)[0]
    cmds = list(cmds)
    for _ in range(rng.choice([1, 1, 2, 4])):
        if not cmds:
            break
        k = rng.randrange(len(cmds))
        cmd, body = cmds[k]
        op = rng.randrange(12)
        if op == 0:
            cmds[k] = (rng.choice([0, 27, 0xFFFF, rng.randrange(1, 27)]), body)
        elif op == 1:
            del cmds[k]
        elif op == 2:
            cmds.insert(rng.randrange(len(cmds) + 1), cmds[k])
        elif op == 3:
            j = rng.randrange(len(cmds))
            cmds[k], cmds[j] = cmds[j], cmds[k]
        elif op == 4:  # drop, duplicate or damage an attribute
            attrs = tlvs(body, version)
            if attrs:
                i = rng.randrange(len(attrs))
                what = rng.randrange(4)
                if what == 0:
                    del attrs[i]
                elif what == 1:
                    attrs.insert(i, attrs[i])
                elif what == 2:
                    attrs[i] = (rng.choice([0, 36, 0xFFFF, rng.randrange(1, 36)]), attrs[i][1])
                else:
                    attrs[i] = (attrs[i][0], attrs[i][1][:-1] if attrs[i][1] else b"x")
                cmds[k] = (cmd, _encode_tlvs(attrs, version))
        elif op == 5:  # a random attribute
            extra = struct.pack("<HH", rng.randrange(0, 40), rng.randrange(0, 20)) + rng.randbytes(
                rng.randrange(0, 20))
            cmds[k] = (cmd, body + extra if rng.random() < 0.5 else extra + body)
        elif op == 6:
            cmds[k] = (cmd, body[:rng.randrange(len(body) + 1)])
        elif op == 7:
            b = bytearray(body)
            if b:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            cmds[k] = (cmd, bytes(b))
        elif op == 8:
            cmds[k] = (cmd, rng.randbytes(rng.randrange(0, 64)))
        elif op == 9:  # another version's header
            head = head[:13] + struct.pack("<I", rng.choice([1, 2, 3]))
        elif op == 10:
            cmds.append((rng.randrange(0, 28), rng.randbytes(rng.randrange(0, 16))))
        else:  # a length field over a TLV, larger than the rest
            attrs = tlvs(body, version)
            if attrs:
                i = rng.randrange(len(attrs))
                t, v = attrs[i]
                enc = _encode_tlvs(attrs[:i], version) + struct.pack("<HH", t, rng.randrange(0x10000)) + v
                cmds[k] = (cmd, enc)
    out = [head] + [S.command(cmd, body) for cmd, body in cmds]
    if len(out) > 1 and rng.random() < 0.2:  # now and then a wrong CRC or length anyway
        k = rng.randrange(1, len(out))
        out[k] = raw_mutation(out[k], rng, [out[k]])
    return b"".join(out)


def _encode_tlvs(attrs: list[tuple[int, bytes]], version: int) -> bytes:
    """Encode mutated TLVs. A v2 DATA value has no length field and may exceed 64 KiB; given
    another type by a mutation, it needs a 16-bit length, so it is cut to the largest that fits
    (before, the generator itself failed with struct.error whenever a run got that far)."""
    return b"".join(S.attr(t, v if t == S.A_DATA else v[:0xFFFF], version=version) for t, v in attrs)


def random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    mode = rng.randrange(5)
    if mode == 0:
        return [data]
    if mode == 1:
        return S.every(data, 1) if len(data) < 3000 else S.every(data, 7)
    if mode == 2:
        return S.every(data, rng.choice([7, 10, 17, 64, 4096]))
    return S.split(data, [rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 12))])


def inputs(rng: random.Random, corpus: dict[str, bytes]) -> Iterator[tuple[str, bytes]]:
    """An endless mix of fuzz inputs drawn from ``corpus`` (valid streams)."""
    streams = list(corpus.values())
    while True:
        kind = rng.randrange(10)
        if kind == 0:
            yield "random", rng.randbytes(rng.randrange(0, 300))
        elif kind == 1:
            yield "random-after-header", S.header(rng.choice([1, 2, 3])) + rng.randbytes(rng.randrange(0, 300))
        elif kind < 6:
            yield "raw", raw_mutation(rng.choice(streams), rng, streams)
        else:
            yield "structural", structural_mutation(rng.choice(streams), rng)


def run_for(seconds: float, step: Callable[[], None], *, at_least: int = 1) -> int:
    """Call ``step`` until ``seconds`` have passed (and at least ``at_least`` times)."""
    import time

    deadline = time.monotonic() + seconds
    n = 0
    while n < at_least or time.monotonic() < deadline:
        step()
        n += 1
    return n
