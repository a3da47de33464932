"""Benchmark 7: send-stream parser throughput, parse + CRC32C on one core.

* a synthetic, valid 1 GiB stream of WRITE commands (version 2 with 128 KiB writes, as
  ``btrfs send --proto 2`` makes them, and version 1 with 48 KiB writes), built once in memory
  as a 64 MiB block of whole commands fed 16 times between the stream header and END, in 4 MiB
  chunks (so chunk boundaries cut commands, as in a push);
* the C parser with the SSE4.2 CRC32C and with the slice-by-8 table CRC, the C CRC32C alone,
  and the pure-Python parser (on a 64 MiB stream, 16 MiB in quick mode; its time is scaled to
  1 GiB, parsing is linear);
* the baseline: a plain memory copy of the same bytes in the same 4 MiB chunks; ratios are
  ``memcpy time / tool time`` (1.0 = as fast as copying the stream once);
* with a workspace, a real stream too: ``btrfs send --proto 2`` of random data on loopback btrfs
  (1 GiB, 128 MiB in quick mode), parsed from memory by both parsers.

Standalone: ``python -m benchmarks.bench_parser [--gib 1] [--reps 3]`` (no root needed: no real
stream then).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import Bar, BenchResult, Config, Contender, GiB, MiB, Workspace, alternate
from btrsync.sendstream import parser
from btrsync.sendstream.format import MAGIC

KiB = 1024
CHUNK = 4 * MiB
BLOCK = 64 * MiB
NATIVE_V2 = "C parser, v2 (128 KiB writes)"
NATIVE_V1 = "C parser, v1 (48 KiB writes)"
NATIVE_TABLE = "C parser, v2, slice-by-8 CRC"
CRC_ONLY = "CRC32C alone (C)"
PYTHON = "Python parser, v2 (scaled)"
MEMCPY = "memcpy"


def _crc(data: Any, crc: int = 0) -> int:
    return parser.crc32c(data, crc)


def _command(cmd: int, body: bytes) -> bytes:
    head = len(body).to_bytes(4, "little") + cmd.to_bytes(2, "little")
    crc = _crc(body, _crc(head + b"\0\0\0\0"))
    return head + crc.to_bytes(4, "little") + body


def _tlv(t: int, v: bytes) -> bytes:
    return t.to_bytes(2, "little") + len(v).to_bytes(2, "little") + v


def write_block(version: int, write_size: int, size: int = BLOCK) -> bytes:
    """Whole WRITE commands of random data, about ``size`` bytes."""
    payload = os.urandom(size)
    parts, offset, pos = [], 0, 0
    path = _tlv(15, b"data/random.bin")
    while pos + write_size <= size:
        data = payload[pos:pos + write_size]
        tail = (19).to_bytes(2, "little") + data if version >= 2 else _tlv(19, data)
        parts.append(_command(15, path + _tlv(18, offset.to_bytes(8, "little")) + tail))
        offset += write_size
        pos += write_size
    return b"".join(parts)


def stream_parts(version: int, block: bytes, repeats: int) -> tuple[bytes, bytes, int]:
    """(head, end, repeats): header + SUBVOL, the block ``repeats`` times, END."""
    subvol = _command(1, _tlv(15, b"snap") + _tlv(1, bytes(16)) + _tlv(2, (7).to_bytes(8, "little")))
    return MAGIC + version.to_bytes(4, "little") + subvol, _command(21, b""), repeats


def feed_stream(p: Any, head: bytes, block: bytes, repeats: int, end: bytes) -> int:
    """Feed the stream in CHUNK pieces; return the number of events."""
    n = len(p.feed(head))
    mv = memoryview(block)
    for _ in range(repeats):
        for i in range(0, len(mv), CHUNK):
            n += len(p.feed(mv[i:i + CHUNK]))
    n += len(p.feed(end))
    p.finish()
    return n


def run_bench(ws: Workspace | None, cfg: Config | None, log: Callable[[str], None]) -> BenchResult:
    quick = cfg is not None and cfg.mode == "quick"
    total = int(os.environ.get("BENCH_PARSER_BYTES", 1 * GiB))
    repeats = max(1, total // BLOCK)
    reps = cfg.reps if cfg is not None else 3
    res = BenchResult("parser", "Send-stream parser: parse + CRC32C of a 1 GiB stream, one core",
                      baseline=MEMCPY, work_bytes=repeats * BLOCK, work_label="stream bytes")
    log(f"  parser: building {BLOCK // MiB} MiB blocks of WRITE commands "
        f"(CRC32C by the {parser.implementation} implementation)")
    blocks = {2: write_block(2, 128 * KiB), 1: write_block(1, 48 * KiB)}
    counts = {v: _count_commands(blocks[v]) for v in blocks}
    work = {v: stream_parts(v, blocks[v], repeats) for v in blocks}
    res.work_bytes = sum(len(x) for x in (work[2][0], work[2][1])) + repeats * len(blocks[2])
    py_repeats_bytes = (16 if quick else 64) * MiB
    py_block = _whole_commands(blocks[2], py_repeats_bytes)
    py_head, py_end, _ = stream_parts(2, py_block, 1)
    scale = res.work_bytes / (len(py_head) + len(py_block) + len(py_end))
    scratch = bytearray(CHUNK)
    events: dict[str, int] = {}

    def native(version: int, table: bool = False) -> Callable[[int], dict[str, Any]]:
        def run(rep: int) -> dict[str, Any]:
            from btrsync.sendstream import _native

            hw = _native.crc32c_implementation() == "sse4.2"
            if table:
                _native.use_hardware_crc(False)
            try:
                head, end, k = work[version]
                events[f"v{version}{'t' if table else ''}"] = feed_stream(
                    _native.StreamParser(), head, blocks[version], k, end)
            finally:
                _native.use_hardware_crc(hw)
            return {}
        return run

    def crc_only(rep: int) -> dict[str, Any]:
        from btrsync.sendstream import _native

        mv = memoryview(blocks[2])
        crc = 0
        for _ in range(repeats):
            for i in range(0, len(mv), CHUNK):
                crc = _native.crc32c(mv[i:i + CHUNK], crc)
        return {}

    def memcpy(rep: int) -> dict[str, Any]:
        mv = memoryview(blocks[2])
        for _ in range(repeats):
            for i in range(0, len(mv), CHUNK):
                piece = mv[i:i + CHUNK]
                scratch[:len(piece)] = piece
        return {}

    def python(rep: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        events["python"] = feed_stream(parser.PyStreamParser(), py_head, py_block, 1, py_end)
        # the measured window covers the small stream; report the time for the full size
        return {"measured_seconds": time.perf_counter() - t0, "scale": scale}

    contenders = [Contender(MEMCPY, memcpy)]
    if parser.native_available:
        contenders += [Contender(NATIVE_V2, native(2)), Contender(NATIVE_V1, native(1)),
                       Contender(CRC_ONLY, crc_only), Contender(NATIVE_TABLE, native(2, table=True))]
    else:
        res.notes.append("the C parser is not built: only the Python parser was measured")
    contenders.append(Contender(PYTHON, python))
    alternate(res, contenders, reps, drop=False, warmup=True, log=log)
    for r in res.runs.get(PYTHON, []):  # scale the Python parser's time to the full stream
        r["seconds"] = r["measured_seconds"] * scale
        r["cpu_seconds"] = r["cpu_seconds"] * scale

    gbps = {tool: res.work_bytes / res.median(tool) / 1e9 for tool in res.runs}
    res.metrics["gb_per_s"] = gbps
    res.metrics["fraction_of_memcpy_speed"] = {tool: res.ratio(tool) for tool in res.runs}
    res.metrics["python_stream_bytes"] = len(py_head) + len(py_block) + len(py_end)
    if parser.native_available:
        from btrsync.sendstream import _native

        res.metrics["crc32c"] = _native.crc32c_implementation()
        res.bars.append(Bar(f"{NATIVE_V2}: GB/s on one core", gbps[NATIVE_V2], 2.0, ">=", "GB/s"))
        want = {"v2": 2 + repeats * counts[2], "v1": 2 + repeats * counts[1], "v2t": 2 + repeats * counts[2]}
        for key, n in want.items():
            res.check(f"C parser ({key}) reports every command", events.get(key) == n,
                      f"{events.get(key)} of {n}")
    res.check("Python parser reports every command", events.get("python") == 2 + _count_commands(py_block))
    for tool, v in gbps.items():
        log(f"  parser: {tool:<32} {v:6.2f} GB/s  ({res.ratio(tool) or 0:.2f} of memcpy)")
    if ws is not None:
        _real_stream(ws, quick, res, log)
    return res


def _count_commands(block: bytes) -> int:
    n = pos = 0
    while pos < len(block):
        pos += 10 + int.from_bytes(block[pos:pos + 4], "little")
        n += 1
    return n


def _whole_commands(block: bytes, size: int) -> bytes:
    pos = 0
    while pos < len(block):
        nxt = pos + 10 + int.from_bytes(block[pos:pos + 4], "little")
        if nxt > size:
            break
        pos = nxt
    return block[:pos]


def _real_stream(ws: Workspace, quick: bool, res: BenchResult, log: Callable[[str], None]) -> None:
    """A real ``btrfs send --proto 2`` stream of random data, parsed from memory by both parsers."""
    from benchmarks.common import subvol_create, write_random_file

    size = (128 if quick else 1024) * MiB
    subvol = subvol_create(ws.src / "parser-bench")
    snap = ws.src / "parser-bench.snap"
    try:
        write_random_file(subvol / "random.bin", size)
        subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(subvol), str(snap)],
                       capture_output=True, check=True)
        proc = subprocess.run(["btrfs", "send", "-q", "--proto", "2", str(snap)], capture_output=True,
                              check=True)
        data = proc.stdout
        out: dict[str, Any] = {"bytes": len(data)}
        impls = [("python", parser.PyStreamParser)]
        if parser.native_available:
            impls.insert(0, ("native", parser.NativeStreamParser))
        for name, impl in impls:
            if name == "python":
                data_py = data[:32 * MiB]  # a prefix is enough to time it (no finish)
                t0 = time.perf_counter()
                p = impl()
                p.feed(data_py)
                out["python_gb_per_s"] = len(data_py) / (time.perf_counter() - t0) / 1e9
                continue
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                events = parser.parse(data, CHUNK, parser=impl())
                times.append(time.perf_counter() - t0)
            out[f"{name}_gb_per_s"] = len(data) / statistics.median(times) / 1e9
            out["commands"] = len(events)
        res.metrics["real_stream"] = out
        res.check("a real btrfs send stream parses", out.get("commands", 1) > 0)
        log(f"  parser: real stream of {len(data) / MiB:.0f} MiB: "
            + ", ".join(f"{k} {v:.2f}" for k, v in out.items() if k.endswith("gb_per_s")) + " GB/s")
    finally:
        for sv in (snap, subvol):
            if sv.exists():
                subprocess.run(["btrfs", "subvolume", "delete", str(sv)], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_parser", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="stream size in GiB [1]")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ["BENCH_PARSER_BYTES"] = str(int(args.gib * GiB))
    from benchmarks.common import quick_config

    cfg = quick_config(reps=args.reps, mode="full")
    res = run_bench(None, cfg, lambda m: print(m, file=sys.stderr))
    from benchmarks.report import timing_table

    print(timing_table(res))
    for bar in res.bars:
        print(f"bar: {bar.name}: {bar.value:.2f} {bar.unit} (need {bar.op} {bar.limit:g})")
    for c in res.checks:
        print(f"check: {'ok' if c.ok else 'FAIL'} {c.name} {c.detail}")
    return 0 if not res.failed_checks else 1


if __name__ == "__main__":
    sys.exit(main())
