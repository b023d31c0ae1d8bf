"""What the scale benchmarks share: timing each mode at each size in fresh processes, and the table
and fits they print (bench_scale.py for perf.data, bench_scale_tracedat.py for trace.dat)."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from bench_scale import fit, run, warm


def measure(src: Path, size: float, n_events: int, modes: dict[str, list[str]], runs: int,
            out: Path) -> list[dict[str, Any]]:
    """Each mode's command run ``runs`` times on ``src`` (``out`` removed before each): one row per
    mode with best / median wall time and peak RSS; each run printed as JSON on stderr."""
    rows = []
    warm(src)
    for mode, cmd in modes.items():
        got = []
        for _ in range(runs):
            shutil.rmtree(out, ignore_errors=True)
            got.append(run(cmd))
            print(json.dumps({"size": size, "mode": mode, "wall_s": round(got[-1][0], 3), "rss": got[-1][1],
                              "cpu_s": round(got[-1][2], 3)}), file=sys.stderr)
        walls = [g[0] for g in got]
        rows.append({"size": size, "events": n_events, "mb": src.stat().st_size / 1e6, "mode": mode,
                     "best": min(walls), "median": statistics.median(walls), "rss": max(g[1] for g in got),
                     "cpu": statistics.median(g[2] for g in got)})
    shutil.rmtree(out, ignore_errors=True)
    return rows


def report(rows: list[dict[str, Any]], tool: str) -> None:
    """The markdown table (ratios against ``tool``'s mode at the same size) and per mode the fits."""
    print(f"| events | file | reader | best / median | CPU s (median) | events/s (median) | vs {tool} (best / median) "
          "| peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = next((x for x in rows if x["size"] == r["size"] and x["mode"] == tool), None)
        vs = f"{t['best'] / r['best']:.1f}x / {t['median'] / r['median']:.1f}x" if t else "(not run)"
        print(f"| {r['events'] / 1e6:.2f} M | {r['mb']:.0f} MB | {r['mode']} | {r['best']:.2f} / {r['median']:.2f} s "
              f"| {r['cpu']:.2f} | {r['events'] / r['median'] / 1e6:.2f} M | {vs} | {r['rss'] / 2**20:.0f} MB |")
    print()
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode]
        if len(sel) < 2:
            continue
        slope, expo = fit([r["events"] for r in sel], [r["median"] for r in sel])
        at6 = next((r for r in sel if r["size"] == 1e6), None)
        big = sel[-1]
        rel = ""
        if at6 and big is not at6:
            change = big["events"] / big["median"] / (at6["events"] / at6["median"]) * 100 - 100
            rel = f"; throughput at {big['events'] / 1e6:.0f} M events {change:+.0f}% vs 1 M"
        print(f"- {mode}: {slope * 1e6:.2f} s per M events, time ~ events^{expo:.2f}{rel}")
