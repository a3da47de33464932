"""Results out: a table on the terminal, ``latest.json`` and ``throughput.png``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, MiB

BTRSYNC_COLOUR = "#1f77b4"
OTHER_COLOURS = ["#7f7f7f", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)  # noqa: E731
                               for i, (x, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def timing_table(res: BenchResult) -> str:
    rows = []
    for tool, runs in res.runs.items():
        ratio = res.ratio(tool)
        rows.append([tool, _fmt(res.median(tool)), _fmt(min(r["seconds"] for r in runs)),
                     _fmt(res.mib_s(tool), ".1f"),
                     _fmt(res.median(tool, "cpu_seconds")), _fmt(res.median(tool, "system_busy_pct"), ".0f"),
                     _fmt(ratio, ".3f") if tool != res.baseline else "1.000",
                     " ".join(f"{r['seconds']:.2f}" for r in runs)])
    return _table(rows, ["tool", "median s", "best s", "MiB/s", "cpu s", "busy %", f"{res.baseline}/tool",
                         "runs (s)"])


def render(results: list[BenchResult], meta: dict[str, Any]) -> str:
    out = [f"btrsync benchmarks, {meta['mode']} mode: {meta['machine']['nproc']} x "
           f"{meta['machine']['cpu']}, kernel {meta['machine']['kernel']}, "
           f"{meta['machine']['btrfs_progs']}; page cache dropped before timed I/O runs: "
           f"{meta['drop_caches']}"]
    for res in results:
        head = f"\n== {res.key}: {res.title}"
        if res.work_bytes:
            head += f"  [{res.work_label or 'send stream bytes'}: {res.work_bytes / MiB:.1f} MiB]"
        out.append(head + f"  ({res.seconds:.0f} s)")
        if res.error:
            out.append(f"   CRASHED: {res.error}")
        if res.key == "memory":
            out.append(memory_table(res))
        elif res.key == "throttle":
            out.append(throttle_table(res))
        elif res.runs:
            out.append(timing_table(res))
        if res.metrics.get("sweep"):
            out.append("\n  PushSettings sweep (same snapshot, alternated):")
            out.append(_table([[r["settings"], _fmt(r["median_s"]), _fmt(r["mib_s"], ".1f"),
                                _fmt(r["cpu_s"]), _fmt(r["time_vs_default"], ".3f"),
                                _fmt((r["stored_bytes"] or 0) / MiB, ".1f")]
                               for r in res.metrics["sweep"]],
                              ["settings", "median s", "MiB/s", "cpu s", "time/default", "stored MiB"]))
        prof = res.metrics.get("profile")
        if isinstance(prof, dict) and prof.get("threads"):
            out.append("\n  py-spy (share of samples per thread, idle included):")
            for thread, stages in list(prof["threads"].items())[:6]:
                parts = ", ".join(f"{k} {v:.0f}%" for k, v in stages.items() if k != "samples")
                out.append(f"   {thread} ({stages['samples']} samples): {parts}")
        for bar in res.bars:
            verdict = {True: "MET", False: "MISSED", None: "n/a"}[bar.met]
            out.append(f"  bar: {bar.name}: {_fmt(bar.value, '.3f')} {bar.unit} (need {bar.op} "
                       f"{bar.limit:g}) {verdict}{'  ' + bar.note if bar.note else ''}")
        for c in res.checks:
            out.append(f"  check: {'ok  ' if c.ok else 'FAIL'} {c.name}{': ' + c.detail if c.detail else ''}")
        for n in res.notes:
            out.append(f"  note: {n}")
    return "\n".join(out)


def memory_table(res: BenchResult) -> str:
    rows = [[r["op"], r["label"], _fmt(r["vm_hwm_bytes"] / MiB, ".1f"), _fmt(r["vm_hwm_bytes"] / 1e6, ".1f"),
             _fmt(r["seconds"]), _fmt(r["mib_s"], ".1f")] for r in res.metrics.get("rows", [])]
    return _table(rows, ["op", "stream", "peak RSS MiB", "peak RSS MB", "wall s (CLI)", "MiB/s"])


def throttle_table(res: BenchResult) -> str:
    rows = []
    for tool in res.runs:
        m = res.metrics.get(tool, {})
        rows.append([tool, _fmt(res.metrics.get("rate", 0) / MiB, ".2f"), _fmt(m.get("achieved_mib_s")),
                     _fmt(m.get("error_pct"), "+.2f"), _fmt(m.get("sustained_mib_s")),
                     _fmt(m.get("sustained_error_pct"), "+.2f")])
    return _table(rows, ["tool", "limit MiB/s", "achieved", "error %", "sustained", "error %"])


def to_json(results: list[BenchResult], meta: dict[str, Any]) -> dict[str, Any]:
    benches = {}
    for res in results:
        d = dataclasses.asdict(res)
        d["summary"] = {tool: {"median_s": res.median(tool), "mib_s": res.mib_s(tool),
                               "cpu_s": res.median(tool, "cpu_seconds"),
                               f"{res.baseline}_time_over_tool_time": res.ratio(tool)}
                        for tool in res.runs}
        for bar in d["bars"]:
            bar["met"] = next(b.met for b in res.bars if b.name == bar["name"])
        benches[res.key] = d
    bars = [{**b, "benchmark": k} for k, d in benches.items() for b in d["bars"]]
    return {"meta": meta, "benchmarks": benches, "bars": bars,
            "failed_checks": [f"{r.key}: {c.name}: {c.detail}" for r in results for c in r.failed_checks],
            "crashed": {r.key: r.error for r in results if r.error}}


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def write_png(results: list[BenchResult], meta: dict[str, Any], path: Path) -> bool:
    """Throughput by tool (one group per benchmark), peak RSS, planner times, throttle accuracy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by_key = {r.key: r for r in results}
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    fig.suptitle(f"btrsync benchmarks ({meta['mode']} mode) - {meta['machine']['nproc']} x "
                 f"{meta['machine']['cpu']}, kernel {meta['machine']['kernel']}", fontsize=11)

    ax = axes[0][0]
    x, ticks, labels, groups, top = 0, [], [], [], 1.0
    names = {"push": "full push", "incremental": "incremental (tree MiB/s)", "restore": "restore"}
    for key in ("push", "incremental", "restore"):
        res = by_key.get(key)
        if res is None or not res.runs:
            continue
        start = x
        for i, tool in enumerate(res.runs):
            v = res.mib_s(tool) or 0
            top = max(top, v)
            colour = BTRSYNC_COLOUR if tool == "btrsync" else OTHER_COLOURS[i % len(OTHER_COLOURS)]
            ax.bar(x, v, 0.8, color=colour)
            ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
            ticks.append(x)
            labels.append(tool)
            x += 1
        groups.append(((start + x - 1) / 2, names[key]))
        x += 1
    ax.set_ylim(0, top * 1.25)
    for centre, name in groups:
        ax.text(centre, top * 1.22, name, ha="center", va="top", fontsize=9, weight="bold")
    ax.set_xticks(ticks, labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("MiB/s (median; higher is better)")
    ax.set_title("Throughput by tool (same data per group)")

    ax = axes[0][1]
    mem = by_key.get("memory")
    if mem and mem.metrics.get("rows"):
        rows = mem.metrics["rows"]
        sizes = list(dict.fromkeys(r["label"] for r in rows))
        for j, op in enumerate(("push", "receive")):
            vals = [next((r["vm_hwm_bytes"] / 1e6 for r in rows if r["op"] == op and r["label"] == s), 0)
                    for s in sizes]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(sizes))]
            ax.bar(xs, vals, 0.38, label=f"btrsync {op}", color=[BTRSYNC_COLOUR, "#aec7e8"][j])
            for xx, v in zip(xs, vals, strict=True):
                ax.text(xx, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax.axhline(300, color="red", linestyle="--", label="bar: 300 MB")
        ax.set_xticks(range(len(sizes)), [f"{s} stream" for s in sizes])
        ax.set_ylabel("peak RSS, MB (VmHWM)")
        ax.legend(fontsize=8)
    ax.set_title("Peak memory against stream size")

    ax = axes[1][0]
    scale = by_key.get("scale")
    if scale and scale.runs:
        labels_s = list(scale.runs)
        vals = [scale.median(n) or 0 for n in labels_s]
        ax.barh(labels_s, vals, color=BTRSYNC_COLOUR)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v * 1000:.0f} ms", va="center", fontsize=8)
        ax.axvline(2.0, color="red", linestyle="--", label="bar: 2 s")
        ax.set_xlabel("seconds (median)")
        ax.legend(fontsize=8)
    ax.set_title(scale.title if scale else "Planner / retention")

    ax = axes[1][1]
    thr = by_key.get("throttle")
    if thr and thr.runs:
        limit = thr.metrics["rate"] / MiB
        tools = list(thr.runs)
        ach = [thr.metrics[t]["achieved_mib_s"] for t in tools]
        sus = [thr.metrics[t]["sustained_mib_s"] for t in tools]
        pos = list(range(len(tools)))
        ax.bar([i - 0.2 for i in pos], ach, 0.4, label="achieved (incl. 1 s burst)", color=BTRSYNC_COLOUR)
        ax.bar([i + 0.2 for i in pos], sus, 0.4, label="sustained (burst excluded)", color="#aec7e8")
        ax.axhline(limit, color="red", linestyle="--", label=f"limit {limit:g} MiB/s")
        ax.set_xticks(pos, tools)
        ax.set_ylabel("MiB/s")
        ax.legend(fontsize=8)
    ax.set_title(thr.title if thr else "Throttle accuracy")

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
