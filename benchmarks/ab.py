"""A/B of the full push between two commits, on this machine, in one run::

    python -m benchmarks.ab [--reps N] [--size-mib M] [--out FILE.json] REV_A REV_B

On a shared or noisy machine a single run of the suite cannot tell a 5 % change from the noise;
alternating the two versions on the same data in the same minutes can.  Each revision is exported
(``git archive``) into a directory of its own, its C parser built there, and every command runs
the CLI of that tree, checked before the first run: ``btrsync.__file__`` and the native parser
must come from the exported tree (``python -m`` puts the working directory first on
``sys.path``, so a tree put only on ``PYTHONPATH`` would silently run the checkout instead).

Both versions push the same read-only snapshot of a ``make_dataset`` tree (half random, half
text) to a fresh directory repository each time, in ABBA order, page cache dropped before every
push; wall time and the CPU seconds of the CLI and its children (``btrfs send``) are reported as
medians, with B's median over A's.  Needs root (loopback btrfs), git, a C compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import GiB, MiB, drop_caches, make_dataset
from btrsync.btrfs.scratch import scratch_btrfs

REPO = Path(__file__).resolve().parent.parent


def export(rev: str, into: Path) -> Path:
    """``rev``'s tree under ``into``, with its C parser built in place; the tree's path."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    tree = into / sha[:12]
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                       capture_output=True, check=True)
    return tree


def cli(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run([sys.executable, "-m", "btrsync", *args], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)


def check_tree(tree: Path) -> None:
    """Refuse to measure unless the CLI and its native parser really come from ``tree``."""
    probe = ("import btrsync, btrsync.sendstream._native as n; print(btrsync.__file__); print(n.__file__)")
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", probe], cwd=tree, env=env, capture_output=True, text=True)
    paths = out.stdout.split()
    if out.returncode != 0 or len(paths) != 2 or not all(Path(p).is_relative_to(tree) for p in paths):
        raise SystemExit(f"benchmarks.ab: {tree} does not run its own btrsync and C parser: "
                         f"{out.stdout.strip() or out.stderr.strip()[-300:]}")


def must(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise SystemExit(f"benchmarks.ab: {what} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def timed_push(tree: Path, key: Path, subvol: Path, snapdir: Path, repo: Path, state: Path) -> dict[str, float]:
    repo.mkdir()
    must(cli(tree, "--key-file", str(key), "init", "--to", f"file://{repo}"), "init")
    drop_caches()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = cli(tree, "--key-file", str(key), "--state-dir", str(state), "push", str(subvol),
               "--snapshot-dir", str(snapdir), "--to", f"file://{repo}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    must(proc, "push")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": wall, "cpu_seconds": cpu, "loadavg": os.getloadavg()[0]}


def _alternate(revs: tuple[str, str], reps: int, size: int, base: Path) -> dict[str, list[dict[str, float]]]:
    trees = {label: export(rev, base / "trees") for label, rev in zip("AB", revs, strict=True)}
    for tree in trees.values():
        check_tree(tree)
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    gib = size // GiB + 1  # sparse images: the source holds the dataset, the target up to 2 repositories
    with scratch_btrfs(base, f"{gib + 1}G", "ab-src") as src, scratch_btrfs(base, f"{2 * gib + 1}G", "ab-dst") as dst:
        subvol = src / "data"
        subprocess.run(["btrfs", "-q", "subvolume", "create", str(subvol)], check=True)
        make_dataset(subvol, size)
        snapdir = src / "snapshots"
        snapdir.mkdir()
        key = dst / "key"
        must(cli(trees["B"], "key", "generate", str(key)), "key generate")
        must(cli(trees["B"], "--key-file", str(key), "snapshot", "create", str(subvol),
                 "--snapshot-dir", str(snapdir)), "snapshot create")
        for rep in range(reps):
            for label in ("AB" if rep % 2 == 0 else "BA"):
                repo = dst / f"{label}{rep}"
                run = timed_push(trees[label], key, subvol, snapdir, repo, dst / f"state-{label}{rep}")
                runs[label].append(run)
                print(f"{label} {revs['AB'.index(label)]} rep {rep + 1}/{reps}: {run['seconds']:.2f} s, "
                      f"{run['cpu_seconds']:.2f} CPU s, load {run['loadavg']:.2f}", flush=True)
                subprocess.run(["rm", "-rf", str(repo)], check=True)
    return runs


def run_ab(revs: tuple[str, str], reps: int, size: int, workdir: Path) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="btrsync-ab-", dir=workdir))
    try:
        runs = _alternate(revs, reps, size, base)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)
    summary = {label: {"rev": revs["AB".index(label)],
                       "median_seconds": statistics.median(r["seconds"] for r in runs[label]),
                       "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs[label])}
               for label in "AB"}
    ratio = summary["B"]["median_seconds"] / summary["A"]["median_seconds"]
    return {"dataset_bytes": size, "reps": reps, "runs": runs, "summary": summary, "b_over_a": ratio}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("rev_a")
    ap.add_argument("rev_b")
    ap.add_argument("--reps", type=int, default=4, help="pushes per revision [4]")
    ap.add_argument("--size-mib", type=int, default=1024, help="dataset size [1024]")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="where the loopback images go")
    ap.add_argument("--out", type=Path, help="write the runs and medians there as JSON")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.size_mib < 8:
        ap.error("--reps must be at least 1 and --size-mib at least 8")
    result = run_ab((args.rev_a, args.rev_b), args.reps, args.size_mib * MiB, args.workdir)
    for label in "AB":
        s = result["summary"][label]
        print(f"{label} {s['rev']}: median {s['median_seconds']:.2f} s, {s['median_cpu_seconds']:.2f} CPU s")
    print(f"B / A: {result['b_over_a']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
