"""Benchmark 6: how close ``--bwlimit`` (the token bucket on stored bytes) gets to its rate.

* a btrsync ``push()`` with ``PushSettings(bucket=TokenBucket(rate))`` of incompressible data
  (so stored bytes = stream bytes + frame overhead) sized to take ``throttle_seconds`` at the
  limit; achieved = stored_bytes / elapsed;
* the bare ``TokenBucket`` with the real clock, taking 4 MiB (one chunk) at a time for as long.

The bucket starts full (burst = one second's worth), so over ``T`` seconds the achieved rate
overshoots by about ``1 / T``: "achieved" includes it, "sustained" subtracts the burst
((bytes - burst) / elapsed), which is the steady-state accuracy of the limiter.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from benchmarks.common import (
    BenchResult,
    Config,
    Contender,
    MiB,
    Workspace,
    alternate,
    remove_tree,
    repo_at,
    subvol_create,
    write_random_file,
)
from btrsync.crypto.keys import load_key_file
from btrsync.ops.push.run import push
from btrsync.ops.push.settings import PushSettings
from btrsync.pipeline.throttle import TokenBucket
from btrsync.snapshots.store import create_snapshot

PUSH = "btrsync push --bwlimit"
BUCKET = "TokenBucket alone"


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    rate = cfg.throttle_rate
    res = BenchResult("throttle", f"Throttle accuracy at {rate / MiB:g} MiB/s over "
                      f"{cfg.throttle_seconds:g} s", baseline=PUSH)
    key = load_key_file(ws.key_file)
    size = int(rate * (cfg.throttle_seconds + 1))  # + the initial burst of one second
    subvol = subvol_create(ws.src / "throttle")
    write_random_file(subvol / "random.bin", size)
    snapdir = ws.src / ".snapshots-throttle"
    snapdir.mkdir()
    create_snapshot(subvol, snapdir)
    target = ws.dst / "throttle"
    res.metrics.update(rate=rate, seconds=cfg.throttle_seconds)

    def push_run(rep: int) -> dict[str, float]:
        bucket = TokenBucket(rate)
        t0 = time.perf_counter()
        (r,) = push(subvol, snapdir, repo_at(target, key), PushSettings(bucket=bucket)).results
        elapsed = time.perf_counter() - t0
        if r.status != "ok":
            raise RuntimeError(f"throttled push failed: {r.error}")
        return _rates(r.stored_bytes, elapsed, rate, bucket.burst)

    def bucket_run(rep: int) -> dict[str, float]:
        bucket = TokenBucket(rate)
        piece, total = 4 * MiB, 0
        t0 = time.perf_counter()
        while total + piece <= size:
            bucket.take(piece)
            total += piece
        return _rates(total, time.perf_counter() - t0, rate, bucket.burst)

    alternate(res, [Contender(PUSH, push_run, before=lambda rep: target.mkdir(),
                              after=lambda rep: remove_tree(target)),
                    Contender(BUCKET, bucket_run)],
              max(1, cfg.reps if cfg.mode == "full" else 1), drop=False, warmup=False, log=log)
    for tool in (PUSH, BUCKET):
        runs = res.runs[tool]
        med = {k: statistics.median(r[k] for r in runs)
               for k in ("achieved_mib_s", "error_pct", "sustained_mib_s", "sustained_error_pct")}
        res.metrics[tool] = med
        log(f"  throttle: {tool}: {med['achieved_mib_s']:.2f} MiB/s for a {rate / MiB:g} MiB/s limit "
            f"({med['error_pct']:+.1f} %, sustained {med['sustained_error_pct']:+.1f} %)")
    # one-sided: a loaded machine may fall short of the limit, but nothing may push past it
    push_err = res.metrics[PUSH]["sustained_error_pct"]
    res.check("throttled push does not exceed the limit by more than 10 % (steady state)",
              push_err < 10, f"{push_err:+.1f} %")
    return res


def _rates(nbytes: int, elapsed: float, rate: float, burst: float) -> dict[str, float]:
    achieved = nbytes / elapsed
    sustained = (nbytes - burst) / elapsed
    return {"bytes": nbytes, "elapsed": elapsed, "achieved_mib_s": achieved / MiB,
            "error_pct": 100 * (achieved / rate - 1), "sustained_mib_s": sustained / MiB,
            "sustained_error_pct": 100 * (sustained / rate - 1)}
